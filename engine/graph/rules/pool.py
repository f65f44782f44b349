"""Rules for pooling and reductions."""
import numpy as np
from onnx import TensorProto

from engine.errors import UnsupportedOpError
from engine.graph.rules import attrs, rule
from engine.graph.rules.windows import window


@rule("MaxPool", since=16)
def max_pool(ctx, node, dy):
    """Scatter-add the gradient to the arg-max positions given by MaxPool's Indices output
    (flat over the whole tensor, so overlapping windows, pads and ceil_mode all work; from opset 16:
    ScatterElements with reduction); float32 windows that do not overlap use MaxUnpool with the
    same indices."""
    if attrs(node).get("storage_order", 0):
        raise UnsupportedOpError(f"MaxPool {node.name!r} with storage_order=1 has no gradient rule; pick a layer after it")
    x = node.input[0]
    indices = ctx.extra_output(node, 1)
    a = attrs(node)
    kernel = a["kernel_shape"]
    strides, dilations = a.get("strides") or [1] * len(kernel), a.get("dilations") or [1] * len(kernel)
    if ctx.elem_type(x) == TensorProto.FLOAT and all(s >= (k - 1) * d + 1 for k, s, d in zip(kernel, strides, dilations)):
        # Windows that do not overlap send each input at most one gradient: MaxUnpool puts them
        # in place in one op (a third of the ScatterElements path's time on ORT CPU).
        return ctx.op("MaxUnpool", dy, indices, ctx.shape_of(x), kernel_shape=kernel, strides=strides)
    flat = ctx.ints([-1])
    zeros = ctx.op("Reshape", ctx.zeros_like(x), flat)
    dx = ctx.op("ScatterElements", zeros, ctx.op("Reshape", indices, flat), ctx.op("Reshape", dy, flat),
                axis=0, reduction="add")
    return ctx.reshape_like(dx, x)


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
def average_pool(ctx, node, dy):
    """Divide by each window's count, then spread with a depthwise ConvTranspose of ones."""
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
    return ctx.op("ConvTranspose", scaled, ones, kernel_shape=win.kernel, strides=win.strides,
                  dilations=win.dilations, group=channels, pads=pads, output_padding=output_padding)


@rule("GlobalAveragePool")
def global_average_pool(ctx, node, dy):
    """Spread dy / (number of positions) over every position; the count is computed at run
    time when the spatial dims are symbolic."""
    x = node.input[0]
    spatial = ctx.shape(x)[2:]
    if all(isinstance(d, int) for d in spatial):
        factor, shape = 1.0 / np.prod(spatial), ctx.ints([1, 1, *spatial])
        if ctx.blocked_layout(x):  # the depthwise Conv that moves it into NCHWc scales it too
            return ctx.scale(ctx.op("Expand", dy, shape), factor, like=x)
        return ctx.op("Expand", ctx.op("Mul", dy, ctx.scalar(factor, like=dy)), shape)
    positions = ctx.op("Slice", ctx.shape_of(x), ctx.ints([2]), ctx.ints([len(spatial) + 2]))
    count = ctx.op("Cast", ctx.op("ReduceProd", positions, keepdims=0), to=ctx.elem_type(x))
    return ctx.op("Expand", ctx.op("Div", dy, count), ctx.shape_of(x))


@rule("GlobalMaxPool")
def global_max_pool(ctx, node, dy):
    x = node.input[0]
    return ctx.mask(dy, ctx.op("Equal", x, node.output[0]), like=x)


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
def reduce(ctx, node, dy):
    x, y = node.input[0], node.output[0]
    axes = _reduced_axes(ctx, node)
    if axes is None:
        return dy
    keep = attrs(node).get("keepdims", 1)
    dyk = dy if keep else ctx.unsqueeze(dy, axes)
    if node.op_type == "ReduceMax":
        yk = y if keep else ctx.unsqueeze(y, axes)
        return ctx.mask(dyk, ctx.op("Equal", x, yk), like=x)
    if node.op_type == "ReduceMean":
        dims = [ctx.shape(x)[ax] for ax in axes]
        if all(isinstance(d, int) for d in dims):
            count = ctx.scalar(float(np.prod(dims)), like=dy)
        else:
            count = ctx.op("Cast", ctx.op("ReduceProd", ctx.op("Gather", ctx.shape_of(x), ctx.ints(axes)),
                                          keepdims=0), to=ctx.elem_type(x))
        dyk = ctx.op("Div", dyk, count)
    return ctx.expand_like(dyk, x, axes)
