"""Rules for arithmetic with broadcasting, variadic ops, and gradient pass-through ops."""
import numpy as np

from engine.graph.rules import attrs, rule


@rule("Add")
def add(ctx, node, grads):
    (dy,) = grads
    y = node.output[0]
    return [ctx.unbroadcast(dy, x, y) if ctx.needs(x) else None for x in node.input]


@rule("Sub")
def sub(ctx, node, grads):
    (dy,) = grads
    a, b = node.input
    y = node.output[0]
    return [ctx.unbroadcast(dy, a, y) if ctx.needs(a) else None,
            ctx.unbroadcast(ctx.op("Neg", dy), b, y) if ctx.needs(b) else None]


@rule("Mul")
def mul(ctx, node, grads):
    (dy,) = grads
    a, b = node.input
    y = node.output[0]
    return [ctx.unbroadcast(ctx.op("Mul", dy, b), a, y) if ctx.needs(a) else None,
            ctx.unbroadcast(ctx.op("Mul", dy, a), b, y) if ctx.needs(b) else None]


@rule("Div")
def div(ctx, node, grads):
    (dy,) = grads
    a, b = node.input
    y = node.output[0]
    da = ctx.unbroadcast(ctx.op("Div", dy, b), a, y) if ctx.needs(a) else None
    db = None
    if ctx.needs(b):
        db = ctx.unbroadcast(ctx.op("Neg", ctx.op("Div", ctx.op("Mul", dy, y), b)), b, y)
    return [da, db]


@rule("Sum", "Mean")
def sum_mean(ctx, node, grads):
    (dy,) = grads
    y = node.output[0]
    if node.op_type == "Mean":
        dy = ctx.op("Mul", dy, ctx.scalar(1.0 / len(node.input), like=y))
    return [ctx.unbroadcast(dy, x, y) if ctx.needs(x) else None for x in node.input]


@rule("Max", "Min")
def max_min(ctx, node, grads):
    """The gradient goes to every input equal to the result (ties are measure-zero)."""
    (dy,) = grads
    y = node.output[0]
    out = []
    for x in node.input:
        if not ctx.needs(x):
            out.append(None)
            continue
        picked = ctx.mask(dy, ctx.op("Equal", x, y), like=y)
        out.append(ctx.unbroadcast(picked, x, y))
    return out


@rule("Identity", "Dropout", "DequantizeLinear")
def passthrough(ctx, node, grads):
    """Identity, inference Dropout, and DequantizeLinear (the second half of a straight-through
    QuantizeLinear → DequantizeLinear pair: the gradient stays in float units)."""
    return [grads[0]] + [None] * (len(node.input) - 1)


@rule("QuantizeLinear")
def quantize(ctx, node, grads):
    """Straight-through estimator: the gradient passes where x ≥ (qmin − zp)·scale, the low end of
    the representable range, and is 0 below it. The low end is where quantizers fuse a Relu (so
    its mask survives); the high end is only the calibration range, and clipping there (as
    torch's FakeQuantize does) would zero whole explanations whenever a score exceeds it."""
    (dy,) = grads
    x, scale = node.input[:2]
    zp_name = node.input[2] if len(node.input) > 2 else ""
    s = ctx.value(scale)
    zp = ctx.value(zp_name) if zp_name else np.zeros((), np.uint8)
    rest = [None] * (len(node.input) - 1)
    if s is None or zp is None or zp.dtype.kind not in "iu":
        return [dy] + rest
    info = np.iinfo(zp.dtype)
    low = (info.min - zp.astype(np.float64)) * s
    if s.ndim == 1:  # per-axis quantization
        rank = ctx.rank(x)
        axis = attrs(node).get("axis", 1) % rank
        low = low.reshape([-1 if i == axis else 1 for i in range(rank)])
    inside = ctx.between(x, low=ctx.const(low.astype(ctx.dtype(x)), "q_low"))
    return [ctx.mask(dy, inside, like=x)] + rest


@rule("DynamicQuantizeLinear")
def dynamic_quantize(ctx, node, grads):
    """Straight-through: the run-time scale and zero point count as constants (no gradient flows
    into the statistics of x). Its quantized output is recomputed by a QuantizeLinear with
    them (engine.graph.quantized), whose rule carries the gradient of x."""
    return [None]


@rule("Cast", "CastLike")
def cast(ctx, node, grads):
    """The gradient cast back to the input's type; through a round trip (float32 → float16 →
    float32: a rounding point, engine.graph.half) it passes unrounded, in the wider type."""
    (dy,) = grads
    to = ctx.elem_type(node.input[0])
    dx = ctx.uncast(dy, to) or ctx.cast(dy, to, source_type=ctx.elem_type(node.output[0]))
    return [dx] + [None] * (len(node.input) - 1)


@rule("Where")
def where(ctx, node, grads):
    (dy,) = grads
    condition, a, b = node.input
    y = node.output[0]
    da = ctx.unbroadcast(ctx.mask(dy, condition, like=y), a, y) if ctx.needs(a) else None
    db = ctx.unbroadcast(ctx.mask(dy, ctx.op("Not", condition), like=y), b, y) if ctx.needs(b) else None
    return [None, da, db]


@rule("Floor", "Ceil", "Round", "Sign")
def piecewise_constant(ctx, node, grads):
    """Zero almost everywhere: no gradient flows back."""
    return [None]
