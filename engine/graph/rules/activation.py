"""Rules for pointwise activations and softmax. The ReLU family (Relu, LeakyRelu, PRelu)
follows ``ctx.mode`` (guided backprop, deconvnet); the others are the same in every mode."""
import numpy as np
import onnx

from engine.graph.editing import DEFAULT_DOMAINS
from engine.graph.rules import attrs, derivative, rule
from engine.graph.rules.pool import pools_a_relu
from engine.graph.rules.shape import concatenates_relus


@rule("Relu")
def relu(ctx, node, dy):
    """The mask reads the Relu's output (y > 0 iff x > 0) so that ORT can still fuse the
    producer of x with the Relu in the forward pass. A MaxPool that alone reads y has applied
    the mask already, at its own resolution (:func:`pools_a_relu`), and so has a Concat of ReLU
    outputs only (:func:`concatenates_relus`)."""
    y = node.output[0]
    reader = ctx.private_reader(y)
    if reader is not None and (reader.op_type == "MaxPool" and pools_a_relu(ctx, reader)
                               or reader.op_type == "Concat" and concatenates_relus(ctx, reader)):
        return dy
    return ctx.relu_family(y, dy, lambda: ctx.where_positive(y, dy))


@rule("LeakyRelu")
def leaky_relu(ctx, node, dy):
    x = node.input[0]
    alpha = attrs(node).get("alpha", 0.01)

    def standard():
        # slope = alpha + (1 − alpha)·[x > 0]
        positive = ctx.op("Cast", ctx.op("Greater", x, ctx.scalar(0, like=x)), to=ctx.elem_type(x))
        slope = ctx.op("Add", ctx.op("Mul", positive, ctx.scalar(1 - alpha, like=x)), ctx.scalar(alpha, like=x))
        return ctx.op("Mul", dy, slope)

    return ctx.relu_family(x, dy, standard)


@rule("PRelu")
def prelu(ctx, node, dy):
    x, slope = node.input

    def standard():
        # slope_x = slope + (1 − slope)·[x > 0]
        positive = ctx.op("Cast", ctx.op("Greater", x, ctx.scalar(0, like=x)), to=ctx.elem_type(x))
        one_minus = ctx.op("Sub", ctx.scalar(1, like=x), slope)
        return ctx.op("Mul", dy, ctx.op("Add", ctx.op("Mul", positive, one_minus), slope))

    return ctx.relu_family(x, dy, standard)


@rule("Clip", since=11)
def clip(ctx, node, dy, bounds=None):
    """Gradient passes where min <= x <= max (optional inputs ``bounds``: names, "" when absent):
    from opset 11 on, where the output equals the input (Equal compares floats from then on;
    three ops instead of six)."""
    x = node.input[0]
    bounds = node.input[1:3] if bounds is None else bounds
    if not any(bounds):
        return dy
    inside = ctx.op("Equal", x, node.output[0]) if ctx.opset >= 11 else ctx.between(x, *bounds)
    return ctx.mask(dy, inside, like=x)


@rule("Clip", since=1)
def clip_1(ctx, node, dy):
    """Before opset 11 the bounds are attributes (default: none)."""
    a = attrs(node)
    return clip(ctx, node, dy, [ctx.scalar(a[k], like=node.input[0]) if k in a else "" for k in ("min", "max")])


@derivative("Sigmoid")
def sigmoid(x, y):
    return y * (1 - y)


@derivative("Tanh")
def tanh(x, y):
    return 1 - y * y


@rule("HardSigmoid")
def hard_sigmoid(ctx, node, dy):
    """y = max(0, min(1, alpha x + beta)): slope alpha where 0 < alpha x + beta < 1, i.e. where
    0 < y < 1 (read from the output: two ops fewer, which counts on small models). For image
    tensors the slope is alpha·[y > 0] − alpha·[y = 1] from two clipped depthwise Convs
    (exact steps: 2¹²⁶·y, and 2^k·(2²⁴·(1 − y) − 1), which is −2^k at y = 1 and >= 0 below it),
    a squeeze-excitation's per-channel gate (N, C, 1, 1) included now that its gradient arrives in
    that layout (:meth:`~engine.graph.rules.context.Context.spatial_sum`: 0.4–3.8 % faster on
    six such models). Elsewhere: dy times :func:`_inside_unit_interval`, then alpha, where a
    Conv rule before folds it into its weight."""
    y = node.output[0]
    alpha = attrs(node).get("alpha", 0.2)
    k = 2.0 ** max(0, int(np.ceil(np.log2(alpha)))) if alpha > 0 else 1.0
    above = ctx.clipped_affine(y, 2.0 ** 126, 0.0, min(0.0, alpha), max(0.0, alpha))
    if above is not None:
        top = ctx.clipped_affine(y, -k * 2.0 ** 24, k * (2.0 ** 24 - 1), min(0.0, -alpha), max(0.0, -alpha))
        return ctx.op("Mul", dy, ctx.op("Sum", above, top))
    return ctx.op("Mul", ctx.op("Mul", dy, _inside_unit_interval(ctx, y, y)), ctx.scalar(alpha, like=y))


def _inside_unit_interval(ctx, y, like):
    """[0 < y < 1] for y in [0, 1] (a HardSigmoid's output), in the float type of forward tensor
    ``like``: for float32 one HardSigmoid step of y·(1 − y) (the ReLU mask's step, exact outside
    the float32 subnormals), three ops instead of four."""
    if ctx.elem_type(like) != onnx.TensorProto.FLOAT:
        zero, one = ctx.scalar(0, like=like), ctx.scalar(1, like=like)
        return ctx.op("Cast", ctx.op("And", ctx.op("Greater", y, zero), ctx.op("Less", y, one)), to=ctx.elem_type(like))
    spread = ctx.op("Mul", y, ctx.op("Sub", ctx.scalar(1, like=like), y))
    return ctx.op("HardSigmoid", spread, alpha=1 / float(np.finfo(np.float32).tiny), beta=0.0)


@rule("HardSwish")
def hard_swish(ctx, node, dy):
    """y = x · h with h = HardSigmoid(x; 1/6, 1/2). The forward node becomes those two ops (as ORT
    CPU runs it anyway once the backward reads x) so that the backward reuses h."""
    x, y = node.input[0], node.output[0]
    h = ctx.fresh(ctx.node_name + "_gate")
    ctx.replace_forward(node, [
        onnx.helper.make_node("HardSigmoid", [x], [h], name=ctx.fresh(ctx.node_name), alpha=1 / 6, beta=0.5),
        onnx.helper.make_node("Mul", [x, h], [y], name=node.name or ctx.fresh(ctx.node_name))])
    return _hard_swish_dx(ctx, x, dy, h, readers=1)


def _hard_swish_dx(ctx, x, dy, h, readers):
    """The gradient of x · h for input ``x``, ``h`` = HardSigmoid(x; 1/6, 1/2) (a forward tensor;
    ``readers``: the forward nodes reading x, the gate's included):
    slope h + x/6 where 0 < h < 1 (i.e. (2x + 3)/6 for -3 <= x <= 3), else h (0 below -3, 1
    above 3). For image tensors: 2·(h − [x >= −3]/4 − [x > 3]/4), the steps from two clipped
    depthwise Convs (exact: from 2²⁰·(x ± 3), with x's float spacing 2⁻²² next to ±3) that ORT
    keeps in its NCHWc layout, and the factor 2 folded into the weight before where there is one.
    At ±3 the slope is torch's: −1/2 and 3/2."""
    if ctx.blocked_layout(x):
        from_minus_3 = ctx.clipped_affine(x, -2.0 ** 20, -3 * 2.0 ** 20 - 0.25, -0.25, 0.0)
        above_3 = ctx.clipped_affine(x, -2.0 ** 20, 3 * 2.0 ** 20, -0.25, 0.0)
        return ctx.folded_scale(ctx.op("Mul", dy, ctx.op("Sum", h, from_minus_3, above_3)), 2.0, x, readers)
    inside = _inside_unit_interval(ctx, h, x)
    slope = ctx.op("Add", h, ctx.op("Mul", ctx.op("Mul", x, inside), ctx.scalar(1 / 6, like=x)))
    return ctx.op("Mul", dy, slope)


def _primitive_hard_swish_dx(ctx, x, relu6, dy, scale):
    """``scale``/6 × the gradient of x · relu6 for input ``x``, relu6 = Clip(x + 3, 0, 6): the
    slope times 6 is relu6 + x·[0 <= x + 3 <= 6], the interval read from the Clip as in its rule.
    Elementwise where the forward stays so (not divided by 6 after, or outside ORT's NCHWc layout):
    the HardSwish rule's clipped Convs made the whole gradient of four PaddleOCR models 5–11 %
    slower than this while their forward ran elementwise (:func:`_as_hard_sigmoid_gate`)."""
    shifted = ctx.private_producer(relu6).input[0]
    inside = ctx.op("Equal", shifted, relu6) if ctx.opset >= 11 else ctx.between(
        shifted, ctx.scalar(0, like=x), ctx.scalar(6, like=x))
    slope = ctx.op("Add", relu6, ctx.mask(x, inside, like=x))
    if scale != 6:
        slope = ctx.op("Mul", slope, ctx.scalar(scale / 6, like=x))
    return ctx.op("Mul", dy, slope)


def _relu6_of_shift(ctx, gate, x):
    """Whether tensor ``gate`` is Clip(x + 3, 0, 6), each step read only by the next (the gate of
    a HardSwish written as primitives, x · relu6(x + 3) / 6, as paddle2onnx and older exporters
    write it)."""
    clip = ctx.private_producer(gate)
    if clip is None or clip.op_type != "Clip" or clip.domain not in DEFAULT_DOMAINS:
        return False
    if ctx.opset < 11:
        bounds = attrs(clip).get("min") == 0 and attrs(clip).get("max") == 6
    else:
        bounds = len(clip.input) == 3 and ctx.is_scalar(clip.input[1], 0.0) and ctx.is_scalar(clip.input[2], 6.0)
    add = ctx.private_producer(clip.input[0])
    return (bounds and add is not None and add.op_type == "Add" and len(add.input) == 2 and x in add.input
            and ctx.is_scalar(add.input[1 - list(add.input).index(x)], 3.0))


def divides_a_hard_swish(ctx, node):
    """Whether the Div ``node`` is m / 6 with m = x · Clip(x + 3, 0, 6) read by it alone: the
    Mul's rule then gives x the whole HardSwish gradient of the Div's output, and m gets the
    Div's gradient unscaled."""
    mul = ctx.private_producer(node.input[0])
    return (mul is not None and mul.op_type == "Mul" and ctx.is_scalar(node.input[1], 6.0)
            and _primitive_hard_swish_input(ctx, mul) is not None)


def _primitive_hard_swish_input(ctx, mul):
    """The index of x when the Mul ``mul`` is x · Clip(x + 3, 0, 6), else None."""
    for i in (0, 1):
        if _relu6_of_shift(ctx, mul.input[1 - i], mul.input[i]):
            return i
    return None


def self_gated(ctx, node):
    """``(i, backward)`` when the Mul ``node`` is x · f(x), with f a Sigmoid (Swish/SiLU), a
    HardSigmoid(x/6 + 1/2) or a Clip(x + 3, 0, 6) (HardSwish, times 6 unless a Div by 6 follows
    alone) whose output only this Mul reads: input ``i`` is x and ``backward(dy)`` its whole
    gradient, in fewer ops than through the Mul and f apart; else None.
    Swish: dx = dy · (s + y·(1 − s)) with s = sigmoid(x), y = x·s.

    >>> from engine.graph.rules import Context
    >>> mul = onnx.helper.make_node("Mul", ["x", "s"], ["y"])
    >>> gate = onnx.helper.make_node("Sigmoid", ["x"], ["s"])
    >>> ctx = Context(opset=17, mode="standard", shapes={}, types={}, constants={}, used_names=set(), forward=[gate, mul])
    >>> self_gated(ctx, mul)[0]
    0
    """
    for i, gate_name in ((0, node.input[1]), (1, node.input[0])):
        gate = ctx.private_producer(gate_name)
        if gate is None or gate.domain not in DEFAULT_DOMAINS or list(gate.input) != [node.input[i]]:
            continue
        x, y = node.input[i], node.output[0]
        if gate.op_type == "Sigmoid":
            return i, lambda dy: ctx.op("Mul", dy, ctx.op("Add", gate_name, ctx.op(
                "Mul", y, ctx.one_minus(gate_name, like=x))))
        a = attrs(gate)
        if gate.op_type == "HardSigmoid" and np.isclose(a.get("alpha", 0.2), 1 / 6) and a.get("beta", 0.5) == 0.5:
            return i, lambda dy: _hard_swish_dx(ctx, x, dy, gate_name, readers=2)
    i = _primitive_hard_swish_input(ctx, node)
    if i is None:
        return None
    x, relu6, reader = node.input[i], node.input[1 - i], ctx.private_reader(node.output[0])
    divided = reader is not None and reader.op_type == "Div" and divides_a_hard_swish(ctx, reader)
    if divided and ctx.blocked_layout(x) and ctx.from_convs(x):
        return i, lambda dy: _hard_swish_dx(ctx, x, dy, _as_hard_sigmoid_gate(ctx, x, relu6, node, reader), readers=2)
    return i, lambda dy: _primitive_hard_swish_dx(ctx, x, relu6, dy, 1.0 if divided else 6.0)


def _as_hard_sigmoid_gate(ctx, x, relu6, mul, div):
    """The forward HardSwish x · Clip(x + 3, 0, 6) / 6 (nodes Add, Clip, ``mul``, ``div``) rewritten
    as x · h, h = HardSigmoid(x; 1/6, 1/2) (equal up to rounding), which ORT CPU runs in its NCHWc
    layout with the HardSwish rule's backward; returns h. For an x that Convs make, which is in that
    layout: the Add, Clip, Mul and Div sent it to NCHW and back. Measured (input gradient, batch 1,
    alternating sessions): PaddleOCR's layout_cdla 0.86–0.88×, ppocr_cls_mobile_v2 0.90–0.96×,
    PP-OCRv4's detector 0.96× and recognizer 0.99× (their x from Convs once their learnable affine
    layers fold into them: :func:`~engine.graph.blocked_forward.affine_into_convs`; with x from
    those elementwise layers, 1.02×: not rewritten)."""
    clip = ctx.private_producer(relu6)
    h = ctx.fresh(ctx.node_name + "_gate")
    for node in (ctx.private_producer(clip.input[0]), clip, mul):
        ctx.replace_forward(node, [])
    ctx.replace_forward(div, [
        onnx.helper.make_node("HardSigmoid", [x], [h], name=ctx.fresh(ctx.node_name), alpha=1 / 6, beta=0.5),
        onnx.helper.make_node("Mul", [x, h], list(div.output), name=div.name or ctx.fresh(ctx.node_name))])
    return h


@rule("Softmax", since=13)
def softmax(ctx, node, dy, axes=None):
    """dx = y · (dy − Σ dy·y) over ``axis`` (``axes`` when given: the older semantics)."""
    y = node.output[0]
    axes = axes or [attrs(node).get("axis", -1) % ctx.rank(y)]
    dot = ctx.reduce_sum(ctx.op("Mul", dy, y), axes)
    return ctx.op("Mul", y, ctx.op("Sub", dy, dot))


@rule("LogSoftmax", since=13)
def log_softmax(ctx, node, dy, axes=None):
    """dx = dy − exp(y) · Σ dy over ``axis`` (``axes`` when given: the older semantics)."""
    y = node.output[0]
    axes = axes or [attrs(node).get("axis", -1) % ctx.rank(y)]
    total = ctx.reduce_sum(dy, axes)
    return ctx.op("Sub", dy, ctx.op("Mul", ctx.op("Exp", y), total))


def _trailing_axes(ctx, node):
    """Axes a softmax before opset 13 normalizes over: all from ``axis`` (default 1) on."""
    rank = ctx.rank(node.input[0])
    return list(range(attrs(node).get("axis", 1) % rank, rank))


@rule("Softmax", since=1)
def softmax_1(ctx, node, dy):
    """Before opset 13: over the input flattened to 2-D at ``axis``."""
    return softmax(ctx, node, dy, _trailing_axes(ctx, node))


@rule("LogSoftmax", since=1)
def log_softmax_1(ctx, node, dy):
    """Before opset 13: over the input flattened to 2-D at ``axis``."""
    return log_softmax(ctx, node, dy, _trailing_axes(ctx, node))
