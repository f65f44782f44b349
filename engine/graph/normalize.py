"""The normalization pipeline: bring any exported ONNX CNN into one clean form.

Each pass is a function ``ModelProto -> ModelProto`` that returns a new model and leaves its
argument untouched (onnx-ir's pass style); :func:`normalize` composes them on one private copy,
passing ``inplace=True`` (the pass may then edit its argument and return it, or return a new
model: always use the result), so a 100 MB model is copied once, not once per pass. The output
of every pass computes the same outputs as its input. The passes that need modules of their own
live beside this one: :func:`~engine.graph.constant_folding.fold_constants` (partial evaluation),
:func:`~engine.graph.transposes.transpose_first` (an NHWC normalization after its Transpose) and
:func:`~engine.graph.weightless.infer_shapes` (on the weightless skeleton).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from engine.errors import InputShapeError, ModelLoadError
from engine.graph.constant_folding import fold_constants
from engine.graph.editing import DEFAULT_DOMAINS, copy_model, default_opset, prune, subgraph_reads, unique_name
from engine.graph.half import widen_float16
from engine.graph.nodes import attrs
from engine.graph.quantized import dequantize_operators
from engine.graph.shapes import declared_shapes, image_input, value_info_shape
from engine.graph.transposes import transpose_first
from engine.graph.weightless import ANONYMOUS, infer_shapes, inferred_skeleton, with_weights, without_weights

TARGET_OPSET = 17


def normalize(model: onnx.ModelProto, input_size=None, inplace=False) -> onnx.ModelProto:
    """Return ``model`` upgraded, specialized, folded, simplified and shape-inferred.

    ``input_size=(H, W)`` fixes the spatial dims of the image input (batch stays symbolic).
    ``inplace=True`` edits ``model`` itself instead of a copy (for a caller that owns it).

    >>> clean = normalize(onnx.load("model.onnx"), input_size=(64, 64))
    >>> value_info_shape(clean.graph.input[0]), default_opset(clean)
    (('batch', 3, 64, 64), 17)
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
    model = drop_zero_initial_states(model, inplace=True)
    model = transpose_first(drop_identities(model, inplace=True), inplace=True)
    model = infer_shapes(model, inplace=True)
    pinned = []
    while new := batch_pins(model):  # a pinned batch reaches the next Resize down an FPN
        pinned += new
        model = infer_shapes(model, inplace=True, pinned=pinned)
    return model


# --------------------------------------------------------------------------------------- passes
def drop_initializer_inputs(model: onnx.ModelProto, inplace=False) -> onnx.ModelProto:
    """Remove initializers from the graph inputs (old exporters list every weight as an input).

    >>> old = onnx.load("model.onnx")
    >>> old.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
    ...                        for t in old.graph.initializer)
    >>> [i.name for i in drop_initializer_inputs(old).graph.input]
    ['image']
    """
    out = model if inplace else copy_model(model)
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

    >>> x, y = (helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in "xy")
    >>> old = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y]),
    ...                         opset_imports=[helper.make_opsetid("", 9)])
    >>> default_opset(upgrade_opset(old))
    17
    """
    if default_opset(model) >= target:
        return model if inplace else copy_model(model)
    skeleton, weights = without_weights(model)
    error = None
    for candidate, restore in ((skeleton, weights), (model, {})):  # weights rarely matter
        try:
            out = onnx.version_converter.convert_version(candidate, target)
        except Exception as exc:  # the converter raises RuntimeError/ConvertError/IndexError ...
            error = exc
            continue
        out.ir_version = max(out.ir_version, helper.find_min_ir_version_for(out.opset_import, ignore_unknown=True))
        return with_weights(out, restore)
    removed = [n for n in model.graph.node if n.domain in DEFAULT_DOMAINS and not onnx.defs.has(n.op_type, target)]
    if strict or removed:
        raise ModelLoadError(
            f"Cannot upgrade the model from opset {default_opset(model)} to {target}: "
            f"{_blocking_node(skeleton, target, error)}. Re-export the model at opset {target} "
            "or newer.")
    return model if inplace else copy_model(model)  # the rules read each op at its own opset


def name_dynamic_dims(model: onnx.ModelProto, inplace=False) -> onnx.ModelProto:
    """Give a name to every dynamic dim of the graph inputs: legacy ``dim_value: -1`` (older
    paddle2onnx / keras2onnx files) and unnamed dims become ``"batch"`` (dim 0) or
    ``"<input>_<axis>"``, so that shape inference and the passes see one symbolic form; a
    declared output's -1 is dropped.

    >>> m = onnx.load("model.onnx")
    >>> m.graph.input[0].type.tensor_type.shape.dim[3].dim_value = -1
    >>> value_info_shape(m.graph.input[0]), value_info_shape(name_dynamic_dims(m).graph.input[0])
    (('batch', 3, 64, None), ('batch', 3, 64, 'image_3'))
    """
    out = model if inplace else copy_model(model)
    weights = {t.name for t in out.graph.initializer}
    for value_info in out.graph.input:
        tensor_type = value_info.type.tensor_type
        if value_info.name in weights or not tensor_type.HasField("shape"):
            continue
        for axis, dim in enumerate(tensor_type.shape.dim):
            if (dim.HasField("dim_value") and dim.dim_value < 0) or not (dim.HasField("dim_value") or dim.dim_param):
                dim.Clear()
                dim.dim_param = "batch" if axis == 0 else f"{value_info.name}_{axis}"
    for value_info in out.graph.output:  # left to shape inference, which carries the inputs' names
        for dim in value_info.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.Clear()
    return out


def specialize_input(model: onnx.ModelProto, input_size, inplace=False) -> onnx.ModelProto:
    """Fix the spatial dims of the 4-D image input to ``input_size=(H, W)``; batch stays symbolic.

    The layout is NHWC when the last dim is a channel count of 1 or 3 and dim 1 is not, else
    NCHW. Declared output shapes and value_info are dropped (run :func:`infer_shapes` after).

    >>> m = onnx.load("model.onnx")
    >>> for dim in m.graph.input[0].type.tensor_type.shape.dim[2:]: dim.dim_param = "size"
    >>> value_info_shape(specialize_input(m, (32, 48)).graph.input[0])
    ('batch', 3, 32, 48)
    """
    height, width = (int(v) for v in input_size)
    out = model if inplace else copy_model(model)
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

    >>> m = onnx.load("model.onnx")
    >>> m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    >>> value_info_shape(free_batch(m).graph.input[0])
    ('batch', 3, 64, 64)
    """
    out = model if inplace else copy_model(model)
    try:
        image, _ = image_value_info(out)
    except ModelLoadError:
        return out
    batch = image.type.tensor_type.shape.dim[0]
    if not batch.HasField("dim_value") or batch.dim_value < 1:
        return out
    size = batch.dim_value
    shapes = {t.name: list(t.dims) for t in out.graph.initializer} | declared_shapes(inferred_skeleton(out))
    graph = out.graph
    names = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    runtime_batch = []  # the name of Shape(image)[0:1], emitted on first use

    def new_constant(array, hint):
        name = unique_name(hint, names)
        names.add(name)
        graph.initializer.append(numpy_helper.from_array(np.asarray(array, np.int64), name))
        return name

    def with_runtime_batch(rest, hint):
        if not runtime_batch:
            shape, first = unique_name("image_shape__batch", names), unique_name("image_batch__batch", names)
            names.update((shape, first))
            graph.node.insert(0, helper.make_node("Shape", [image.name], [shape]))
            graph.node.insert(1, helper.make_node("Gather", [shape, new_constant([0], "batch_index")], [first]))
            runtime_batch.append(first)
        joined = unique_name(hint, names)
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
    return prune(out)  # the batch constants replaced


def batch_pins(model: onnx.ModelProto) -> list:
    """Value_info giving back the symbolic batch that ONNX shape inference loses where a Resize
    or Reshape keeps dim 0 (:func:`_keeps_dim0`): the output's dim 0 is named as the input's,
    which lets ORT CPU prove the tensors downstream (and their gradients) equal in shape, so that
    it keeps the binary ops between them in its blocked NCHWc layout. Only a named batch is
    carried (an input's dim 0 that inference left anonymous waits for the pin above it). Empty
    when nothing was lost (run after :func:`infer_shapes`).

    >>> x, y = (helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, d) for n, d in (("x", ["batch", 8, 1, 1]), ("y", None)))
    >>> flatten = helper.make_node("Reshape", ["x", "to"], ["y"])
    >>> m = helper.make_model(helper.make_graph([flatten], "g", [x], [y], [numpy_helper.from_array(np.array([-1, 8]), "to")]))
    >>> value_info_shape(infer_shapes(m).graph.output[0]), [value_info_shape(v) for v in batch_pins(infer_shapes(m))]
    (('unk__0', 8), [('batch', 8)])
    """
    shapes = declared_shapes(model)
    infos = {info.name: info for info in (*model.graph.value_info, *model.graph.output)}
    producers = {o: n for n in model.graph.node for o in n.output}
    pins = []
    for node in model.graph.node:
        source, out = shapes.get(node.input[0]) if node.input else None, shapes.get(node.output[0])
        if (node.op_type in ("Resize", "Reshape") and node.domain in DEFAULT_DOMAINS and source and out
                and isinstance(source[0], str) and not source[0].startswith(ANONYMOUS) and out[0] != source[0]
                and _keeps_dim0(model.graph, node, source, producers)):
            pin = onnx.ValueInfoProto()
            pin.CopyFrom(infos[node.output[0]])
            pin.type.tensor_type.shape.dim[0].Clear()
            pin.type.tensor_type.shape.dim[0].dim_param = source[0]
            pins.append(pin)
    return pins


def _keeps_dim0(graph, node, source, producers):
    """Whether Resize or Reshape ``node`` (input dims ``source``) keeps dim 0 where inference
    cannot tell: a Resize scaling it by a constant 1 (an FPN's upsampling: floor(batch · 1) is
    not worked out) or to sizes that start with the input's own (torch's ``interpolate(size=)``:
    Concat(Shape(x)[0:2], (H, W))); a Reshape whose constant target starts with -1, the rest of
    the input's dims (all static) holding as many elements as the rest of the target (``[-1,
    128]`` on (batch, 128, 1, 1))."""
    if node.op_type == "Reshape":
        target, rest = _constant(graph, node.input[1]), source[1:]
        return (target is not None and target.ndim == 1 and len(target) > 1 and target[0] == -1
                and (target[1:] > 0).all() and all(isinstance(d, int) for d in rest)
                and int(np.prod(target[1:])) == int(np.prod(rest)))
    scales = _constant(graph, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scales is not None:
        return scales.ndim == 1 and len(scales) == len(source) and scales[0] == 1
    joined = producers.get(node.input[3]) if len(node.input) > 3 else None
    if joined is None or joined.op_type != "Concat" or attrs(joined).get("axis") != 0:
        return False
    first = producers.get(joined.input[0])
    if first is not None and first.op_type == "Slice":
        starts, axes = _constant(graph, first.input[1]), _constant(graph, first.input[3]) if len(first.input) > 3 else None
        if starts is None or starts[0] != 0 or axes is not None and axes[0] != 0:
            return False
        first = producers.get(first.input[0])
    return (first is not None and first.op_type == "Shape" and first.input[0] == node.input[0]
            and attrs(first).get("start", 0) == 0)


def drop_identities(model: onnx.ModelProto, inplace=False) -> onnx.ModelProto:
    """Remove Identity, inference-mode Dropout and shape-preserving Reshape/Flatten nodes.

    A Reshape or Flatten counts as a no-op when shape inference gives its output the same dims
    as its input (equal numbers or the same symbol), e.g. the Flatten/Reshape pair the version
    converter wraps around a pre-13 Softmax on a 2-D tensor. Consumers are rewired.

    Graph output names stay: when such a node produces a graph output, the tensor feeding it is
    renamed instead (or the node is kept when that tensor is a graph input or another output).

    >>> [n.op_type for n in drop_identities(onnx.load("model.onnx")).graph.node][:3]
    ['Conv', 'BatchNormalization', 'Relu']
    """
    out = model if inplace else copy_model(model)
    graph = out.graph
    shapes = declared_shapes(inferred_skeleton(out))
    outputs = {o.name for o in graph.output}
    outer = set().union(*(subgraph_reads(n) for n in graph.node))
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
    return prune(out)


_INITIAL_STATES = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}  # initial_h (and initial_c) inputs


def drop_zero_initial_states(model: onnx.ModelProto, inplace=False) -> onnx.ModelProto:
    """Leave out the initial states of recurrent nodes that are zeros: a ConstantOfShape of 0 (what
    torch exports for a default state) or an all-zero constant. An absent initial state is zeros
    too, and the gradient rules skip its terms (five nodes fewer in a small LSTM's backward).
    """
    out = model if inplace else copy_model(model)
    graph = out.graph
    producers = {name: node for node in graph.node for name in node.output}
    for node in graph.node:
        indices = [i for i in _INITIAL_STATES.get(node.op_type, ()) if i < len(node.input) and node.input[i]]
        for index in indices:
            if _is_zeros(graph, producers.get(node.input[index]), node.input[index]):
                node.input[index] = ""
        while indices and not node.input[-1]:  # trailing absent inputs
            del node.input[-1]
    return prune(out)


def _is_zeros(graph, producer, name):
    """Whether tensor ``name`` (made by ``producer``, or a constant) holds only zeros."""
    if producer is not None and producer.op_type == "ConstantOfShape":
        value = attrs(producer).get("value")
        return value is None or not numpy_helper.to_array(value).any()
    value = _constant(graph, name)
    return value is not None and not value.any()


# ---------------------------------------------------------------------------------- public help
def image_value_info(model: onnx.ModelProto):
    """The image input's ``ValueInfoProto`` (editable in place) and its layout, via
    :func:`engine.graph.shapes.image_input`.

    >>> info, layout = image_value_info(onnx.load("model.onnx"))
    >>> info.name, layout
    ('image', 'NCHW')
    """
    image = image_input(model)
    return next(vi for vi in model.graph.input if vi.name == image.name), image.layout


# ------------------------------------------------------------------------------------ internals
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
    if node.domain not in DEFAULT_DOMAINS:
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
    return attrs(node).get("is_test", 1) != 0


def _constant(graph, name):
    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return ReferenceEvaluator(node).run(None, {})[0]
    return None


def _rename_uses(graph, old, new):
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
