"""Rules for pooling and reductions."""
import numpy as np

from engine.errors import UnsupportedOpError
from engine.graph.rules import attrs, rule
from engine.graph.rules.windows import window


@rule("MaxPool")
def max_pool(ctx, node, grads):
    """2-D float32 with static channels and sizes: :func:`_max_pool_windows`. Otherwise scatter-add the
    gradient to the arg-max positions given by MaxPool's Indices output (flat over the whole
    tensor, so overlapping windows, pads and ceil_mode all work)."""
    dy = grads[0]
    if dy is None:
        return [None]
    if ctx.opset < 16:
        raise UnsupportedOpError(f"MaxPool {node.name!r}: its gradient needs opset >= 16; normalize the model")
    if attrs(node).get("storage_order", 0):
        raise UnsupportedOpError(f"MaxPool {node.name!r} with storage_order=1 has no gradient rule; pick a layer after it")
    x = node.input[0]
    shape = ctx.shape(x)
    if shape is not None and len(shape) == 4 and all(isinstance(d, int) for d in shape[1:]) \
            and ctx.dtype(x) == np.float32:  # ORT CPU has no float64 Conv
        return [_max_pool_windows(ctx, node, dy)]
    indices = ctx.extra_output(node, 1)
    flat = ctx.ints([-1])
    zeros = ctx.op("Reshape", ctx.zeros_like(x), flat)
    dx = ctx.op("ScatterElements", zeros, ctx.op("Reshape", indices, flat), ctx.op("Reshape", dy, flat),
                axis=0, reduction="add")
    return [ctx.reshape_like(dx, x)]


def _max_pool_windows(ctx, node, dy):
    """MaxPool's input gradient from its windows, without the Indices output (ORT CPU computes
    that one ~100x slower than the pooling itself, outside its blocked layout): each window's
    k values as channels (a grouped Conv with one-hot weights over the input padded with the
    lowest float), a match mask against the output keeping only each window's first maximum
    (as the Indices would: row-major order), times dy, spread back by the transposed one-hot Conv.
    """
    x, y = node.input[0], node.output[0]
    dtype = ctx.dtype(x)
    win = window(ctx, node, attrs(node)["kernel_shape"])
    channels, taps = ctx.shape(x)[1], int(np.prod(win.kernel))
    ends = [s * (o - 1) + e - b - i for s, o, e, b, i in zip(win.strides, win.outputs, win.extent, win.begin, win.inputs)]
    pads = [0, 0, *win.begin, 0, 0, *[max(e, 0) for e in ends]]
    if any(pads):
        lowest = ctx.const(np.array(np.finfo(dtype).min, dtype), "lowest")
        x = ctx.op("Pad", x, ctx.ints(pads), lowest)
    one_hot = ctx.const(np.tile(np.eye(taps, dtype=dtype).reshape(taps, 1, *win.kernel), (channels, 1, 1, 1)),
                        "window_taps")
    conv = dict(kernel_shape=win.kernel, strides=win.strides, dilations=win.dilations, group=channels)
    windows = ctx.op("Reshape", ctx.op("Conv", x, one_hot, **conv), ctx.ints([0, channels, taps, *win.outputs]))
    per_window = ctx.ints([0, channels, 1, *win.outputs])
    match = ctx.op("Cast", ctx.op("Equal", windows, ctx.op("Reshape", y, per_window)), to=ctx.elem_type(y))
    earlier = ctx.op("CumSum", match, ctx.const(np.array(2, np.int64), "axis"), exclusive=1)
    first = ctx.op("Relu", ctx.op("Sub", match, earlier))  # 1 at the first match of each window only
    spread = ctx.op("Mul", first, ctx.op("Reshape", dy, per_window))
    spread = ctx.op("Reshape", spread, ctx.ints([0, channels * taps, *win.outputs]))
    begin, output_padding = win.transpose_pads()
    return ctx.op("ConvTranspose", spread, one_hot, pads=begin, output_padding=output_padding, **conv)


def _divisors(win, include_pad):
    """Per axis, how many elements each output position averages over."""
    out = []
    for k, s, d, b, e, x, y in zip(win.kernel, win.strides, win.dilations, win.begin, win.end,
                                   win.inputs, win.outputs):
        low, high = (-b, x + e) if include_pad else (0, x)
        taps = np.arange(y)[:, None] * s - b + np.arange(k)[None, :] * d
        out.append(((taps >= low) & (taps < high)).sum(axis=1))
    return out


@rule("AveragePool")
def average_pool(ctx, node, grads):
    """Divide by each window's count, then spread with a depthwise ConvTranspose of ones."""
    (dy,) = grads
    x = node.input[0]
    a = attrs(node)
    win = window(ctx, node, a["kernel_shape"])
    channels = ctx.shape(x)[1]
    counts = _divisors(win, a.get("count_include_pad", 0))
    scale = np.ones((), dtype=np.float64)
    for c in counts:
        scale = np.multiply.outer(scale, 1.0 / c)
    scaled = ctx.op("Mul", dy, ctx.const(scale.astype(ctx.dtype(x)), "pool_divisor"))
    ones = ctx.const(np.ones((channels, 1, *win.kernel), dtype=ctx.dtype(x)), "pool_ones")
    pads, output_padding = win.transpose_pads()
    return [ctx.op("ConvTranspose", scaled, ones, kernel_shape=win.kernel, strides=win.strides,
                   dilations=win.dilations, group=channels, pads=pads, output_padding=output_padding)]


@rule("GlobalAveragePool")
def global_average_pool(ctx, node, grads):
    """Spread dy / (number of positions) over every position; the count is computed at run
    time when the spatial dims are symbolic."""
    (dy,) = grads
    x = node.input[0]
    spatial = ctx.shape(x)[2:]
    if all(isinstance(d, int) for d in spatial):
        scaled = ctx.op("Mul", dy, ctx.scalar(1.0 / np.prod(spatial), like=dy))
        return [ctx.scale(ctx.op("Expand", scaled, ctx.ints([1, 1, *spatial])), 1.0, like=x)]
    positions = ctx.op("Slice", ctx.shape_of(x), ctx.ints([2]), ctx.ints([len(spatial) + 2]))
    count = ctx.op("Cast", ctx.op("ReduceProd", positions, keepdims=0), to=ctx.elem_type(x))
    return [ctx.op("Expand", ctx.op("Div", dy, count), ctx.shape_of(x))]


@rule("GlobalMaxPool")
def global_max_pool(ctx, node, grads):
    (dy,) = grads
    x = node.input[0]
    return [ctx.mask(dy, ctx.op("Equal", x, node.output[0]), like=x)]


def _reduced_axes(ctx, node):
    """Reduced axes (non-negative, sorted), or None for a no-op reduction."""
    rank = ctx.rank(node.input[0])
    a = attrs(node)
    if len(node.input) > 1 and node.input[1]:
        axes = ctx.value(node.input[1])
        if axes is None:
            raise UnsupportedOpError(f"{node.op_type} {node.name!r} has computed axes: fold constants first")
        axes = axes.tolist()
    else:
        axes = a.get("axes", [])
    if not axes:
        return None if a.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(int(ax) % rank for ax in axes)


@rule("ReduceSum", "ReduceMean", "ReduceMax")
def reduce(ctx, node, grads):
    (dy,) = grads
    x, y = node.input[0], node.output[0]
    axes = _reduced_axes(ctx, node)
    rest = [None] * (len(node.input) - 1)
    if axes is None:
        return [dy] + rest
    keep = attrs(node).get("keepdims", 1)
    dyk = dy if keep else ctx.unsqueeze(dy, axes)
    if node.op_type == "ReduceMax":
        yk = y if keep else ctx.unsqueeze(y, axes)
        return [ctx.mask(dyk, ctx.op("Equal", x, yk), like=x)] + rest
    if node.op_type == "ReduceMean":
        dims = [ctx.shape(x)[ax] for ax in axes]
        if all(isinstance(d, int) for d in dims):
            count = ctx.scalar(float(np.prod(dims)), like=dy)
        else:
            count = ctx.op("Cast", ctx.op("ReduceProd", ctx.op("Gather", ctx.shape_of(x), ctx.ints(axes)),
                                          keepdims=0), to=ctx.elem_type(x))
        dyk = ctx.op("Div", dyk, count)
    return [ctx.expand_like(dyk, x, axes)] + rest
