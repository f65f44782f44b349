"""Rules for arithmetic with broadcasting, variadic ops, and gradient pass-through ops."""
from engine.graph.rules import rule


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
        picked = ctx.op("Where", ctx.op("Equal", x, y), dy, ctx.scalar(0, like=y))
        out.append(ctx.unbroadcast(picked, x, y))
    return out


@rule("Identity", "Dropout", "QuantizeLinear", "DequantizeLinear")
def passthrough(ctx, node, grads):
    """Identity, inference Dropout, and QuantizeLinear → DequantizeLinear as straight-through
    (the pair counts as identity: the gradient is passed on unchanged, in float)."""
    return [grads[0]] + [None] * (len(node.input) - 1)


@rule("Cast")
def cast(ctx, node, grads):
    (dy,) = grads
    return [ctx.op("Cast", dy, to=ctx.elem_type(node.input[0]))]
