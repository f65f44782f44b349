"""Small graph-editing helpers shared by the normalization passes and constant folding.

>>> m = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
>>> default_opset(m) == onnx.defs.onnx_opset_version(), unique_name("x", {"x", "x_1"})
(True, 'x_2')
"""
import itertools

import onnx

DEFAULT_DOMAINS = ("", "ai.onnx")  # the two spellings of the standard ONNX domain


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset of the standard domain (1 when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 1)


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy of ``model``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def unique_name(name: str, taken) -> str:
    """``name``, or ``name_1``, ``name_2`` ... : the first one not in ``taken``."""
    candidates = itertools.chain([name], (f"{name}_{i}" for i in itertools.count(1)))
    return next(c for c in candidates if c not in taken)


def subgraph_reads(node: onnx.NodeProto) -> set:
    """Names a node's sub-graphs (If/Loop/Scan bodies) read, outer-scope ones included."""
    names = set()
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
            for inner in sub.node:
                names.update(inner.input)
                names |= subgraph_reads(inner)
    return names


def prune(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop, in place, the nodes and initializers that no graph output depends on; returns ``model``."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    for index in reversed(range(len(graph.node))):
        node = graph.node[index]
        if any(o in needed for o in node.output):
            needed.update(i for i in node.input if i)
            needed |= subgraph_reads(node)
        else:
            del graph.node[index]
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name not in needed:
            del graph.initializer[index]
    return model
