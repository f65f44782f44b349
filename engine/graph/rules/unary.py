"""Rules for smooth pointwise functions: Elu, Selu, Softplus, Softsign, Mish, Erf, Gelu, Exp,
Log, Sqrt, Pow, Reciprocal, Abs, Neg. They are the same in every backward mode."""
import math

import numpy as np

from engine.graph.rules import derivative, rule, where


@derivative("Elu")
def elu(x, y, alpha=1.0):
    """Slope 1 for x > 0, else alpha·exp(x) = y + alpha."""
    return where(x > 0, 1, y + alpha)


@derivative("Selu")
def selu(x, y, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    """Slope gamma for x > 0, else gamma·alpha·exp(x) = y + gamma·alpha."""
    return where(x > 0, gamma, y + gamma * alpha)


@derivative("Softplus")
def softplus(x, y):
    """d log(1 + eˣ) = sigmoid(x)."""
    return x.apply("Sigmoid")


@derivative("Softsign")
def softsign(x, y):
    """d x/(1 + |x|) = 1/(1 + |x|)² = (1 − |y|)²."""
    s = 1 - y.apply("Abs")
    return s * s


@derivative("Mish")
def mish(x, y):
    """y = x·tanh(softplus(x)): slope t + x·(1 − t²)·sigmoid(x) with t = tanh(softplus(x))."""
    t = x.apply("Softplus").apply("Tanh")
    return t + x * (1 - t * t) * x.apply("Sigmoid")


@derivative("Erf")
def erf(x, y):
    """d erf(x) = 2/√π · exp(−x²)."""
    return (-(x * x)).apply("Exp") * (2 / math.sqrt(math.pi))


@derivative("Gelu")
def gelu(x, y, approximate="none"):
    """approximate="none": slope Φ(x) + x·φ(x). approximate="tanh": y = x/2·(1 + tanh(u)) with
    u = √(2/π)(x + 0.044715x³): slope (1 + t)/2 + x/2·(1 − t²)·√(2/π)(1 + 3·0.044715x²)."""
    if approximate == "tanh":
        c, k = math.sqrt(2 / math.pi), 0.044715
        square = x * x
        t = (x * (1 + square * k) * c).apply("Tanh")
        du = 1 + square * (3 * k)
        return (1 + t) * 0.5 + x * (1 - t * t) * (du * (c / 2))
    cdf = (1 + (x * (1 / math.sqrt(2))).apply("Erf")) * 0.5
    return cdf + x * ((x * x * -0.5).apply("Exp") * (1 / math.sqrt(2 * math.pi)))


@derivative("Exp")
def exp(x, y):
    return y


@derivative("Abs")
def abs_(x, y):
    return x.apply("Sign")


@rule("Log")
def log(ctx, node, dy):
    """dx = dy / x (one Div: the derivative 1/x times dy would take two ops)."""
    return ctx.op("Div", dy, node.input[0])


@rule("Sqrt")
def sqrt(ctx, node, dy):
    """dx = dy / (2y)."""
    y = node.output[0]
    return ctx.op("Div", ctx.op("Mul", dy, ctx.scalar(0.5, like=y)), y)


@rule("Reciprocal")
def reciprocal(ctx, node, dy):
    """dx = −dy·y²."""
    y = node.output[0]
    return ctx.op("Neg", ctx.op("Mul", dy, ctx.op("Mul", y, y)))


@rule("Neg")
def neg(ctx, node, dy):
    return ctx.op("Neg", dy)


@rule("Pow")
def pow_base(ctx, node, dy):
    """y = aᵇ: da = dy·b·aᵇ⁻¹ (a constant exponent is folded in), summed back when broadcast."""
    a, b = node.input
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
    return ctx.unbroadcast(dy if slope is None else ctx.op("Mul", dy, slope), a, node.output[0])


@rule("Pow", wrt=1)
def pow_exponent(ctx, node, dy):
    """y = aᵇ (a computed exponent): db = dy·y·log(a) where a > 0, else 0, summed back when broadcast."""
    a, b = node.input
    y = node.output[0]
    positive = ctx.op("Greater", a, ctx.scalar(0, like=a))
    log_a = ctx.op("Log", ctx.op("Where", positive, a, ctx.scalar(1, like=a)))
    db = ctx.unbroadcast(ctx.op("Mul", ctx.op("Mul", dy, y), log_a), b, y)
    return db if ctx.elem_type(b) == ctx.elem_type(a) else ctx.op("Cast", db, to=ctx.elem_type(b))
