"""Work on a model without its large weights: shape inference, the version converter and hashing
serialize the whole model, so they run on a *skeleton* whose large initializers are typed graph
inputs instead, which makes them fast on 100 MB models.

>>> skeleton, weights = without_weights(onnx.load("model.onnx"))
>>> skeleton.ByteSize() < 100_000 < sum(w.ByteSize() for w in weights.values())
True
"""
import math

import onnx
from onnx import helper

from engine.errors import ModelLoadError
from engine.graph.editing import copy_model

ANONYMOUS = "unk__"  # how ONNX shape inference names a dim it cannot name after an input's


def without_weights(model: onnx.ModelProto, min_elements=4096):
    """A copy whose large initializers are graph inputs of the same type and shape instead.

    Returns ``(skeleton, {name: TensorProto})``, the weights in initializer order (the model's
    own messages, not copies).
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


def with_weights(skeleton: onnx.ModelProto, weights) -> onnx.ModelProto:
    """Undo :func:`without_weights` on a (transformed) skeleton, in place; returns it."""
    graph = skeleton.graph
    inputs = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(inputs)
    graph.initializer.extend(weights.values())
    return skeleton


def inferred_skeleton(model: onnx.ModelProto, pinned=()) -> onnx.ModelProto:
    """The weightless skeleton of ``model`` with shapes inferred into its value_info, starting
    from the ``pinned`` value_info only; output dims that an earlier inference left anonymous
    (``unk__N``) are inferred anew.

    ModelLoadError when shape inference finds the model inconsistent.
    """
    skeleton, _ = without_weights(model)
    del skeleton.graph.value_info[:]
    pins = {v.name: v for v in pinned}
    for output in skeleton.graph.output:
        if output.name in pins:
            output.type.CopyFrom(pins.pop(output.name).type)
        for dim in output.type.tensor_type.shape.dim:
            if dim.dim_param.startswith(ANONYMOUS):  # named by an earlier inference, which knew less
                dim.Clear()
    skeleton.graph.value_info.extend(pins.values())
    try:
        return onnx.shape_inference.infer_shapes(skeleton, check_type=True, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        reason = str(exc).splitlines()[0][:200].rstrip(".")
        raise ModelLoadError(f"The model is inconsistent: {reason}. "
                             "Check that it loads and runs in ONNX Runtime.") from None


def infer_shapes(model: onnx.ModelProto, inplace=False, pinned=()) -> onnx.ModelProto:
    """Recompute value_info (and missing output shapes) with ONNX shape inference, from the
    ``pinned`` value_info (see :func:`inferred_skeleton`).

    >>> len(infer_shapes(onnx.load("model.onnx")).graph.value_info) > 0
    True
    """
    inferred = inferred_skeleton(model, pinned)
    out = model if inplace else copy_model(model)
    for field in ("value_info", "output"):
        del getattr(out.graph, field)[:]
        getattr(out.graph, field).extend(getattr(inferred.graph, field))
    return out


def _set_field(message, field, value):
    if field.is_repeated:
        getattr(message, field.name).extend(value)
    elif field.type == field.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)
