"""Rules for the recurrent layers LSTM and GRU (CNN+LSTM/GRU text recognizers).

The backward is unrolled over the static sequence length T, with standard ops only: Loop/Scan
bodies would be sub-graphs that the rest of the engine (pruning, shape inference, ORT's
layout optimizer) sees as opaque, and T is static in every recognizer once the input size is
fixed. Per direction the rule first recomputes the gates for all T steps at once from the
forward input X and the forward output Y (the hidden state before step t is Y at the previous
step, or initial_h), so only the truly sequential parts are per-step nodes: the LSTM cell state
(2 nodes a step) and the backward recurrence through R (about 7 nodes a step).

Supported: layout 0 (X is T×N×I), directions forward / reverse / bidirectional, the default
activations, optional initial states (they get gradients), sequence_lens absent (or constant
and equal to T everywhere), GRU with either ``linear_before_reset``. Weights must be constants.
"""
import numpy as np
from onnx import numpy_helper

from engine.errors import UnsupportedOpError
from engine.graph.rules import ALL, attrs, rule

_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


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
        name = self.node.input[index] if len(self.node.input) > index else ""
        value = self.ctx.value(name) if name else None
        if value is None and (name or not optional):
            raise UnsupportedOpError(f"{what}: computed weights have no gradient rule")
        return value

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
        return self.ctx.op_with_ints("Split", t, "split", [size] * parts, 13, axis=axis, outputs=parts)

    def slab(self, t, index, axis):
        """``t`` at ``index`` along ``axis`` (kept, of size 1)."""
        return self.op("Gather", t, self.ctx.ints([index]), axis=axis)

    def pick(self, t, index, axis):
        """``t`` at ``index`` along ``axis`` (the axis removed)."""
        return self.ctx.squeeze(self.slab(t, index, axis), [axis])

    def initial(self, index, d, like):
        """Initial state of direction ``d`` as 1×N×H: the node's input ``index`` or zeros."""
        name = self.node.input[index] if len(self.node.input) > index else ""
        return self.slab(name, d, 0) if name else self.zeros(like)

    def zeros(self, like):
        """Zeros shaped like the emitted tensor ``like`` (typed like X)."""
        zero = numpy_helper.from_array(np.zeros(1, self.ctx.dtype(self.x)))
        return self.op("ConstantOfShape", self.op("Shape", like), value=zero)

    def order(self, d):
        """Time steps in processing order for direction ``d``."""
        backwards = self.reverse or d == 1
        return list(range(self.steps))[::-1] if backwards else list(range(self.steps))

    def hidden_before(self, d, y_d):
        """T×N×H: the hidden state each step of direction ``d`` starts from (Y of the previous
        step, the initial state first)."""
        pieces = self.split(y_d, 0, self.steps)
        h0 = self.initial(5, d, pieces[0])
        order = self.order(d)
        before = {order[0]: h0, **{t: pieces[p] for p, t in zip(order, order[1:])}}
        return self.op("Concat", *[before[t] for t in range(self.steps)], axis=0)

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
    y = ctx.extra_output(node, 0)  # Y: the hidden states
    hid = s.hidden
    dx_parts, dh0, dc0 = [], [], []
    for d in range(s.directions):
        w, r, b = s.weights[0][d], s.weights[1][d], s.bias[d]
        y_d = s.pick(y, d, 1)
        h_before = s.hidden_before(d, y_d)
        gates = s.op("Add", s.op("Add", s.op("MatMul", s.x, s.const(w.T)), s.op("MatMul", h_before, s.const(r.T))),
                     s.const(b[:4 * hid] + b[4 * hid:]))
        pre_i, pre_o, pre_f, pre_c = s.split(gates, 2, 4)
        i, o, f, g = (s.op("Sigmoid", pre_i), s.op("Sigmoid", pre_o), s.op("Sigmoid", pre_f), s.op("Tanh", pre_c))
        f_steps, ig_steps = s.split(f, 0, s.steps), s.split(s.op("Mul", i, g), 0, s.steps)
        order = s.order(d)
        c_prev = s.initial(6, d, f_steps[0])
        cells, cells_before = {}, {}
        for t in order:
            cells_before[t] = c_prev
            c_prev = cells[t] = s.op("Add", s.op("Mul", f_steps[t], c_prev), ig_steps[t])
        cell = s.op("Concat", *[cells[t] for t in range(s.steps)], axis=0)
        cell_before = s.op("Concat", *[cells_before[t] for t in range(s.steps)], axis=0)
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
    y = ctx.extra_output(node, 0)  # Y: the hidden states
    hid = s.hidden
    dx_parts, dh0 = [], []
    for d in range(s.directions):
        w, r, b = s.weights[0][d], s.weights[1][d], s.bias[d]
        wb, rb = b[:3 * hid], b[3 * hid:]
        h_before = s.hidden_before(d, s.pick(y, d, 1))
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
