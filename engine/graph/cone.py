"""Which layer explains an output: the default Grad-CAM layer chosen from the output's cone.

>>> default_layer(model.proto.graph.node, [("/layer3/relu_1/Relu_output_0", ("N", 96, 8, 8))], "logits", (64, 64))
'/layer3/relu_1/Relu_output_0'
"""
from engine.graph.nodes import attrs, upstream

LINEAR = ("Conv", "ConvTranspose", "Gemm", "MatMul")
RECURRENT = ("LSTM", "GRU", "RNN")


def default_layer(nodes, layers, output, size, layout="NCHW"):
    """Among ``layers`` ((name, shape) of 4-D tensors, in graph order), the last that every branch
    ending in ``output`` (a name, or several: a detector's per-stride outputs, the explained one
    first, alone when the strides share no layer) comes from, or None.

    Considered: layers in an output's cone, not an output itself, before its last
    Conv/Gemm/MatMul (not a head's score map), not after an LSTM/GRU/RNN or a Transpose that moves
    the batch off axis 0 (a CRNN's W×N×C×H frames), with spatial size > 1 and an image-like
    aspect for an input of ``size`` (H, W) (a DFL or reshaped head is not one). Each branch's
    nearest such layer is found walking back from the outputs; the answer is the last layer all of
    them come from (the neck a detector's strides share, e.g. YOLOv8's stride-8 neck; the last
    conv stage of a classifier).
    """
    outputs = [output] if isinstance(output, str) else list(output)
    cone = set.union(*(upstream(nodes, o) & _before_linear(nodes, o) for o in outputs)) - _after_sequence(nodes)
    candidates = [name for name, shape in layers
                  if name in cone and name not in outputs and image_like(shape, size, layout)]
    if not candidates:
        return None
    ends = [end for o in outputs for end in _nearest(nodes, o, set(candidates))]
    shared = set.intersection(*(upstream(nodes, e) for e in ends))
    if len(outputs) > 1 and not any(c in shared for c in candidates):
        return default_layer(nodes, layers, outputs[0], size, layout)
    return ([c for c in candidates if c in shared] or candidates)[-1]


def strides_of(outputs, output):
    """``output``, then the graph outputs that are its other strides: per-stride N×A×C heads
    (PicoDet, undecoded YOLO heads) declared rank 3 with the same static C (not 4: boxes).
    ``outputs``: (name, declared shape) of the graph outputs; any other ``output`` stands alone.

    >>> strides_of([("s8", (1, 7600, 10)), ("s16", (1, 1900, 10)), ("d8", (1, 7600, 32))], "s8")
    ['s8', 's16']
    """
    shapes = dict(outputs)
    shape = shapes.get(output)
    if shape is None or len(shape) != 3 or not isinstance(shape[2], int) or shape[2] == 4:
        return [output]
    return [output, *(name for name, other in outputs if name != output and len(other) == 3 and other[2] == shape[2])]


def image_like(shape, size, layout="NCHW"):
    """True for a 4-D shape with spatial size > 1 whose H and W (NCHW, or NHWC too for NHWC
    models) are the input's ``size`` divided by about one stride (within 1.5×), or one of them 1
    (a recognizer's collapsed height); unknown sizes count as image-like.

    >>> image_like(("N", 1, 4, 8400), (640, 640))               # a DFL tensor
    False
    """
    if shape[2] == shape[3] == 1 or shape[1] == shape[2] == 1:
        return False
    if None in size or not all(isinstance(d, int) for d in shape[1:]):
        return True
    grids = [shape[2:4], *([shape[1:3]] if layout == "NHWC" else [])]
    ratios = [(size[0] / h, size[1] / w) for h, w in grids if h > 1 or w > 1]
    return any(1 in grid for grid in grids) or any(max(r) <= 1.5 * min(r) for r in ratios)


def _nearest(nodes, output, layers):
    """The ``layers`` that reach ``output`` along some path through no other of ``layers``: the
    last layer of each branch (each detector stride's head) that ``output`` is made from."""
    producer = {name: node for node in nodes for name in node.output}
    ends, seen, stack = [], set(), [output]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in layers and name != output:
            ends.append(name)
        elif name in producer:
            stack.extend(producer[name].input)
    return ends


def _before_linear(nodes, output):
    """Tensors that reach ``output`` through at least one Conv, ConvTranspose, Gemm or MatMul."""
    feeds, before = {output}, set()
    for node in reversed(nodes):
        if not any(o in feeds for o in node.output):
            continue
        feeds.update(node.input)
        if node.op_type in LINEAR or any(o in before for o in node.output):
            before.update(node.input)
    return before


def _after_sequence(nodes):
    """Tensors computed from the output of an LSTM, GRU or RNN node, or of a Transpose whose
    ``perm`` moves axis 0 (the batch): sequence frames, 4-D maybe, but not image maps."""
    after = set()
    for node in nodes:
        if node.op_type in RECURRENT or _moves_batch(node) or any(i in after for i in node.input):
            after.update(node.output)
    return after


def _moves_batch(node):
    """True for a Transpose whose perm (reversed axes when absent) does not keep axis 0 first."""
    if node.op_type != "Transpose":
        return False
    perm = attrs(node).get("perm")
    return perm is None or perm[0] != 0
