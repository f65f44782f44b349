"""Normalization passes: bring any exported ONNX CNN into one clean form.

Each pass is a function ``ModelProto -> ModelProto`` that returns a new model and leaves its
argument untouched (onnx-ir's pass style); :func:`normalize` composes them on one private copy,
passing ``inplace=True`` (the pass may then edit its argument and return it, or return a new
model: always use the result), so a 100 MB model is copied once, not once per pass. The output of every
pass computes the same outputs as its input. Constant sub-graphs are evaluated with
``onnx.reference`` (never an ONNX Runtime session).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from engine.errors import InputShapeError, ModelLoadError
from engine.graph.half import widen_float16
from engine.graph.quantized import dequantize_operators
from engine.graph.shapes import declared_shapes, image_input, value_info_shape

TARGET_OPSET = 17
MAX_FOLD_ELEMENTS = 1 << 22  # larger constant results stay computed at run time

_DEFAULT_DOMAINS = ("", "ai.onnx")
_NEVER_FOLD = {
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
}


def normalize(model: onnx.ModelProto, input_size=None, inplace=False) -> onnx.ModelProto:
    """Return ``model`` upgraded, specialized, folded, simplified and shape-inferred.

    ``input_size=(H, W)`` fixes the spatial dims of the image input (batch stays symbolic).
    ``inplace=True`` edits ``model`` itself instead of a copy (for a caller that owns it).

    Example:
        >>> clean = normalize(onnx.load("resnet.onnx"), input_size=(64, 64))  # doctest: +SKIP
        >>> clean.opset_import[0].version                                     # doctest: +SKIP
        17
    """
    model = drop_initializer_inputs(model, inplace=inplace)
    model = dequantize_operators(model, inplace=True)
    model = widen_float16(model, inplace=True)
    model = name_dynamic_dims(model, inplace=True)
    model = upgrade_opset(model, inplace=True)
    if input_size is not None:
        model = specialize_input(model, input_size, inplace=True)
    model = free_batch(model, inplace=True)
    model = drop_identities(model, inplace=True)
    for _ in range(3):  # folding a Reshape can make shapes (hence more sub-graphs) static
        before = len(model.graph.node)
        model = fold_constants(model, inplace=True)
        if len(model.graph.node) == before:
            break
    return infer_shapes(drop_identities(model, inplace=True), inplace=True)


# --------------------------------------------------------------------------------------- passes
def drop_initializer_inputs(model: onnx.ModelProto, inplace=False) -> onnx.ModelProto:
    """Remove initializers from the graph inputs (old exporters list every weight as an input).

    Example:
        >>> [i.name for i in drop_initializer_inputs(old).graph.input]  # doctest: +SKIP
        ['data']
    """
    out = model if inplace else _copy(model)
    weights = {t.name for t in out.graph.initializer}
    keep = [i for i in out.graph.input if i.name not in weights]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    if out.ir_version < 4:
        out.ir_version = 4
    return out


def upgrade_opset(model: onnx.ModelProto, target: int = TARGET_OPSET, inplace=False,
                  strict=False) -> onnx.ModelProto:
    """Convert the default-domain opset to ``target`` when it is older (newer ones stay).

    Custom domains (``com.microsoft``, ``Paddle``) are kept as they are. When the ONNX version
    converter fails but every op still exists at ``target``, the model keeps its own opset (the
    gradient rules read each op at the model's opset); otherwise (an op removed since, or
    ``strict``) ModelLoadError names the first node the converter cannot upgrade.

    Example:
        >>> upgrade_opset(opset9_model).opset_import[0].version  # doctest: +SKIP
        17
    """
    if _opset(model) >= target:
        return model if inplace else _copy(model)
    skeleton, weights = without_weights(model)
    error = None
    for candidate, restore in ((skeleton, weights), (model, {})):  # weights rarely matter
        try:
            out = onnx.version_converter.convert_version(candidate, target)
        except Exception as exc:  # the converter raises RuntimeError/ConvertError/IndexError ...
            error = exc
            continue
        out.ir_version = max(out.ir_version, helper.find_min_ir_version_for(out.opset_import, ignore_unknown=True))
        return _with_weights(out, restore)
    removed = [n for n in model.graph.node if n.domain in _DEFAULT_DOMAINS and not onnx.defs.has(n.op_type, target)]
    if strict or removed:
        raise ModelLoadError(
            f"Cannot upgrade the model from opset {_opset(model)} to {target}: "
            f"{_blocking_node(skeleton, target, error)}. Re-export the model at opset {target} "
            "or newer.")
    return model if inplace else _copy(model)  # the rules read each op at its own opset


def name_dynamic_dims(model: onnx.ModelProto, inplace=False) -> onnx.ModelProto:
    """Give a name to every dynamic dim of the graph inputs: legacy ``dim_value: -1`` (older
    paddle2onnx / keras2onnx files) and unnamed dims become ``"batch"`` (dim 0) or
    ``"<input>_<axis>"``, so that shape inference and the passes see one symbolic form.

    Example:
        >>> dims(name_dynamic_dims(paddle_model).graph.input[0])  # [-1, 3, -1, -1] ->  # doctest: +SKIP
        ['batch', 3, 'x_2', 'x_3']
    """
    out = model if inplace else _copy(model)
    weights = {t.name for t in out.graph.initializer}
    for value_info in out.graph.input:
        tensor_type = value_info.type.tensor_type
        if value_info.name in weights or not tensor_type.HasField("shape"):
            continue
        for axis, dim in enumerate(tensor_type.shape.dim):
            if (dim.HasField("dim_value") and dim.dim_value < 0) or not (dim.HasField("dim_value") or dim.dim_param):
                dim.Clear()
                dim.dim_param = "batch" if axis == 0 else f"{value_info.name}_{axis}"
    return out


def specialize_input(model: onnx.ModelProto, input_size, inplace=False) -> onnx.ModelProto:
    """Fix the spatial dims of the 4-D image input to ``input_size=(H, W)``; batch stays symbolic.

    The layout is NHWC when the last dim is a channel count of 1 or 3 and dim 1 is not, else
    NCHW. Declared output shapes and value_info are dropped (run :func:`infer_shapes` after).

    Example:
        >>> m = specialize_input(model, (64, 64))  # [N,3,H,W] -> [N,3,64,64]  # doctest: +SKIP
    """
    height, width = (int(v) for v in input_size)
    out = model if inplace else _copy(model)
    image, layout = image_value_info(out)
    dims = image.type.tensor_type.shape.dim
    axes = (1, 2) if layout == "NHWC" else (2, 3)
    for axis, size in zip(axes, (height, width)):
        if dims[axis].HasField("dim_value") and dims[axis].dim_value > 0 and dims[axis].dim_value != size:
            raise InputShapeError(
                f"Input {image.name!r} is fixed at {list(value_info_shape(image))}; it cannot take size "
                f"{height}x{width}. Use the model's own input size.")
        dims[axis].Clear()
        dims[axis].dim_value = size
    if not dims[0].dim_param and dims[0].dim_value <= 0:
        dims[0].Clear()
        dims[0].dim_param = "batch"
    for output in out.graph.output:
        output.type.tensor_type.ClearField("shape")
    del out.graph.value_info[:]
    return out


def free_batch(model: onnx.ModelProto, inplace=False) -> onnx.ModelProto:
    """Make a fixed batch dim of the image input symbolic (``"batch"``).

    Constants that bake the batch size in are rewritten: a Reshape target starting with it,
    applied to a tensor whose dim 0 is that size, gets 0 (copy) there, so ``[1, -1]`` keeps
    working for batch 5; an Expand target (rank >= 3) or Tile repeats starting with it take the
    image's runtime batch instead (``Shape(image)[0]``). This assumes dim 0 of such tensors is
    the batch, as in every CNN: callers check the result (engine.runtime.batch verifies it
    against the original at two batch sizes and runs the model in chunks where it differs).

    Example:
        >>> dims(free_batch(caffe2_model).graph.input[0])  # [1, 3, 224, 224] ->  # doctest: +SKIP
        ['batch', 3, 224, 224]
    """
    out = model if inplace else _copy(model)
    try:
        image, _ = image_value_info(out)
    except ModelLoadError:
        return out
    batch = image.type.tensor_type.shape.dim[0]
    if not batch.HasField("dim_value") or batch.dim_value < 1:
        return out
    size = batch.dim_value
    shapes = {t.name: list(t.dims) for t in out.graph.initializer} | declared_shapes(_inferred(out))
    graph = out.graph
    names = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    runtime_batch = []  # the name of Shape(image)[0:1], emitted on first use

    def new_constant(array, hint):
        name = _unique(hint, names)
        names.add(name)
        graph.initializer.append(numpy_helper.from_array(np.asarray(array, np.int64), name))
        return name

    def with_runtime_batch(rest, hint):
        if not runtime_batch:
            shape, first = _unique("image_shape__batch", names), _unique("image_batch__batch", names)
            names.update((shape, first))
            graph.node.insert(0, helper.make_node("Shape", [image.name], [shape]))
            graph.node.insert(1, helper.make_node("Gather", [shape, new_constant([0], "batch_index")], [first]))
            runtime_batch.append(first)
        joined = _unique(hint, names)
        names.add(joined)
        graph.node.insert(2, helper.make_node("Concat", [runtime_batch[0], new_constant(rest, hint + "_rest")],
                                              [joined], axis=0))
        return joined

    for node in list(graph.node):
        index = {"Reshape": 1, "Expand": 1, "Tile": 1}.get(node.op_type)
        if index is None or len(node.input) <= index:
            continue
        target = _constant(graph, node.input[index])
        if target is None or target.ndim != 1 or not len(target) or target[0] != size:
            continue
        first = (shapes.get(node.input[0]) or [None])[0]
        if node.op_type == "Reshape" and first == size:
            node.input[1] = new_constant(np.concatenate([[0], target[1:]]), f"{node.input[1]}__batch")
        elif node.op_type == "Expand" and len(target) >= 3 and first in (1, size):
            node.input[1] = with_runtime_batch(target[1:], f"{node.input[1]}__batch")
        elif node.op_type == "Tile" and size > 1 and first == 1:
            node.input[1] = with_runtime_batch(target[1:], f"{node.input[1]}__batch")
    batch.Clear()
    batch.dim_param = "batch"
    for output in graph.output:
        output.type.tensor_type.ClearField("shape")
    del graph.value_info[:]
    return _prune(out)  # the batch constants replaced


def drop_identities(model: onnx.ModelProto, inplace=False) -> onnx.ModelProto:
    """Remove Identity, inference-mode Dropout and shape-preserving Reshape/Flatten nodes.

    A Reshape or Flatten counts as a no-op when shape inference gives its output the same dims
    as its input (equal numbers or the same symbol), e.g. the Flatten/Reshape pair the version
    converter wraps around a pre-13 Softmax on a 2-D tensor. Consumers are rewired.

    Graph output names stay: when such a node produces a graph output, the tensor feeding it is
    renamed instead (or the node is kept when that tensor is a graph input or another output).

    Example:
        >>> [n.op_type for n in drop_identities(m).graph.node]  # doctest: +SKIP
        ['Conv', 'Relu']
    """
    out = model if inplace else _copy(model)
    graph = out.graph
    shapes = declared_shapes(_inferred(out))
    outputs = {o.name for o in graph.output}
    outer = set().union(*(_subgraph_uses(n) for n in graph.node))
    producers = {name: node for node in graph.node for name in node.output}
    keep = []
    for node in graph.node:
        if node.output[0] in outer or not _is_passthrough(node, graph, shapes):
            keep.append(node)
            continue
        src, dst = node.input[0], node.output[0]
        if dst not in outputs:
            _rename_uses(graph, dst, src)
        elif src in producers and src not in outputs and src not in outer:
            _rename_uses(graph, src, dst)
            producer = producers[src]
            producer.output[list(producer.output).index(src)] = dst
            producers[dst] = producer
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return _prune(out)


def fold_constants(model: onnx.ModelProto, inplace=False) -> onnx.ModelProto:
    """Evaluate constant sub-graphs into initializers; resolve Reshape shape sub-graphs.

    Nodes whose inputs are all constant (Constant, ConstantOfShape, arithmetic on weights) become
    initializers. Shape values are tracked element by element from inferred shapes, so
    ``Shape -> Gather/Slice -> Concat -> Reshape`` folds even with a symbolic batch: an element
    equal to the Reshape input's dim at the same position becomes 0 (copy) and one remaining
    unknown element becomes -1, so the Reshape still works for every batch size.

    Example:
        >>> [n.op_type for n in fold_constants(torchscript_flatten).graph.node]  # doctest: +SKIP
        ['Conv', 'Reshape', 'Gemm']
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
    return _prune(out)


def infer_shapes(model: onnx.ModelProto, inplace=False) -> onnx.ModelProto:
    """Recompute value_info (and missing output shapes) with ONNX shape inference.

    Example:
        >>> len(infer_shapes(model).graph.value_info) > 0  # doctest: +SKIP
        True
    """
    inferred = _inferred(model)
    out = model if inplace else _copy(model)
    for field in ("value_info", "output"):
        del getattr(out.graph, field)[:]
        getattr(out.graph, field).extend(getattr(inferred.graph, field))
    return out


# ---------------------------------------------------------------------------------- public help
def image_value_info(model: onnx.ModelProto):
    """The image input's ``ValueInfoProto`` (editable in place) and its layout, via
    :func:`engine.graph.shapes.image_input`.

    Example:
        >>> info, layout = image_value_info(onnx.load("models/shapes-resnet.onnx"))  # doctest: +SKIP
        >>> info.name, layout                                                          # doctest: +SKIP
        ('image', 'NCHW')
    """
    image = image_input(model)
    return next(vi for vi in model.graph.input if vi.name == image.name), image.layout


def without_weights(model: onnx.ModelProto, min_elements=4096):
    """A copy whose large initializers are graph inputs of the same type and shape instead.

    Shape inference, the version converter and hashing serialize the model; leaving the weights
    out makes them fast on 100 MB models. Returns ``(skeleton, {name: TensorProto})``, the
    weights in initializer order (the model's own messages, not copies).

    Example:
        >>> skeleton, weights = without_weights(model)  # doctest: +SKIP
        >>> skeleton.ByteSize() < 100_000               # doctest: +SKIP
        True
    """
    out = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _set_field(out, field, value)
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            _set_field(out.graph, field, value)
    graph = out.graph
    inputs = {i.name for i in graph.input}
    weights = {t.name: t for t in model.graph.initializer
               if math.prod(t.dims) >= min_elements and t.name not in inputs}
    graph.initializer.extend(t for t in model.graph.initializer if t.name not in weights)
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                       for t in weights.values())
    return out, weights


# ------------------------------------------------------------------------------------ internals
def _copy(model):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _inferred(model):
    """The weightless skeleton of ``model`` with shapes inferred into its value_info."""
    skeleton, _ = without_weights(model)
    del skeleton.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(skeleton, check_type=True, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        reason = str(exc).splitlines()[0][:200].rstrip(".")
        raise ModelLoadError(f"The model is inconsistent: {reason}. "
                             "Check that it loads and runs in ONNX Runtime.") from None


def _set_field(message, field, value):
    if field.is_repeated:
        getattr(message, field.name).extend(value)
    elif field.type == field.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def _with_weights(skeleton, weights):
    """Undo :func:`without_weights` on a (transformed) skeleton."""
    graph = skeleton.graph
    inputs = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(inputs)
    graph.initializer.extend(weights.values())
    return skeleton


def _opset(model):
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 1)


def _blocking_node(model, target, exc):
    """Name the first node that the version converter cannot upgrade on its own."""
    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except onnx.shape_inference.InferenceError:
        graph = model.graph
    types = {v.name: v.type for v in itertools.chain(graph.input, graph.value_info, graph.output)}
    types.update({t.name: helper.make_tensor_type_proto(t.data_type, t.dims)
                  for t in graph.initializer})
    float_type = helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, None)
    for node in graph.node:
        names = [i for i in node.input if i]
        single = helper.make_graph(
            [node], "single",
            [helper.make_value_info(n, types.get(n, float_type)) for n in dict.fromkeys(names)],
            [helper.make_value_info(n, types.get(n, float_type)) for n in node.output if n])
        trial = helper.make_model(single, opset_imports=list(model.opset_import))
        trial.ir_version = model.ir_version
        try:
            onnx.version_converter.convert_version(trial, target)
        except Exception:
            return f"{node.op_type} node {node.name or node.output[0]!r} has no upgrade path"
    return str(exc).splitlines()[0][:200]


def _is_passthrough(node, graph, shapes):
    if node.domain not in _DEFAULT_DOMAINS:
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type in ("Reshape", "Flatten"):
        before, after = shapes.get(node.input[0]), shapes.get(node.output[0])
        return before is not None and None not in before and before == after
    if node.op_type != "Dropout":
        return False
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    if len(node.output) > 1 and node.output[1] in used:
        return False
    if len(node.input) > 2 and node.input[2]:
        training = _constant(graph, node.input[2])
        return training is not None and not bool(training)
    return not any(a.name == "is_test" and a.i == 0 for a in node.attribute)


def _constant(graph, name):
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return ReferenceEvaluator(node).run(None, {})[0]
    return None


def _subgraph_uses(node):
    """Names a node's sub-graphs (If/Loop/Scan bodies) read, outer-scope ones included."""
    names = set()
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
            for inner in sub.node:
                names.update(inner.input)
                names |= _subgraph_uses(inner)
    return names


def _rename_uses(graph, old, new):
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _prune(model):
    """Drop nodes and initializers that no graph output depends on."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    for index in reversed(range(len(graph.node))):
        node = graph.node[index]
        if any(o in needed for o in node.output):
            needed.update(i for i in node.input if i)
            needed |= _subgraph_uses(node)
        else:
            del graph.node[index]
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name not in needed:
            del graph.initializer[index]
    return model


def _foldable(node):
    return (node.domain in _DEFAULT_DOMAINS and node.op_type not in _NEVER_FOLD
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
        attrs = {a.name: a.i for a in node.attribute}
        dims = [d if d is not None else symbols.fresh() for d in dims]
        dims = dims[slice(attrs.get("start", 0), attrs.get("end"))]
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
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        dtype = np.int64 if to is None else helper.tensor_dtype_to_np_dtype(to)
        return (data, dtype) if np.dtype(dtype).kind in "iu" else None
    if op == "Gather":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
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
        axis = next(a.i for a in node.attribute if a.name == "axis")
        return np.concatenate([np.atleast_1d(a) for a in args], axis=axis), np.int64
    if op in ("Unsqueeze", "Squeeze"):
        axes = args[1] if len(args) > 1 and args[1] is not None else \
            next((np.array(a.ints) for a in node.attribute if a.name == "axes"), None)
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
        if any(a.name == "allowzero" and a.i for a in node.attribute):
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
        name = _unique(f"{node.input[1]}__folded", names)
        names.add(name)
        new.append(numpy_helper.from_array(np.array(resolved, dtype=np.int64), name))
        node.input[1] = name
    return new


def _unique(name, taken):
    candidates = itertools.chain([name], (f"{name}_{i}" for i in itertools.count(1)))
    return next(c for c in candidates if c not in taken)
