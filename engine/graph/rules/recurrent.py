"""Rules for the recurrent layers LSTM and GRU (CNN+LSTM/GRU text recognizers).

The backward is unrolled over the static sequence length T, with standard ops only: Loop/Scan
bodies would be sub-graphs that the rest of the engine (pruning, shape inference, ORT's
layout optimizer) sees as opaque, and T is static in every recognizer once the input size is
fixed. The rule first recomputes the gates for all T steps at once from the forward input X and
the forward output Y (the hidden state before step t is Y at the previous step, or initial_h), so
only the truly sequential parts are per-step nodes: the LSTM cell state (2 nodes a step, all
directions together; for small states ⌈log₂ T⌉ levels of a doubling scan) and the backward
recurrence. That recurrence is linear in the state gradient s (dH, and dC for LSTM):
s_{t−1} = s_t · J_t + e_{t−1} with the step's Jacobian J_t = Σ_j diag(v_j) · B_j, the v_j gate
slopes computed for all steps at once and the B_j constant blocks of R. For small states
(≤ ``JACOBIAN_MAX`` values, e.g. the 2 × 24 of an OCR recognizer's LSTM) each step is then Mul,
Reshape, MatMul and Add for every direction together, and everything around the recurrence is
computed for every direction at once too, laid out in the backward's step order (on a small model
ONNX Runtime's per-node cost is what counts: 4 nodes a step instead of ~11 per direction, ~60
nodes around them instead of ~130; building each J_t outright cost more than it saved). GRU with
linear_before_reset=0 and larger states keep the step-by-step form through R, per direction
(about 7 nodes a step and direction).

Supported: layout 0 (X is T×N×I), directions forward / reverse / bidirectional, the default
activations, optional initial states (they get gradients), sequence_lens absent (or constant
and equal to T everywhere), GRU with either ``linear_before_reset``. Weights must be constants.
"""
import numpy as np
from onnx import numpy_helper

from engine.errors import UnsupportedOpError
from engine.graph.rules import ALL, attrs, rule

_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}
JACOBIAN_MAX = 128  # largest state (H for GRU, 2H for LSTM) whose per-step Jacobians are built


class _Steps:
    """Emission helpers shared by the LSTM and GRU rules (one forward node)."""

    def __init__(self, ctx, node, gates):
        a = attrs(node)
        x = node.input[0]
        self.ctx, self.node, self.x = ctx, node, x
        self.hidden = a["hidden_size"]
        self.directions = 2 if a.get("direction", "forward") == "bidirectional" else 1
        self.reverse = a.get("direction", "forward") == "reverse"
        steps = ctx.shape(x)[0] if ctx.shape(x) else None
        acts = a.get("activations")
        what = f"{node.op_type} {node.name!r}"
        if a.get("layout", 0) != 0:
            raise UnsupportedOpError(f"{what}: layout=1 has no gradient rule; export with batch_first=False")
        if acts and [s.capitalize() for s in acts] != _DEFAULT_ACTIVATIONS[node.op_type] * self.directions:
            raise UnsupportedOpError(f"{what}: only the default activations have a gradient rule")
        if "clip" in a or a.get("input_forget", 0):
            raise UnsupportedOpError(f"{what}: clip / input_forget have no gradient rule")
        if not isinstance(steps, int):
            raise UnsupportedOpError(f"{what}: the sequence length is not static; give an input size: input_size=(H, W)")
        lens = node.input[4] if len(node.input) > 4 and node.input[4] else None
        if lens and (ctx.value(lens) is None or np.any(ctx.value(lens) != steps)):
            raise UnsupportedOpError(f"{what}: sequence_lens shorter than the sequence has no gradient rule")
        self.steps = steps
        self.weights = [self._constant(i, what) for i in (1, 2)]
        bias = self._constant(3, what, optional=True)
        size = gates * self.hidden
        self.bias = (np.zeros((self.directions, 2 * size)) if bias is None else bias).astype(ctx.dtype(x))

    def _constant(self, index, what, optional=False):
        name = self.optional_input(index)
        value = self.ctx.value(name) if name else None
        if value is None and (name or not optional):
            raise UnsupportedOpError(f"{what}: computed weights have no gradient rule")
        return value

    def optional_input(self, index):
        """The node's input ``index``, or "" when it is absent."""
        return self.node.input[index] if len(self.node.input) > index else ""

    # -- small emitters --------------------------------------------------------------------
    def op(self, op_type, *inputs, **attributes):
        return self.ctx.op(op_type, *inputs, **attributes)

    def const(self, array):
        return self.ctx.const(np.ascontiguousarray(array, dtype=self.ctx.dtype(self.x)), "rnn_weight")

    def one_minus(self, t):
        return self.op("Sub", self.ctx.scalar(1.0, like=self.x), t)

    def slope(self, s):
        """σ'(a) = s · (1 − s) for s = σ(a)."""
        return self.op("Mul", s, self.one_minus(s))

    def split(self, t, axis, parts):
        """Split ``t`` into ``parts`` equal pieces along ``axis`` (pieces keep the axis)."""
        if parts == 1:
            return [t]
        size = {0: 1, 2: self.hidden}[axis]
        return self.pieces(t, [size] * parts, axis)

    def slab(self, t, index, axis):
        """``t`` at ``index`` along ``axis`` (kept, of size 1)."""
        return self.op("Gather", t, self.ctx.ints([index]), axis=axis)

    def pick(self, t, index, axis):
        """``t`` at ``index`` along ``axis`` (the axis removed)."""
        return self.ctx.squeeze(self.slab(t, index, axis), [axis])

    def initial(self, index, d, like):
        """Initial state of direction ``d`` as 1×N×H: the node's input ``index`` or zeros."""
        name = self.optional_input(index)
        return self.slab(name, d, 0) if name else self.zeros(like)

    def zeros(self, like):
        """Zeros shaped like the emitted tensor ``like`` (typed like X)."""
        zero = numpy_helper.from_array(np.zeros(1, self.ctx.dtype(self.x)))
        return self.op("ConstantOfShape", self.op("Shape", like), value=zero)

    def order(self, d):
        """Time steps in processing order for direction ``d``."""
        steps = list(range(self.steps))
        return steps if self.forward_in_time(d) else steps[::-1]

    def state_before(self, d, states, index):
        """T×N×H: the state each step of direction ``d`` starts from: ``states`` (T×N×H, time
        order) of the step before, and first the initial state (node input ``index``, or zeros)."""
        ints, steps = self.ctx.ints, self.steps
        forward = self.forward_in_time(d)
        one, rest = ((0, 1), (0, steps - 1)) if forward else ((steps - 1, steps), (1, steps))
        first = self.initial(index, d, self.op("Slice", states, ints([one[0]]), ints([one[1]]), ints([0])))
        rest = self.op("Slice", states, ints([rest[0]]), ints([rest[1]]), ints([0]))
        return self.op("Concat", *([first, rest] if forward else [rest, first]), axis=0)

    def incoming(self, grads, d):
        """Per time step, the gradient arriving from Y (1×N×H each, or None) and, as 1×N×H,
        from Y_h (and Y_c for LSTM) of direction ``d``."""
        dy = grads[0]
        per_step = self.split(self.pick(dy, d, 1), 0, self.steps) if dy else [None] * self.steps
        finals = [self.slab(g, d, 0) if g else None for g in grads[1:]]
        return per_step, finals

    def add(self, *terms):
        """Sum of the terms that are not None (None if all are)."""
        terms = [t for t in terms if t]
        return (terms[0] if len(terms) == 1 else self.op("Sum", *terms)) if terms else None

    def forward_in_time(self, d):
        """Whether direction ``d`` runs from the first time step to the last."""
        return not (self.reverse or d == 1)

    def flip(self, t):
        """``t`` with its time axis (0, of static length T) reversed."""
        ints = self.ctx.ints
        return self.op("Slice", t, ints([-1]), ints([-self.steps - 1]), ints([0]), ints([-1]))

    def stacked(self, per_direction):
        """T×D×… from one T×… tensor per direction (time order), each in its processing order."""
        ordered = [self.ctx.unsqueeze(t if self.forward_in_time(d) else self.flip(t), [1])
                   for d, t in enumerate(per_direction)]
        return ordered[0] if len(ordered) == 1 else self.op("Concat", *ordered, axis=1)

    def unstacked(self, t):
        """Per direction, the T×… time-order slice of ``t`` (T×D×…, as :meth:`stacked` made it)."""
        out = []
        for d in range(self.directions):
            mine = self.ctx.squeeze(self.slab(t, d, 1), [1])
            out.append(mine if self.forward_in_time(d) else self.flip(mine))
        return out

    def cell_states(self, forget, update):
        """C_t = f_t·C_{t−1} + u_t of every direction at once (2 nodes a step): per direction
        the cells and the cells each step starts from (T×N×H, time order). ``forget``, ``update``:
        T×N×H per direction."""
        initial = self.optional_input(6)
        f_steps = self.split(self.stacked(forget), 0, self.steps)
        u_steps = self.split(self.stacked(update), 0, self.steps)
        c = self.ctx.unsqueeze(initial, [0]) if initial else self.zeros(f_steps[0])
        before, cells = [], []
        for f, u in zip(f_steps, u_steps):
            before.append(c)
            c = self.op("Add", self.op("Mul", f, c), u)
            cells.append(c)
        return [self.unstacked(self.op("Concat", *t, axis=0) if len(t) > 1 else t[0]) for t in (cells, before)]

    # -- the Jacobian form: every direction at once, in the backward's step order ----------------
    # Its tensors are D×T×N×…: direction d's j-th backward step is the time step T−1−j for a
    # direction that runs forward in time, j for one that runs in reverse.

    def times(self):
        """D×T: the time step of each direction's j-th backward step."""
        return np.array([[self.steps - 1 - j if self.forward_in_time(d) else j for j in range(self.steps)]
                         for d in range(self.directions)])

    def per_step_inputs(self, dy):
        """The gradient arriving from Y (T×D×N×H, time order) as D×T×N×1×H in the backward's order."""
        flat = self.op("Reshape", dy, self.ctx.ints([self.steps * self.directions, -1, 1, self.hidden]))
        rows = self.times() * self.directions + np.arange(self.directions)[:, None]  # (d, j) → row t·D + d
        return self.op("Gather", flat, self.ctx.const(rows, "rows"), axis=0)

    def input_gradient(self, dgates, weights):
        """Σ_d dgates_d · W_d in time order (T×N×I) from ``dgates`` (D×T×N×G, backward order) and
        the D×G×I constant ``weights``: the rows back in time order (the backward order is its own
        inverse: j ↔ T−1−j), then one product with the directions' weights stacked, which sums
        over the directions."""
        dirs, steps, width = self.directions, self.steps, weights.shape[1]
        flat = self.op("Reshape", dgates, self.ctx.ints([dirs * steps, -1, width]))
        rows = self.times().T + np.arange(dirs) * steps  # (t, d) → row d·T + j
        timed = self.op("Gather", flat, self.ctx.const(rows, "rows"), axis=0)  # T×D×N×G
        packed = self.op("Reshape", self.op("Transpose", timed, perm=[0, 2, 1, 3]), self.ctx.ints([0, 0, dirs * width]))
        return self.op("MatMul", packed, self.const(weights.reshape(dirs * width, -1)))

    def x_in_backward_order(self):
        """X (T×N×I) as D×T×N×I in the backward's order."""
        return self.op("Gather", self.x, self.ctx.const(self.times(), "times"), axis=0)

    def before_in_backward_order(self, y):
        """D×T×N×H: the hidden state each backward step's forward step started from: Y one step
        earlier in that direction's forward order, or initial_h (zeros without it)."""
        steps, dirs, hid = self.steps, self.directions, self.hidden
        times = self.times()
        earlier = np.where([[self.forward_in_time(d)] for d in range(dirs)], times - 1, times + 1)
        rows = np.where((earlier >= 0) & (earlier < steps), earlier * dirs, steps * dirs) + np.arange(dirs)[:, None]
        flat = self.op("Reshape", y, self.ctx.ints([steps * dirs, -1, hid]))
        initial = self.optional_input(5)
        if initial:
            flat = self.op("Concat", flat, initial, axis=0)
        else:
            flat = self.op("Pad", flat, self.ctx.ints([0, 0, 0, dirs, 0, 0]))
        return self.op("Gather", flat, self.ctx.const(rows, "rows"), axis=0)

    def batched_matmul(self, t, weights, bias):
        """D×T×N×K ``t`` times the D×K×M constant ``weights`` (one product a direction), plus the
        D×M constant ``bias``: D×T×N×M."""
        product = self.op("MatMul", self.op("Reshape", t, self.ctx.ints([self.directions, -1, weights.shape[1]])),
                          self.const(weights))
        product = self.op("Reshape", product, self.ctx.ints([self.directions, self.steps, -1, weights.shape[2]]))
        return self.op("Add", product, self.const(bias[:, None, None]))

    def pieces(self, t, sizes, axis=3):
        """``t`` split along ``axis`` into pieces of ``sizes``."""
        return self.ctx.op_with_ints("Split", t, "split", sizes, 13, axis=axis, outputs=len(sizes))

    def solve(self, values, blocks, inputs, last, need_initial):
        """The backward recurrence s_{j+1} = s_j · J_j + e_{j+1} of every direction at once, with
        J_j = Σ_k diag(values[:, j, :, k]) · blocks[:, k] applied as [s·v_1, …, s·v_K] · [B_1; …; B_K]:
        Mul, Reshape, MatMul and Add a step. ``values`` D×T×N×K×S, ``blocks`` D×K×S×S (constants),
        the ``inputs`` e (D×T×N×1×S, or None) and ``last`` (D×1×N×1×S: the gradient of the last
        state, or None). Returns the states s (D×T×N×S) and, when ``need_initial``, the
        gradient of the initial state (D×N×S)."""
        ctx, steps, dirs = self.ctx, self.steps, self.directions
        count, size = blocks.shape[1:3]
        scales = self.split_steps(values)
        stack = self.const(blocks.reshape(dirs, 1, 1, count * size, size))
        flat = ctx.ints([dirs, 1, -1, 1, count * size])

        def step(state, j):
            return self.op("MatMul", self.op("Reshape", self.op("Mul", state, scales[j]), flat), stack)

        e = self.split_steps(inputs) if inputs else [None] * steps
        state = self.add(e[0], last)
        states = [state]
        for j in range(1, steps):
            state = self.add(step(state, j - 1), e[j])
            states.append(state)
        every = ctx.squeeze(states[0] if steps == 1 else self.op("Concat", *states, axis=1), [3])
        initial = None
        if need_initial:
            initial = self.op("Reshape", step(state, steps - 1), ctx.ints([dirs, -1, size]))
        return every, initial

    def split_steps(self, t):
        """The T pieces of D×T×… ``t`` along the steps axis (each D×1×…)."""
        if self.steps == 1:
            return [t]
        return self.pieces(t, [1] * self.steps, axis=1)

    def finish(self, node, dx_parts, dh0, dc0=None):
        """Input gradients: X summed over directions; initial states stacked over directions."""
        ctx = self.ctx
        result = [None] * len(node.input)
        result[0] = self.add(*dx_parts)
        for index, parts in ((5, dh0), (6, dc0)):
            if parts and len(node.input) > index and node.input[index]:
                result[index] = parts[0] if len(parts) == 1 else self.op("Concat", *parts, axis=0)
        return result


@rule("LSTM", wrt=ALL, all_outputs=True)
def lstm(ctx, node, grads):
    """Gates i, o, f, c (ONNX order); C_t = f·C_{t−1} + i·g, H_t = o·tanh(C_t). No peepholes."""
    if len(node.input) > 7 and node.input[7]:
        raise UnsupportedOpError(f"LSTM {node.name!r}: peephole weights have no gradient rule")
    s = _Steps(ctx, node, gates=4)
    if 2 * s.hidden <= JACOBIAN_MAX:
        return _lstm_by_jacobians(s, node, grads + [None] * (3 - len(grads)))
    y = ctx.extra_output(node, 0)  # Y: the hidden states
    dx_parts, dh0, dc0 = [], [], []
    for d, (i, o, f, g, cell, cell_before) in enumerate(_lstm_forward(s, node, y)):
        w, r = s.weights[0][d], s.weights[1][d]
        f_steps, order = s.split(f, 0, s.steps), s.order(d)
        tanh_c = s.op("Tanh", cell)
        # dC += dH · a; dgates = [dC·ki, dH·ko, dC·kf, dC·kc]
        a = s.split(s.op("Mul", o, s.one_minus(s.op("Mul", tanh_c, tanh_c))), 0, s.steps)
        k = s.op("Concat", s.op("Mul", g, s.slope(i)), s.op("Mul", tanh_c, s.slope(o)),
                 s.op("Mul", cell_before, s.slope(f)), s.op("Mul", i, s.one_minus(s.op("Mul", g, g))), axis=2)
        k = s.split(k, 0, s.steps)
        per_step, (dy_h, dy_c) = s.incoming(grads + [None] * (3 - len(grads)), d)
        r_const = s.const(r)
        dh, dc, dgates = dy_h, dy_c, {}
        for t in reversed(order):
            dh = s.add(per_step[t], dh) or s.zeros(f_steps[t])
            dc = s.add(s.op("Mul", dh, a[t]), dc)
            dgates[t] = s.op("Mul", s.op("Concat", dc, dh, dc, dc, axis=2), k[t])
            dh = s.op("MatMul", dgates[t], r_const)
            dc = s.op("Mul", dc, f_steps[t])
        dgate_all = s.op("Concat", *[dgates[t] for t in range(s.steps)], axis=0)
        dx_parts.append(s.op("MatMul", dgate_all, s.const(w)))
        dh0.append(dh)
        dc0.append(dc)
    return s.finish(node, dx_parts, dh0, dc0)


@rule("GRU", wrt=ALL, all_outputs=True)
def gru(ctx, node, grads):
    """Gates z, r, h (ONNX order); H_t = (1 − z)·h̃ + z·H_{t−1}, with h̃ = tanh(Xh + r·(H Rhᵀ + Rbh) + Wbh)
    (linear_before_reset=1, as torch exports) or tanh(Xh + (r·H) Rhᵀ + Rbh + Wbh)."""
    s = _Steps(ctx, node, gates=3)
    linear_before_reset = attrs(node).get("linear_before_reset", 0)
    if linear_before_reset and s.hidden <= JACOBIAN_MAX:
        return _gru_by_jacobians(s, node, grads + [None] * (2 - len(grads)))
    y = ctx.extra_output(node, 0)  # Y: the hidden states
    hid = s.hidden
    dx_parts, dh0 = [], []
    for d in range(s.directions):
        w, r, b = s.weights[0][d], s.weights[1][d], s.bias[d]
        wb, rb = b[:3 * hid], b[3 * hid:]
        h_before = s.state_before(d, s.pick(y, d, 1), 5)
        x_z, x_r, x_h = s.split(s.op("Add", s.op("MatMul", s.x, s.const(w.T)), s.const(wb)), 2, 3)
        h_zr = s.op("Add", s.op("MatMul", h_before, s.const(r[:2 * hid].T)), s.const(rb[:2 * hid]))
        h_z, h_r = s.split(h_zr, 2, 2)
        z, rg = s.op("Sigmoid", s.op("Add", x_z, h_z)), s.op("Sigmoid", s.op("Add", x_r, h_r))
        rh = s.const(r[2 * hid:])
        if linear_before_reset:
            h_h = s.op("Add", s.op("MatMul", h_before, s.const(r[2 * hid:].T)), s.const(rb[2 * hid:]))
            cand = s.op("Tanh", s.op("Add", x_h, s.op("Mul", rg, h_h)))
        else:
            h_h = s.op("Add", s.op("MatMul", s.op("Mul", rg, h_before), s.const(r[2 * hid:].T)), s.const(rb[2 * hid:]))
            cand = s.op("Tanh", s.op("Add", x_h, h_h))
        kz = s.op("Mul", s.op("Sub", h_before, cand), s.slope(z))
        kh = s.op("Mul", s.one_minus(z), s.one_minus(s.op("Mul", cand, cand)))
        # linear_before_reset: dr = dH·kh·h_h·r'; else dr = ((dH·kh) Rh)·H·r'
        kr = s.op("Mul", s.op("Mul", kh, h_h) if linear_before_reset else h_before, s.slope(rg))
        z_steps, kz, kh, kr = (s.split(t, 0, s.steps) for t in (z, kz, kh, kr))
        r_steps = s.split(rg, 0, s.steps)
        r_zr = s.const(r[:2 * hid])
        per_step, (dy_h,) = s.incoming(grads + [None] * (2 - len(grads)), d)
        order = s.order(d)
        dh, dgates = dy_h, {}
        for t in reversed(order):
            dh = s.add(per_step[t], dh) or s.zeros(z_steps[t])
            d_cand = s.op("Mul", dh, kh[t])
            d_z = s.op("Mul", dh, kz[t])
            if linear_before_reset:
                d_r = s.op("Mul", dh, kr[t])
                back = s.op("MatMul", s.op("Mul", d_cand, r_steps[t]), rh)
            else:
                back = s.op("MatMul", d_cand, rh)  # gradient of r·H
                d_r = s.op("Mul", back, kr[t])
                back = s.op("Mul", back, r_steps[t])
            dgates[t] = s.op("Concat", d_z, d_r, d_cand, axis=2)
            dh = s.add(s.op("Mul", dh, z_steps[t]), back, s.op("MatMul", s.op("Concat", d_z, d_r, axis=2), r_zr))
        dgate_all = s.op("Concat", *[dgates[t] for t in range(s.steps)], axis=0)
        dx_parts.append(s.op("MatMul", dgate_all, s.const(w)))
        dh0.append(dh)
    return s.finish(node, dx_parts, dh0)


def _lstm_forward(s, node, y):
    """Per direction, the gates i, o, f, g and the cell states C and C_{t−1} (T×N×H each),
    recomputed from X and Y."""
    hid, gates, h_before = s.hidden, [], []
    for d in range(s.directions):
        w, r, b = s.weights[0][d], s.weights[1][d], s.bias[d]
        h_before.append(s.state_before(d, s.pick(y, d, 1), 5))
        pre = s.op("Add", s.op("Add", s.op("MatMul", s.x, s.const(w.T)), s.op("MatMul", h_before[d], s.const(r.T))),
                   s.const(b[:4 * hid] + b[4 * hid:]))
        pre_i, pre_o, pre_f, pre_c = s.split(pre, 2, 4)
        gates.append((s.op("Sigmoid", pre_i), s.op("Sigmoid", pre_o), s.op("Sigmoid", pre_f), s.op("Tanh", pre_c)))
    cells, before = s.cell_states([f for _, _, f, _ in gates], [s.op("Mul", i, g) for i, _, _, g in gates])
    return [(*gate, c, cb) for gate, c, cb in zip(gates, cells, before)]


def _lstm_by_jacobians(s, node, grads):
    """LSTM backward with the state s = (dH, dC from later steps): dC_t = s_C + s_H·a with
    a = o·(1 − tanh²C); the step's Jacobian is Σ_j diag(v_j)·B_j over the five (v_j, B_j):
    (a·ki, ki), (a·kf, kf) and (a·kc, kc) with [[R_g, 0], [R_g, 0]], (a·f, f) with [[0, I], [0, I]],
    (ko, ·) with [[R_o, 0], [0, 0]]; k* are the gate slopes (dgates = [dC·ki, dH·ko, dC·kf, dC·kc]).
    All directions at once, in the backward's step order (:meth:`_Steps.times`)."""
    ctx, hid, dirs = s.ctx, s.hidden, s.directions
    _, dy_h, dy_c = grads
    w, r = s.weights
    y = ctx.extra_output(node, 0)  # Y: the hidden states
    inputs = s.op("Concat", s.x_in_backward_order(), s.before_in_backward_order(y), axis=3)  # [X, H_{t−1}]
    weights = np.concatenate([w, r], axis=2).transpose(0, 2, 1)  # D×(I+H)×4H
    pre = s.batched_matmul(inputs, weights, s.bias[:, :4 * hid] + s.bias[:, 4 * hid:])
    pre_iof, pre_c = s.pieces(pre, [3 * hid, hid])
    iof, g = s.op("Sigmoid", pre_iof), s.op("Tanh", pre_c)
    i, o, f = s.pieces(iof, [hid] * 3)
    cell, cell_before = _cells_by_doubling(s, i, f, g)
    tanh_c = s.op("Tanh", cell)
    a = s.op("Mul", o, s.one_minus(s.op("Mul", tanh_c, tanh_c)))
    k_iof = s.op("Mul", s.slope(iof), s.op("Concat", g, tanh_c, cell_before, axis=3))  # [ki, ko, kf]
    k = s.op("Concat", k_iof, s.op("Mul", i, s.one_minus(s.op("Mul", g, g))), axis=3)  # ONNX gate order
    per_gate = s.op("Reshape", s.op("Concat", k, f, axis=3), ctx.ints([dirs, s.steps, -1, 5, hid]))
    on_h = s.op("Max", ctx.unsqueeze(a, [3]), s.const(np.repeat(_ONLY_O[:, None], hid, axis=1)))  # 0 ≤ a ≤ 1
    values = s.op("Concat", s.op("Mul", per_gate, on_h), per_gate, axis=4)  # v_j = (per_gate·on_h, per_gate)
    eye, zero = np.eye(hid), np.zeros((hid, hid))
    blocks = np.stack([np.stack([np.block([[m, zero], [m, zero]]) if gate != 1 else np.block([[m, zero], [zero, zero]])
                                 for gate, m in enumerate(np.split(r[d], 4))] + [np.block([[zero, eye], [zero, eye]])])
                       for d in range(dirs)])
    e = None
    if grads[0]:
        e = s.op("Pad", s.per_step_inputs(grads[0]), ctx.ints([0] * 9 + [hid]))
    last = None  # [dY_h, dY_c] as D×1×N×1×2H: the gradient of the last state
    if dy_h and dy_c:
        last = ctx.unsqueeze(s.op("Concat", dy_h, dy_c, axis=2), [1, 3])
    elif dy_h or dy_c:
        pads = [0, 0, 0, 0, 0, hid] if dy_h else [0, 0, hid, 0, 0, 0]
        last = ctx.unsqueeze(s.op("Pad", dy_h or dy_c, ctx.ints(pads)), [1, 3])
    need = any(len(node.input) > n and node.input[n] for n in (5, 6))
    states, initial = s.solve(values, blocks, e, last, need)
    dh, later_dc = s.pieces(states, [hid, hid])
    dc = s.op("Add", later_dc, s.op("Mul", dh, a))
    dgates = s.op("Mul", s.op("Concat", dc, dh, dc, dc, axis=3), k)
    dx = s.input_gradient(dgates, w)
    dh0, dc0 = s.pieces(initial, [hid, hid], axis=2) if initial else (None, None)
    return s.finish(node, [dx], [dh0] if dh0 else [], [dc0] if dc0 else [])


_ONLY_O = np.array([0, 1, 0, 0, 0], np.float32)  # the output gate's slope scales dH itself, not dH·a (Max(a, 1) = 1)


def _cells_by_doubling(s, i, f, g):
    """The cell states C_t and C_{t−1} (D×T×N×H, backward order) of every direction at once, from
    the gates i, f, g (D×T×N×H, backward order). In that order each direction's cell recurrence
    runs backwards, C_j = f_j·C_{j+1} + u_j with u = i·g and C_T = initial_c (zeros without it),
    and is solved by doubling: step j holds the map C ↦ f_j·C + u_j, and each level composes it
    with the map ``span`` steps later (u_j += f_j·u_{j+span}, f_j ·= f_{j+span}), so ⌈log₂ T⌉
    levels of three to five small nodes cover every step (an LSTM node rerunning the recurrence
    cost more). A last step T holds the identity map (f = 1, u = 0) and the indices past it
    point at it; at the end it holds initial_c, which makes C_{t−1} a slice too."""
    ctx, steps = s.ctx, s.steps
    pad = ctx.ints([0, 0, 0, 0, 0, 1, 0, 0])  # one more step at the end of axis 1
    u = s.op("Pad", s.op("Mul", i, g), pad)
    f = s.op("Pad", f, pad, ctx.scalar(1.0, like=s.x))
    initial = s.optional_input(6)  # initial_c, D×N×H
    span = 1
    while span < steps:
        later = ctx.const(np.minimum(np.arange(steps + 1) + span, steps), "later")
        u = s.op("Add", u, s.op("Mul", f, s.op("Gather", u, later, axis=1)))
        span *= 2
        if span < steps or initial:
            f = s.op("Mul", f, s.op("Gather", f, later, axis=1))
    if initial:
        u = s.op("Add", u, s.op("Mul", f, ctx.unsqueeze(initial, [1])))
    return [s.op("Slice", u, ctx.ints([first]), ctx.ints([first + steps]), ctx.ints([1])) for first in (0, 1)]


def _gru_by_jacobians(s, node, grads):
    """GRU backward (linear_before_reset=1) with the state s = dH: the step's Jacobian is
    diag(z) + diag(kz)·R_z + diag(kr)·R_r + diag(kh·r)·R_h, and dgates = [dH·kz, dH·kr, dH·kh].
    All directions at once, in the backward's step order (:meth:`_Steps.times`)."""
    ctx, hid, dirs = s.ctx, s.hidden, s.directions
    w, r = s.weights
    h_before = s.before_in_backward_order(ctx.extra_output(node, 0))
    x_all = s.batched_matmul(s.x_in_backward_order(), w.transpose(0, 2, 1), s.bias[:, :3 * hid])
    x_zr, x_h = s.pieces(x_all, [2 * hid, hid])
    h_zr, h_h = s.pieces(s.batched_matmul(h_before, r.transpose(0, 2, 1), s.bias[:, 3 * hid:]), [2 * hid, hid])
    zr = s.op("Sigmoid", s.op("Add", x_zr, h_zr))
    z, rg = s.pieces(zr, [hid, hid])
    cand = s.op("Tanh", s.op("Add", x_h, s.op("Mul", rg, h_h)))
    kh = s.op("Mul", s.one_minus(z), s.one_minus(s.op("Mul", cand, cand)))
    k_zr = s.op("Mul", s.slope(zr), s.op("Concat", s.op("Sub", h_before, cand), s.op("Mul", kh, h_h), axis=3))  # kz, kr
    values = s.op("Concat", z, k_zr, s.op("Mul", kh, rg), axis=3)
    values = s.op("Reshape", values, ctx.ints([dirs, s.steps, -1, 4, hid]))
    blocks = np.stack([np.stack([np.eye(hid), *np.split(r[d], 3)]) for d in range(dirs)])
    e = s.per_step_inputs(grads[0]) if grads[0] else None
    last = ctx.unsqueeze(grads[1], [1, 3]) if grads[1] else None
    need = len(node.input) > 5 and bool(node.input[5])
    states, dh0 = s.solve(values, blocks, e, last, need)
    dgates = s.op("Mul", s.op("Concat", states, states, states, axis=3), s.op("Concat", k_zr, kh, axis=3))
    dx = s.input_gradient(dgates, w)
    return s.finish(node, [dx], [dh0] if dh0 else [])
