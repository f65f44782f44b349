"""Which tensors gradients can reach: every op between a tensor and the output needs a rule."""
import onnx

from engine.graph.rules import RULES
from engine.graph.shapes import FLOAT_TYPES


def gradient_blockers(model, output, names):
    """For each tensor in ``names``: None when d(output)/d(tensor) can be built, else the first op
    without a rule on its way to ``output`` as ``"Op (node name)"``. Takes a normalized model.

    Example:
        >>> gradient_blockers(model, "logits", ["conv1", "lrn1"])  # doctest: +SKIP
        {'conv1': 'LRN (node lrn1)', 'lrn1': None}
    """
    graph = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.input, *graph.value_info, *graph.output]}
    feeds = {output}
    for node in reversed(graph.node):
        if any(o in feeds for o in node.output):
            feeds.update(node.input)
    result = {}
    for name in names:
        depends, blocker = {name}, None
        for node in graph.node:
            if not any(i in depends for i in node.input):
                continue
            carried = [o for o in node.output if o in feeds and (
                types.get(o, onnx.TensorProto.FLOAT) in FLOAT_TYPES or node.op_type == "QuantizeLinear")]
            if carried and (node.domain not in ("", "ai.onnx") or node.op_type not in RULES):
                blocker = f"{node.op_type} (node {node.name or node.output[0]})"
                break
            depends.update(carried)
        result[name] = blocker if name in feeds else f"nothing: {name} does not feed {output}"
    return result
