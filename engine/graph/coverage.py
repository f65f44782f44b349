"""Which tensors gradients can reach: every op between a tensor and the output needs a rule."""
from engine.graph.autodiff import _depends, _feeds, _rule


def gradient_blockers(model, output, names):
    """For each tensor in ``names``: None when d(output)/d(tensor) can be built, else the first op
    without a rule on its way to ``output`` as ``"Op (node name)"``. Takes a normalized model.
    The path is the one :func:`~engine.graph.autodiff.differentiate` walks (its cone).

    Example:
        >>> gradient_blockers(model, "logits", ["conv1", "lrn1"])  # doctest: +SKIP
        {'conv1': 'LRN (node lrn1)', 'lrn1': None}
    """
    graph = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.input, *graph.value_info, *graph.output]}
    feeds = _feeds(graph.node, output)
    unruled = [node for node in graph.node if _rule(node) is None]
    result = {}
    for name in names:
        if name not in feeds:
            result[name] = f"nothing: {name} does not feed {output}"
            continue
        active = _depends(graph.node, [name], types) & feeds  # differentiate's cone
        blocker = next((node for node in unruled if any(o in active for o in node.output)
                        and any(i in active for i in node.input)), None)
        result[name] = blocker and f"{blocker.op_type} (node {blocker.name or blocker.output[0]})"
    return result
