"""Float16 models computed in float32 with float16 rounding, so gradients never underflow.

A float16 model (onnxconverter-common's conversion with Casts at the edges, or a torch
``.half()`` export with a float16 input) is explained through :func:`widen_float16`: weights
become float32 (exactly), every op computes in float32, and every tensor that was float16 is
rounded to float16 and back right after the op that makes it (Cast → Cast). The activations are
thus those of the deployed float16 model — ONNX Runtime's CPU kernels mostly do the same
(float32 arithmetic between float16 tensors); see tests/test_float16.py for the measured
difference — while the backward graph is float32 throughout: the gradient of each rounding
round trip passes straight through, unrounded (the Cast rule undoes a Cast pair instead of
rounding the gradient to float16). Why not differentiate the float16 graph itself: gradients
of class scores routinely fall below float16's smallest normal number (6e-5), and a float32
copy of the model alone would not give the float16 activations.

Each op's float32 result keeps its tensor name (the layer: unrounded, within half a float16 step
of the deployed tensor) and its readers read ``<name>_rounded``; the model's float16 inputs and
outputs become float32 (an input is rounded to float16 first, an output carries the rounded value).
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.graph.shapes import infer
from engine.graph.nodes import attrs

HALF, SINGLE = TensorProto.FLOAT16, TensorProto.FLOAT


def widen_float16(model: onnx.ModelProto, inplace=False) -> onnx.ModelProto:
    """``model`` computing in float32 with each float16 tensor rounded to float16 where it is
    made (see the module docstring); a model without float16 tensors is returned as it is.

    >>> half = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>'
    ...     ' g (float16[N, 4] x) => (float16[N, 4] y) {h = Relu(x) y = Mul(h, h)}')
    >>> [vi.type.tensor_type.elem_type for vi in widen_float16(half).graph.input] == [onnx.TensorProto.FLOAT]
    True
    """
    out = model if inplace else copy.deepcopy(model)
    graph = out.graph
    halves = {name for name, info in infer(out).items() if info.elem_type == HALF}
    halves.update(t.name for t in graph.initializer if t.data_type == HALF)
    rounding = _rounding_points(graph)
    if not halves - rounding:
        return out
    used = {t for n in graph.node for t in [*n.input, *n.output, n.name]} | {t.name for t in graph.initializer}
    used |= {vi.name for vi in [*graph.input, *graph.output]}


    def fresh(hint):
        name, k = hint, 0
        while name in used:
            k += 1
            name = f"{hint}_{k}"
        used.add(name)
        return name

    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == HALF:
            graph.initializer[index].CopyFrom(_single(tensor))
    initializers = {t.name for t in graph.initializer}
    outputs = {vi.name for vi in graph.output}
    nodes = []
    rounded = {}  # float16 tensor → what its readers read now: its value rounded to float16
    for vi in graph.input:
        if vi.name in halves and vi.name not in initializers:
            vi.type.tensor_type.elem_type = SINGLE
            half, rounded[vi.name] = fresh(vi.name + "_half"), fresh(vi.name + "_rounded")
            nodes += [helper.make_node("Cast", [vi.name], [half], to=HALF, name=fresh(half + "_cast")),
                      helper.make_node("Cast", [half], [rounded[vi.name]], to=SINGLE,
                                       name=fresh(rounded[vi.name] + "_cast"))]
    for node in graph.node:
        node.input[:] = [rounded.get(name, name) for name in node.input]
        _widen_attributes(node)
        nodes.append(node)
        for k, name in enumerate(node.output):
            if name not in halves or name in rounding:  # a rounding point already (widened before)
                continue
            if name in outputs:  # a graph output keeps its name and carries the rounded value
                source = node.output[k] = fresh(name + "_wide")
                target = name
            else:  # the op's own float32 result keeps the name (a layer); its readers read it rounded
                source, target = name, fresh(name + "_rounded")
                rounded[name] = target
            half = source
            if not (node.op_type == "Cast" and _cast_target(node) == HALF):  # else the node rounds already
                half = fresh(name + "_half")
                nodes.append(helper.make_node("Cast", [source], [half], to=HALF, name=fresh(half + "_cast")))
            nodes.append(helper.make_node("Cast", [half], [target], to=SINGLE, name=fresh(target + "_cast")))
    del graph.node[:]
    graph.node.extend(nodes)
    for vi in graph.output:
        if vi.type.tensor_type.elem_type == HALF:
            vi.type.tensor_type.elem_type = SINGLE
    del graph.value_info[:]
    return out


def _single(tensor):
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)


def rounding_tensors(graph):
    """Names of the tensors :func:`widen_float16` adds around each rounding point (the float16
    copy and the float32 value read back from it): not layers of their own.

    >>> half = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>'
    ...     ' g (float16[N, 4] x) => (float16[N, 4] y) {h = Relu(x) y = Mul(h, h)}')
    >>> sorted(rounding_tensors(widen_float16(half).graph))
    ['h_half', 'h_rounded', 'x_half', 'x_rounded', 'y', 'y_half']
    """
    points = _rounding_points(graph)
    return points | {node.output[0] for node in graph.node if node.op_type == "Cast" and node.input[0] in points}


def _rounding_points(graph):
    """Float16 tensors made by a Cast to float16 and read only by Casts to float32."""
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return {node.output[0] for node in graph.node
            if node.op_type == "Cast" and _cast_target(node) == HALF and readers.get(node.output[0])
            and all(r.op_type == "Cast" and _cast_target(r) == SINGLE for r in readers[node.output[0]])}


def _cast_target(node):
    return attrs(node).get("to")


def _widen_attributes(node):
    """Float16 constants and target types in a node's attributes become float32 (Cast to float16
    stays: it is a rounding point)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == HALF:
            attr.t.CopyFrom(_single(attr.t))
        elif attr.name == "dtype" and attr.type == onnx.AttributeProto.INT and attr.i == HALF:
            attr.i = SINGLE
