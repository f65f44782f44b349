"""Rules for InstanceNormalization, LayerNormalization, GroupNormalization (statistics of the
input itself; scale and bias are weights, not differentiated) and LRN."""
import numpy as np

from engine.errors import UnsupportedOpError
from engine.graph.rules import attrs, rule
from engine.graph.rules.pool import reduced_axes


def _mean(ctx, x, axes):
    """ReduceMean over ``axes``, kept (axes as input from opset 18, attribute before)."""
    return ctx.op_with_ints("ReduceMean", x, "axes", axes, 18, keepdims=1)


def standardized_backward(ctx, x, g, axes, epsilon, like):
    """Input gradient of x̂ = (x − mean)/√(var + ε) over ``axes``, given g = d(loss)/dx̂:
    dx = (g − mean(g) − x̂·mean(g·x̂)) / √(var + ε). Statistics are recomputed from ``x``.

    Example: ``standardized_backward(ctx, x, ctx.op("Mul", dy, scale), [2, 3], 1e-5, like=x)``.
    """
    centered = ctx.op("Sub", x, _mean(ctx, x, axes))
    variance = _mean(ctx, ctx.op("Mul", centered, centered), axes)
    inv_std = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.op("Add", variance, ctx.scalar(epsilon, like=like))))
    xhat = ctx.op("Mul", centered, inv_std)
    projection = ctx.op("Mul", xhat, _mean(ctx, ctx.op("Mul", g, xhat), axes))
    inner = ctx.op("Sub", ctx.op("Sub", g, _mean(ctx, g, axes)), projection)
    return ctx.op("Mul", inner, inv_std)


def centered_axes(ctx, node):
    """The axes when the Sub ``node`` is x − ReduceMean(x, axes, keepdims=1) and only this Sub
    reads the mean (a LayerNorm exported as primitives), else None. Its gradient is then
    dx = g − mean(g) over those axes, in two ops.

    >>> from engine.graph.rules import Context
    >>> mean = onnx.helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1])
    >>> sub = onnx.helper.make_node("Sub", ["x", "m"], ["c"])
    >>> ctx = Context(opset=13, mode="standard", shapes={"x": (2, 5)}, types={}, constants={},
    ...               used_names=set(), forward=[mean, sub])
    >>> centered_axes(ctx, sub)
    [1]
    """
    mean = ctx.private_producer(node.input[1])
    if (mean is None or mean.op_type != "ReduceMean" or mean.input[0] != node.input[0]
            or not attrs(mean).get("keepdims", 1)):
        return None
    return reduced_axes(ctx, mean)


def centered_backward(ctx, dy, axes):
    """Gradient for x of x − mean(x) over ``axes`` (see :func:`centered_axes`): dy − mean(dy)."""
    return ctx.op("Sub", dy, _mean(ctx, dy, axes))


def rms_scaled_axes(ctx, node):
    """The axes when the Div ``node`` is c / √(ReduceMean(c², axes, keepdims=1) + ε) (c² a Pow by 2
    or c·c, ε a constant) and each step of the divisor is read only by the next (the variance
    half of a LayerNorm, or an RMSNorm), else None. Its gradient for c is then
    (g − y·mean(g·y)) / divisor, whatever computed c, and the divisor's chain gets none."""
    c, divisor = node.input
    sqrt = ctx.private_producer(divisor)
    add = ctx.private_producer(sqrt.input[0]) if sqrt is not None and sqrt.op_type == "Sqrt" else None
    if add is None or add.op_type != "Add":
        return None
    variables = [t for t in add.input if not ctx.is_scalar(t)]
    mean = ctx.private_producer(variables[0]) if len(variables) == 1 else None
    if mean is None or mean.op_type != "ReduceMean" or not attrs(mean).get("keepdims", 1):
        return None
    square = ctx.private_producer(mean.input[0])
    squares_c = square is not None and (
        square.op_type == "Mul" and list(square.input) == [c, c]
        or square.op_type == "Pow" and square.input[0] == c and ctx.is_scalar(square.input[1], equal_to=2.0))
    return reduced_axes(ctx, mean) if squares_c else None


def rms_scaled_backward(ctx, node, dy, axes):
    """Gradient for c of y = c / divisor (see :func:`rms_scaled_axes`): (g − y·mean(g·y)) / divisor."""
    y = node.output[0]
    projection = ctx.op("Mul", y, _mean(ctx, ctx.op("Mul", dy, y), axes))
    return ctx.op("Div", ctx.op("Sub", dy, projection), node.input[1])


def _per_channel(ctx, scale, x, channels=None):
    """A per-channel weight (C,) of ``x`` (N, C, ...) shaped (C, 1, ..., 1) to broadcast;
    ``channels`` repeats a per-group weight (G,) to C channels first."""
    trailing = ctx.rank(x) - 2
    value = ctx.value(scale)
    if value is not None:
        value = np.repeat(value, channels // value.size) if channels else value
        return ctx.const(value.astype(ctx.dtype(x)).reshape(-1, *[1] * trailing), "norm_scale")
    if channels:
        groups = ctx.shape(scale)[0]
        scale = ctx.op("Reshape", ctx.op("Expand", ctx.unsqueeze(scale, [1]), ctx.ints([groups, channels // groups])),
                       ctx.ints([channels]))
    return ctx.unsqueeze(scale, list(range(1, 1 + trailing))) if trailing else scale


@rule("InstanceNormalization")
def instance_norm(ctx, node, dy):
    """Standardized over the spatial axes of each (image, channel), times scale."""
    x, scale = node.input[:2]
    g = ctx.op("Mul", dy, _per_channel(ctx, scale, x))
    axes = list(range(2, ctx.rank(x)))
    return standardized_backward(ctx, x, g, axes, attrs(node).get("epsilon", 1e-5), like=x)


@rule("LayerNormalization")
def layer_norm(ctx, node, dy):
    """Standardized over the axes from ``axis`` on, times scale (broadcast from the right). Its
    Mean/InvStdDev outputs have no rule."""
    x, scale = node.input[:2]
    a = attrs(node)
    rank = ctx.rank(x)
    axes = list(range(a.get("axis", -1) % rank, rank))
    g = ctx.op("Mul", dy, scale)
    return standardized_backward(ctx, x, g, axes, a.get("epsilon", 1e-5), like=x)


@rule("GroupNormalization")
def group_norm(ctx, node, dy):
    """Standardized over each group of C/G channels and the spatial axes, times scale: per
    channel (C,) from opset 21, per group (G,) at opset 18 (told apart by the scale's length)."""
    x, scale = node.input[:2]
    a = attrs(node)
    groups = a["num_groups"]
    channels = ctx.shape(x)[1]
    if not isinstance(channels, int):
        raise UnsupportedOpError(f"GroupNormalization {node.name!r} has a symbolic channel count; pick a layer after it")
    per_group = ctx.shape(scale)[0] != channels
    g = ctx.op("Mul", dy, _per_channel(ctx, scale, x, channels if per_group else None))
    grouped = ctx.ints([0, groups, -1])
    dx = standardized_backward(ctx, ctx.op("Reshape", x, grouped), ctx.op("Reshape", g, grouped), [2],
                               a.get("epsilon", 1e-5), like=x)
    return ctx.reshape_like(dx, x)


def _channel_window_sum(ctx, t, x, before, after, weight):
    """weight · Σ t[c'] over c − before ≤ c' ≤ c + after for each channel c of ``t`` (shaped
    like ``x``, N × C × ...): a Conv sliding along the channels of t viewed as N × 1 × C × rest."""
    size = before + after + 1
    kernel = ctx.const(np.full((1, 1, size, 1), weight, dtype=ctx.dtype(x)), "lrn_window")
    column = ctx.op("Reshape", t, ctx.ints([0, 1, ctx.shape(x)[1], -1]))
    summed = ctx.op("Conv", column, kernel, kernel_shape=[size, 1], pads=[before, 0, after, 0])
    return ctx.reshape_like(summed, x)


@rule("LRN")
def lrn(ctx, node, dy):
    """y = x·s^−β with s = bias + α/size·Σ_window x²: dx = dy·s^−β − 2β·x·Σ_window'(α/size·dy·y/s),
    where window' is the window mirrored (the transposed channel sum)."""
    x, y = node.input[0], node.output[0]
    a = attrs(node)
    size = a["size"]
    alpha, beta, bias = a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
    if not isinstance(ctx.shape(x)[1], int):
        raise UnsupportedOpError(f"LRN {node.name!r} has a symbolic channel count; pick a layer after it")
    before, after = (size - 1) // 2, size // 2
    s = ctx.op("Add", _channel_window_sum(ctx, ctx.op("Mul", x, x), x, before, after, alpha / size),
               ctx.scalar(bias, like=x))
    direct = ctx.op("Mul", dy, ctx.op("Pow", s, ctx.scalar(-beta, like=x)))
    spread = _channel_window_sum(ctx, ctx.op("Div", ctx.op("Mul", dy, y), s), x, after, before, alpha / size)
    through_s = ctx.op("Mul", ctx.op("Mul", x, spread), ctx.scalar(2 * beta, like=x))
    return ctx.op("Sub", direct, through_s)
