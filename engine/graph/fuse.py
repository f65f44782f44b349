"""Fold inference BatchNormalization into the Conv before it (pure ONNX → ONNX).

ONNX Runtime fuses Conv + BatchNormalization in the forward pass by itself, but a differentiated
model also runs the BatchNormalization's backward (a per-channel Mul on the largest tensors).
Folding the normalization into the Conv's weights and bias first removes that work.
"""
import numpy as np
import onnx
from onnx import numpy_helper


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` where each Conv → BatchNormalization pair with constant
    parameters is one Conv. Pairs whose Conv output is a graph output or read elsewhere stay.

    Example:
        >>> [n.op_type for n in fold_batchnorm(model).graph.node][:2]  # doctest: +SKIP
        ['Conv', 'Relu']
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    weights = {t.name: t for t in graph.initializer}
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    producers = {o: node for node in graph.node for o in node.output}
    outputs = {o.name for o in graph.output}
    folded, replaced = set(), set()
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or len(bn.output) != 1:
            continue
        conv = producers.get(bn.input[0])
        params = [*bn.input[1:], *conv.input[1:]] if conv is not None else []
        if (conv is None or conv.op_type != "Conv" or readers[bn.input[0]] != 1 or bn.input[0] in outputs
                or not all(name in weights for name in params if name)):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(weights[name]).astype(np.float64) for name in bn.input[1:])
        epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + epsilon)
        kernel = numpy_helper.to_array(weights[conv.input[1]])
        bias = numpy_helper.to_array(weights[conv.input[2]]) if len(conv.input) > 2 and conv.input[2] else 0.0
        shape = (-1,) + (1,) * (kernel.ndim - 1)
        names = [_fresh(weights, bn.output[0] + suffix) for suffix in ("__folded_w", "__folded_b")]
        for name, value in zip(names, (kernel * scale.reshape(shape), (bias - mean) * scale + beta)):
            tensor = numpy_helper.from_array(np.asarray(value, dtype=kernel.dtype), name)
            graph.initializer.append(tensor)
            weights[name] = tensor
        replaced.update([*params, conv.output[0]])
        conv_inputs = [conv.input[0], *names]
        del conv.input[:]
        conv.input.extend(conv_inputs)
        conv.output[0] = bn.output[0]
        folded.add(id(bn))
    kept = [node for node in graph.node if id(node) not in folded]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input} | {i.name for i in graph.input}
    stale = replaced - used
    for field in (graph.initializer, graph.value_info):
        kept = [item for item in field if item.name not in stale]
        del field[:]
        field.extend(kept)
    return out


def _fresh(taken, name):
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}{i}", i + 1
    return candidate
