"""Constant folding by partial evaluation: constant sub-graphs become initializers, and shape
computations are evaluated element by element, so ``Shape -> Gather/Slice -> Concat -> Reshape``
folds even where the batch dim is symbolic. Constant sub-graphs are evaluated with
``onnx.reference`` (never an ONNX Runtime session).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from engine.graph.editing import DEFAULT_DOMAINS, prune, unique_name
from engine.graph.nodes import attrs
from engine.graph.shapes import declared_shapes
from engine.graph.weightless import infer_shapes

MAX_FOLD_ELEMENTS = 1 << 22  # larger constant results stay computed at run time

_NEVER_FOLD = {
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
}


def fold_constants(model: onnx.ModelProto, inplace=False) -> onnx.ModelProto:
    """Evaluate constant sub-graphs into initializers; resolve Reshape shape sub-graphs.

    Nodes whose inputs are all constant (Constant, ConstantOfShape, arithmetic on weights) become
    initializers. Shape values are tracked element by element from inferred shapes, so
    ``Shape -> Gather/Slice -> Concat -> Reshape`` folds even with a symbolic batch: an element
    equal to the Reshape input's dim at the same position becomes 0 (copy) and one remaining
    unknown element becomes -1, so the Reshape still works for every batch size.

    >>> m = onnx.load("model.onnx")  # its weights pass through Identity nodes
    >>> [n.op_type for n in fold_constants(m).graph.node].count("Identity")
    0
    """
    out = infer_shapes(model, inplace=inplace)
    graph = out.graph
    opsets = {o.domain or "": o.version for o in out.opset_import}
    inputs = {i.name for i in graph.input}
    consts = _Constants({t.name: t for t in graph.initializer if t.name not in inputs})
    shapes = declared_shapes(out)
    symbols = _Symbols()
    partial: dict[str, np.ndarray] = {}
    outputs = {o.name for o in graph.output}
    folded = set()
    for index, node in enumerate(graph.node):
        if not _foldable(node) or any(o in outputs for o in node.output):
            continue
        if all(not i or i in consts for i in node.input):
            values = _evaluate(node, consts, opsets)
            if values is not None:
                consts.update(zip(node.output, values))
                folded.add(index)
            continue
        value = _partial_value(node, consts, partial, shapes, symbols)
        if value is None:
            continue
        array, dtype = np.asarray(value[0], dtype=object), value[1]
        if any(isinstance(v, str) for v in array.flat):
            partial[node.output[0]] = array
        else:
            consts[node.output[0]] = np.array(array.tolist(), dtype=dtype)
            folded.add(index)
    extra = _resolve_reshapes(graph, consts, partial, shapes, folded)
    kept = [n for i, n in enumerate(graph.node) if i not in folded]
    del graph.node[:]
    graph.node.extend(kept)
    existing = {t.name for t in graph.initializer}
    needed = {i for n in graph.node for i in n.input}
    for name in sorted(needed - existing - inputs):
        if name in consts:
            graph.initializer.append(numpy_helper.from_array(np.asarray(consts[name]), name))
    graph.initializer.extend(extra)
    return prune(out)


def _foldable(node):
    return (node.domain in DEFAULT_DOMAINS and node.op_type not in _NEVER_FOLD
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                        for a in node.attribute))


def _evaluate(node, consts, opsets):
    feeds = {i: consts[i] for i in node.input if i}
    if any(np.asarray(v).size > MAX_FOLD_ELEMENTS for v in feeds.values()):
        return None
    try:
        values = ReferenceEvaluator(node, opsets=opsets).run(None, feeds)
    except Exception:  # an op the reference runtime lacks stays in the graph
        return None
    if any(np.asarray(v).size > MAX_FOLD_ELEMENTS for v in values):
        return None
    return [np.asarray(v) for v in values]


class _Constants(dict):
    """Known constant values; initializers are converted to arrays only when read."""

    def __init__(self, protos):
        super().__init__()
        self.protos = protos

    def __contains__(self, name):
        return dict.__contains__(self, name) or name in self.protos

    def __missing__(self, name):
        value = self[name] = numpy_helper.to_array(self.protos[name])
        return value


class _Symbols:
    """Fresh names for shape elements that are unknown and equal to nothing else."""

    def __init__(self):
        self.count = 0

    def fresh(self):
        self.count += 1
        return f"?{self.count}"


_TRACKED = {"Shape", "Size", "Identity", "Cast", "Gather", "Slice", "Concat", "Unsqueeze",
            "Squeeze", "Mul", "Add", "Sub", "Div"}


def _partial_value(node, consts, partial, shapes, symbols):
    """Element-wise value of a shape computation with some unknown (symbolic) elements.

    Returns ``(object array of int | str, dtype)`` or None when the node is not tracked.
    """
    op = node.op_type
    if op not in _TRACKED:
        return None

    def value(name):
        if name in partial:
            return partial[name]
        if name in consts and np.asarray(consts[name]).dtype.kind in "iu":
            return np.asarray(consts[name]).astype(object)
        return None

    if op == "Shape":
        dims = shapes.get(node.input[0])
        if dims is None:
            return None
        bounds = attrs(node)
        dims = [d if d is not None else symbols.fresh() for d in dims]
        dims = dims[slice(bounds.get("start", 0), bounds.get("end"))]
        return np.array(dims, dtype=object), np.int64
    if op == "Size":
        dims = shapes.get(node.input[0])
        if dims is None or any(not isinstance(d, int) for d in dims):
            return None
        return np.array(int(np.prod(dims)), dtype=object), np.int64
    args = [value(i) if i else None for i in node.input]
    if not args or args[0] is None:
        return None
    data = args[0]
    if op in ("Identity", "Cast"):
        to = attrs(node).get("to")
        dtype = np.int64 if to is None else helper.tensor_dtype_to_np_dtype(to)
        return (data, dtype) if np.dtype(dtype).kind in "iu" else None
    if op == "Gather":
        axis = attrs(node).get("axis", 0)
        if args[1] is None or any(isinstance(v, str) for v in args[1].flat):
            return None
        return np.take(data, args[1].astype(np.int64), axis=axis), np.int64
    if op == "Slice" and data.ndim == 1:
        if any(a is None for a in args[1:3]) or any(
                isinstance(v, str) for a in args[1:] if a is not None for v in a.flat):
            return None
        steps = args[4] if len(args) > 4 and args[4] is not None else [1]
        return data[slice(int(args[1][0]), int(args[2][0]), int(steps[0]))], np.int64
    if op == "Concat":
        if any(a is None for a in args):
            return None
        axis = attrs(node)["axis"]
        return np.concatenate([np.atleast_1d(a) for a in args], axis=axis), np.int64
    if op in ("Unsqueeze", "Squeeze"):
        axes = args[1] if len(args) > 1 and args[1] is not None else \
            attrs(node).get("axes")
        if op == "Unsqueeze":
            result = data
            for axis in sorted(int(a) % (data.ndim + len(axes)) for a in axes):
                result = np.expand_dims(result, axis)
            return result, np.int64
        return (np.squeeze(data, axis=None if axes is None else tuple(int(a) for a in axes)),
                np.int64)
    if op in ("Mul", "Add", "Sub", "Div") and len(args) == 2 and args[1] is not None:
        return _elementwise(op, data, args[1], symbols), np.int64
    return None


def _elementwise(op, a, b, symbols):
    a, b = np.broadcast_arrays(a, b)
    result = np.empty(a.shape, dtype=object)
    neutral = {"Mul": 1, "Div": 1, "Add": 0, "Sub": 0}[op]
    for idx in np.ndindex(a.shape):
        x, y = a[idx], b[idx]
        if isinstance(x, str) or isinstance(y, str):
            result[idx] = x if y == neutral else (y if op in ("Mul", "Add") and x == neutral
                                                  else symbols.fresh())
        else:
            result[idx] = {"Mul": x * y, "Add": x + y, "Sub": x - y,
                           "Div": int(np.trunc(x / y)) if y else symbols.fresh()}[op]
    return result


def _resolve_reshapes(graph, consts, partial, shapes, folded):
    """Point each Reshape fed by a partly known shape at a constant 0/-1 form of it."""
    new = []
    names = {t.name for t in graph.initializer} | set(consts)
    for index, node in enumerate(graph.node):
        if index in folded or node.op_type != "Reshape" or node.input[1] not in partial:
            continue
        if attrs(node).get("allowzero"):
            continue
        target = partial[node.input[1]]
        source = shapes.get(node.input[0]) or []
        resolved, unknown = [], 0
        for i, v in enumerate(target.flat):
            if not isinstance(v, str):
                resolved.append(int(v))
            elif i < len(source) and source[i] == v:
                resolved.append(0)
            else:
                resolved.append(-1)
                unknown += 1
        if unknown > 1 or (unknown == 1 and resolved.count(-1) > 1):
            continue
        name = unique_name(f"{node.input[1]}__folded", names)
        names.add(name)
        new.append(numpy_helper.from_array(np.array(resolved, dtype=np.int64), name))
        node.input[1] = name
    return new
