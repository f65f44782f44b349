"""Which tensors gradients can reach: every op between a tensor and the output needs a rule."""
from engine.graph.autodiff import gradient_cone
from engine.graph.editing import default_opset
from engine.graph.nodes import upstream
from engine.graph.rules import rules_for


def gradient_blockers(model, output, names):
    """For each tensor in ``names``: None when d(output)/d(tensor) can be built, else the first op
    without a rule on its way to ``output`` as ``"Op (node name)"``. Takes a normalized model.
    The path is the one :func:`~engine.graph.autodiff.differentiate` walks (its cone).

    >>> gradient_blockers(model.proto, "logits", ["/Flatten_output_0"])
    {'/Flatten_output_0': None}
    """
    graph = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.input, *graph.value_info, *graph.output]}
    opset = default_opset(model)
    feeds = upstream(graph.node, output)
    unruled = [node for node in graph.node if not rules_for(node, opset)]
    result = {}
    for name in names:
        if name not in feeds:
            result[name] = f"nothing: {name} does not feed {output}"
            continue
        active = gradient_cone(graph.node, output, [name], types)
        blocker = next((node for node in unruled if any(o in active for o in node.output)
                        and any(i in active for i in node.input)), None)
        result[name] = blocker and f"{blocker.op_type} (node {blocker.name or blocker.output[0]})"
    return result
