"""Rules for smooth pointwise functions: Elu, Selu, Softplus, Mish, Erf, Gelu, Exp, Log, Sqrt,
Pow, Reciprocal, Abs, Neg. They are the same in every backward mode."""
import math

import numpy as np

from engine.graph.rules import attrs, rule


def _times(ctx, dy, slope):
    return [ctx.op("Mul", dy, slope)]


@rule("Elu")
def elu(ctx, node, grads):
    """Slope 1 for x > 0, else alpha·exp(x) = y + alpha."""
    x, y = node.input[0], node.output[0]
    alpha = attrs(node).get("alpha", 1.0)
    slope = ctx.op("Where", ctx.op("Greater", x, ctx.scalar(0, like=x)), ctx.scalar(1, like=x),
                   ctx.op("Add", y, ctx.scalar(alpha, like=x)))
    return _times(ctx, grads[0], slope)


@rule("Selu")
def selu(ctx, node, grads):
    """Slope gamma for x > 0, else gamma·alpha·exp(x) = y + gamma·alpha."""
    x, y = node.input[0], node.output[0]
    a = attrs(node)
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    slope = ctx.op("Where", ctx.op("Greater", x, ctx.scalar(0, like=x)), ctx.scalar(gamma, like=x),
                   ctx.op("Add", y, ctx.scalar(gamma * alpha, like=x)))
    return _times(ctx, grads[0], slope)


@rule("Softplus")
def softplus(ctx, node, grads):
    """d log(1 + eˣ) = sigmoid(x)."""
    return _times(ctx, grads[0], ctx.op("Sigmoid", node.input[0]))


@rule("Mish")
def mish(ctx, node, grads):
    """y = x·tanh(softplus(x)): slope t + x·(1 − t²)·sigmoid(x) with t = tanh(softplus(x))."""
    x = node.input[0]
    t = ctx.op("Tanh", ctx.op("Softplus", x))
    sech2 = ctx.op("Sub", ctx.scalar(1, like=x), ctx.op("Mul", t, t))
    slope = ctx.op("Add", t, ctx.op("Mul", ctx.op("Mul", x, sech2), ctx.op("Sigmoid", x)))
    return _times(ctx, grads[0], slope)


def _gaussian(ctx, x, scale):
    """scale · exp(−x²/2) (a multiple of the standard normal density)."""
    square = ctx.op("Mul", x, x)
    return ctx.op("Mul", ctx.op("Exp", ctx.op("Mul", square, ctx.scalar(-0.5, like=x))), ctx.scalar(scale, like=x))


@rule("Erf")
def erf(ctx, node, grads):
    """d erf(x) = 2/√π · exp(−x²)."""
    x = node.input[0]
    slope = ctx.op("Mul", ctx.op("Exp", ctx.op("Neg", ctx.op("Mul", x, x))), ctx.scalar(2 / math.sqrt(math.pi), like=x))
    return _times(ctx, grads[0], slope)


@rule("Gelu")
def gelu(ctx, node, grads):
    """approximate="none": slope Φ(x) + x·φ(x). approximate="tanh": y = x/2·(1 + tanh(u)) with
    u = √(2/π)(x + 0.044715x³): slope (1 + t)/2 + x/2·(1 − t²)·√(2/π)(1 + 3·0.044715x²)."""
    x = node.input[0]
    one, half = ctx.scalar(1, like=x), ctx.scalar(0.5, like=x)
    if attrs(node).get("approximate", "none") == "tanh":
        c, k = math.sqrt(2 / math.pi), 0.044715
        square = ctx.op("Mul", x, x)
        inner = ctx.op("Add", one, ctx.op("Mul", square, ctx.scalar(k, like=x)))
        t = ctx.op("Tanh", ctx.op("Mul", ctx.op("Mul", x, inner), ctx.scalar(c, like=x)))
        du = ctx.op("Add", one, ctx.op("Mul", square, ctx.scalar(3 * k, like=x)))
        sech2 = ctx.op("Sub", one, ctx.op("Mul", t, t))
        tail = ctx.op("Mul", ctx.op("Mul", x, sech2), ctx.op("Mul", du, ctx.scalar(c / 2, like=x)))
        slope = ctx.op("Add", ctx.op("Mul", ctx.op("Add", one, t), half), tail)
    else:
        cdf = ctx.op("Mul", ctx.op("Add", one, ctx.op("Erf", ctx.op("Mul", x, ctx.scalar(1 / math.sqrt(2), like=x)))),
                     half)
        slope = ctx.op("Add", cdf, ctx.op("Mul", x, _gaussian(ctx, x, 1 / math.sqrt(2 * math.pi))))
    return _times(ctx, grads[0], slope)


@rule("Exp")
def exp(ctx, node, grads):
    return _times(ctx, grads[0], node.output[0])


@rule("Log")
def log(ctx, node, grads):
    return [ctx.op("Div", grads[0], node.input[0])]


@rule("Sqrt")
def sqrt(ctx, node, grads):
    """dx = dy / (2y)."""
    y = node.output[0]
    return [ctx.op("Div", ctx.op("Mul", grads[0], ctx.scalar(0.5, like=y)), y)]


@rule("Reciprocal")
def reciprocal(ctx, node, grads):
    """dx = −dy·y²."""
    y = node.output[0]
    return [ctx.op("Neg", ctx.op("Mul", grads[0], ctx.op("Mul", y, y)))]


@rule("Neg")
def neg(ctx, node, grads):
    return [ctx.op("Neg", grads[0])]


@rule("Abs")
def abs_(ctx, node, grads):
    return _times(ctx, grads[0], ctx.op("Sign", node.input[0]))


@rule("Pow")
def pow_(ctx, node, grads):
    """y = aᵇ: da = dy·b·aᵇ⁻¹ (a constant exponent is folded in); db = dy·y·log(a) where a > 0,
    else 0 (a computed exponent only). Broadcast operands are summed back."""
    (dy,) = grads
    a, b = node.input
    y = node.output[0]
    da = db = None
    if ctx.needs(a):
        exponent = ctx.value(b)
        if exponent is not None:
            exponent = exponent.astype(np.float64)
            if np.all(exponent == 1):
                slope = None
            elif np.all(exponent == 2):
                slope = ctx.op("Mul", a, ctx.scalar(2, like=a))
            else:
                power = ctx.op("Pow", a, ctx.const((exponent - 1).astype(ctx.dtype(a)), "pow_exponent"))
                slope = ctx.op("Mul", power, ctx.const(exponent.astype(ctx.dtype(a)), "pow_factor"))
        else:
            bf = b if ctx.elem_type(b) == ctx.elem_type(a) else ctx.op("Cast", b, to=ctx.elem_type(a))
            slope = ctx.op("Mul", ctx.op("Pow", a, ctx.op("Sub", bf, ctx.scalar(1, like=a))), bf)
        da = ctx.unbroadcast(dy if slope is None else ctx.op("Mul", dy, slope), a, y)
    if ctx.needs(b):
        positive = ctx.op("Greater", a, ctx.scalar(0, like=a))
        log_a = ctx.op("Log", ctx.op("Where", positive, a, ctx.scalar(1, like=a)))
        db = ctx.unbroadcast(ctx.op("Mul", ctx.op("Mul", dy, y), log_a), b, y)
        if ctx.elem_type(b) != ctx.elem_type(a):
            db = ctx.op("Cast", db, to=ctx.elem_type(b))
    return [da, db]
