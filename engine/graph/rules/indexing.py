"""Rules for ops that pick, place or repeat elements: Split, Slice, Pad, Expand, Gather.

An op that reads its output along one axis from fixed input positions (strided Slice, Gather
with constant indices, reflect/edge/wrap Pad, Resize) is the linear map y = M·x along that axis
with a constant matrix M; its gradient is Mᵀ·dy, one MatMul (:func:`along_axis`), which keeps
the batch symbolic and sums repeated positions.
"""
import numpy as np

from engine.errors import UnsupportedOpError
from engine.graph.rules import attrs, rule

_INT_MAX = np.iinfo(np.int64).max


def along_axis(ctx, x, matrix, axis, like):
    """``out[..., i, ...] = Σ_j matrix[i, j] · x[..., j, ...]`` along ``axis`` of ``x``, a tensor of
    the rank and element type of forward tensor ``like``.

    Example: ``along_axis(ctx, dy, m.T, 2, like=x)`` is the gradient of y = m·x along axis 2.
    """
    rank = ctx.rank(like)
    axis %= rank
    matrix = np.asarray(matrix, dtype=ctx.dtype(like))
    if axis == rank - 2:
        return ctx.op("MatMul", ctx.const(matrix, "axis_map"), x)
    if axis == rank - 1:
        return ctx.op("MatMul", x, ctx.const(np.ascontiguousarray(matrix.T), "axis_map"))
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    moved = ctx.op("MatMul", ctx.op("Transpose", x, perm=perm), ctx.const(np.ascontiguousarray(matrix.T), "axis_map"))
    return ctx.op("Transpose", moved, perm=perm)


def _one_hot(positions, size):
    """Matrix M (len(positions) × size) with M[i, positions[i]] = 1: y = M·x picks x[positions]."""
    matrix = np.zeros((len(positions), size))
    matrix[np.arange(len(positions)), positions] = 1
    return matrix


def _static_dim(ctx, node, name, axis):
    """Size of ``name`` along ``axis``, which must be static."""
    dim = ctx.shape(name)[axis]
    if not isinstance(dim, int):
        raise UnsupportedOpError(
            f"{node.op_type} {node.name!r} indexes along a symbolic axis: gradients need a static size there; pick a layer after it")
    return dim


def _zero_pad(ctx, x, pads):
    """Pad ``x`` with zeros; ``pads`` = begins + ends over all axes (input from opset 11)."""
    return ctx.op_with_ints("Pad", x, "pads", pads, 11)


def _constant_input(ctx, node, index, what):
    value = ctx.value(node.input[index])
    if value is None:
        raise UnsupportedOpError(f"{node.op_type} {node.name!r} has computed {what}: fold constants first")
    return value


@rule("Split", all_outputs=True)
def split(ctx, node, grads):
    """Concatenate the pieces' gradients (zeros for pieces nobody uses)."""
    axis = attrs(node).get("axis", 0)
    pieces = [g if g is not None else ctx.zeros_like(o) for g, o in zip(grads, node.output)]
    return pieces[0] if len(pieces) == 1 else ctx.op("Concat", *pieces, axis=axis)


def slice_positions(start, end, step, dim):
    """Positions a Slice reads along one axis, with ONNX's clamping (which differs from Python's
    for negative steps: a start before the beginning reads element 0).

    Example: ``list(slice_positions(-100, -2**63 + 1, -1, 5)) == [0]``.
    """
    start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
    if step > 0:
        return range(min(max(start, 0), dim), min(max(end, 0), dim), step)
    return range(min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step)


@rule("Slice", since=10)
def slice_(ctx, node, dy, request=None):
    """Unit-step axes: Pad the gradient with zeros back to full size; other steps (negative too):
    the transposed pick matrix along the axis. ``request``: (starts, ends, axes, steps) when
    they are not the node's inputs (the older attribute form)."""
    x = node.input[0]
    rank = ctx.rank(x)
    if request is None:
        starts, ends = (_constant_input(ctx, node, i, "starts/ends").tolist() for i in (1, 2))
        axes = _constant_input(ctx, node, 3, "axes").tolist() if len(node.input) > 3 and node.input[3] else None
        steps = _constant_input(ctx, node, 4, "steps").tolist() if len(node.input) > 4 and node.input[4] else None
    else:
        starts, ends, axes, steps = request
    axes = range(len(starts)) if axes is None else axes
    steps = steps or [1] * len(starts)
    pads, strided = [0] * (2 * rank), []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= rank
        dim = ctx.shape(x)[axis]
        if not isinstance(dim, int):
            if start == 0 and step == 1 and end >= _INT_MAX // 2:
                continue  # the whole symbolic axis
            _static_dim(ctx, node, x, axis)
        positions = slice_positions(start, end, step, dim)
        if step == 1:
            pads[axis], pads[rank + axis] = positions.start, dim - positions.start - len(positions)
        else:
            strided.append((axis, positions, dim))
    dx = _zero_pad(ctx, dy, pads) if any(pads) else dy
    spread = _spread(ctx, dx, strided, x)
    if spread is not None:
        return spread
    for axis, positions, dim in strided:
        dx = along_axis(ctx, dx, _one_hot(list(positions), dim).T, axis, like=x)
    return dx


def _spread(ctx, dy, strided, like):
    """The gradient of a Slice with steps along the spatial axes of an N×C×H×W tensor ``like``
    (``strided``: (axis, positions, size) per such axis, each position range starting before
    its step), put back in place by one depthwise ConvTranspose with a one-hot kernel of the
    step's size, a plain scatter, instead of a pick-matrix MatMul per axis (ddddocr_det, whose
    YOLOv5 Focus takes four such slices of a 416² image: 2.76 → 2.38× forward for the input
    gradient). None for other Slices."""
    shape = ctx.shape(like)
    if not strided or shape is None or len(shape) != 4 or not isinstance(shape[1], int) \
            or any(axis < 2 or p.step < 2 or p.start >= p.step or not len(p) for axis, p, _ in strided):
        return None
    steps, at, ends, extra = [1, 1], [0, 0], [0, 0], [0, 0]
    for axis, positions, size in strided:  # len · step places, cut or topped up to the axis' size
        i, span = axis - 2, len(positions) * positions.step
        steps[i], at[i], ends[i], extra[i] = positions.step, positions.start, max(span - size, 0), max(size - span, 0)
    weight = np.zeros((shape[1], 1, *steps), ctx.dtype(like))
    weight[(slice(None), 0, *at)] = 1
    return ctx.op("ConvTranspose", dy, ctx.const(weight, "spread"), kernel_shape=steps, strides=steps, group=shape[1],
                  pads=[0, 0, *ends], output_padding=extra)


@rule("Slice", since=1)
def slice_1(ctx, node, dy):
    """Before opset 10: starts, ends, axes are attributes (unit steps)."""
    a = attrs(node)
    return slice_(ctx, node, dy, (a["starts"], a["ends"], a.get("axes"), None))


def _pad_positions(dim, begin, end, mode):
    """Input positions each output element of a reflect/edge/wrap Pad reads along one axis
    (negative pads crop first, as ONNX Runtime does)."""
    kept = np.arange(dim)[max(-begin, 0):dim - max(-end, 0)]
    return np.pad(kept, (max(begin, 0), max(end, 0)), mode=mode)


@rule("Pad", since=11)
def pad(ctx, node, dy, given=None):
    """constant: crop the gradient back (Slice), zero-padding where the forward cropped;
    reflect/edge/wrap: transposed pick matrices along the padded axes (sums the mirrored parts).
    ``given``: the pads when they are not the node's input (the older attribute form)."""
    x = node.input[0]
    rank = ctx.rank(x)
    mode = attrs(node).get("mode", "constant")
    axes = None
    if given is None:
        given = _constant_input(ctx, node, 1, "pads").tolist()
        axes = _constant_input(ctx, node, 3, "axes").tolist() if len(node.input) > 3 and node.input[3] else None
    axes = [ax % rank for ax in (range(rank) if axes is None else axes)]
    begins, ends = [0] * rank, [0] * rank
    for i, ax in enumerate(axes):
        begins[ax], ends[ax] = given[i], given[len(axes) + i]
    if mode == "constant":
        padded = [ax for ax in range(rank) if begins[ax] > 0 or ends[ax] > 0]
        dx = dy
        if padded:
            dx = ctx.op("Slice", dy, ctx.ints([max(begins[ax], 0) for ax in padded]),
                        ctx.ints([-ends[ax] if ends[ax] > 0 else _INT_MAX for ax in padded]), ctx.ints(padded))
        cropped = [max(-p, 0) for p in begins + ends]
        return _zero_pad(ctx, dx, cropped) if any(cropped) else dx
    if mode not in ("reflect", "edge", "wrap"):
        raise UnsupportedOpError(f"Pad {node.name!r} with mode {mode!r} has no gradient rule; pick a layer after it")
    dx = dy
    for ax in range(rank):
        if begins[ax] or ends[ax]:
            dim = _static_dim(ctx, node, x, ax)
            dx = along_axis(ctx, dx, _one_hot(_pad_positions(dim, begins[ax], ends[ax], mode), dim).T, ax, like=x)
    return dx


@rule("Pad", since=2)
def pad_2(ctx, node, dy):
    """Before opset 11 the pads are an attribute."""
    return pad(ctx, node, dy, list(attrs(node)["pads"]))


@rule("Expand")
def expand(ctx, node, dy):
    return ctx.unbroadcast(dy, node.input[0], node.output[0])


@rule("Gather")
def gather(ctx, node, dy):
    """Constant indices (any shape, negative, repeated): the transposed pick matrix along the
    axis, after flattening the index dims of the gradient into one."""
    x = node.input[0]
    indices = _constant_input(ctx, node, 1, "indices")
    rank = ctx.rank(x)
    axis = attrs(node).get("axis", 0) % rank
    dim = _static_dim(ctx, node, x, axis)
    positions = indices.reshape(-1) % dim
    if indices.ndim == 0:
        dy = ctx.unsqueeze(dy, [axis])
    elif indices.ndim > 1:
        trailing = list(ctx.shape(x)[axis + 1:])
        if sum(not isinstance(d, int) for d in trailing) > 1:
            raise UnsupportedOpError(f"Gather {node.name!r}: more than one symbolic dim after its axis; pick a layer after it")
        trailing = [d if isinstance(d, int) else -1 for d in trailing]
        dy = ctx.op("Reshape", dy, ctx.ints([0] * axis + [positions.size] + trailing))
    return along_axis(ctx, dy, _one_hot(positions, dim).T, axis, like=x)
