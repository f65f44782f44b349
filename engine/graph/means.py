"""Spatial means run as GlobalAveragePool: a ReduceMean over H and W of an N×C×H×W float tensor
(a squeeze-excitation's ``x.mean((2, 3), keepdim=True)``, a head's pooling as the dynamo exporter
and timm write them) becomes a GlobalAveragePool (and a Flatten where the reduced axes are
dropped). ONNX Runtime's CPU provider runs GlobalAveragePool in its blocked NCHWc layout, where a
ReduceMean first sends the whole H×W tensor back to NCHW, and the reduced one forward again.
The values are the same mean; the node and output names are kept.

Measured (ORT 1.32, 1 thread, the whole input gradient at batch 1, alternating sessions, wild
corpus): lcnet_dynamo 0.96× (two squeeze-excitations and its head), mnasnet_unnamed 0.99× (its
head, keepdims 0), shufflenet_legacy and squeezenet_nc11 1.00× (heads over 2×2 and 3×3 positions).
"""
import onnx
from onnx import helper

from engine.graph.editing import unique_name
from engine.graph.nodes import attrs
from engine.graph.shapes import constant_tensors, declared_shapes

FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def means_as_pools(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace, in place, each ReduceMean over exactly axes 2 and 3 of a 4-D float tensor by a
    GlobalAveragePool (followed by a Flatten when keepdims is 0); returns ``model``.

    Example: ReduceMean(x: N×C×7×7, axes=[-1, -2], keepdims=1) → GlobalAveragePool(x)."""
    graph = model.graph
    shapes = declared_shapes(model)
    types = {info.name: info.type.tensor_type.elem_type for info in (*graph.input, *graph.value_info, *graph.output)}
    constants = constant_tensors(graph)
    taken = {n for node in graph.node for n in (node.name, *node.output)} | {i.name for i in graph.input} | set(constants)
    nodes = []
    for node in graph.node:
        x = node.input[0] if node.input else ""
        if (node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx") or len(shapes.get(x) or []) != 4
                or types.get(x) not in FLOATS or _axes(node, constants) != [2, 3]):
            nodes.append(node)
            continue
        if attrs(node).get("keepdims", 1):
            nodes.append(helper.make_node("GlobalAveragePool", [x], list(node.output), name=node.name))
        else:
            pooled = unique_name(node.output[0] + "_pooled", taken)
            flat = unique_name(node.name + "_flat", taken)
            taken.update((pooled, flat))
            nodes += [helper.make_node("GlobalAveragePool", [x], [pooled], name=node.name),
                      helper.make_node("Flatten", [pooled], list(node.output), name=flat, axis=1)]
            graph.value_info.append(helper.make_tensor_value_info(pooled, types[x], [*shapes[x][:2], 1, 1]))
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _axes(node, constants):
    """The ReduceMean's reduced axes of a 4-D input, non-negative and sorted; None when they are
    computed at run time."""
    axes = attrs(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        tensor = constants.get(node.input[1])
        if tensor is None:
            return None
        axes = onnx.numpy_helper.to_array(tensor).tolist()
    if not axes:
        return None
    return sorted(int(a) % 4 for a in axes)
