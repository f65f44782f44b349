"""Grad-CAM inside a differentiated model, so that one session run returns the maps.

:func:`add_gradcam` appends, after a layer's activations A (N×K×h×w) and their gradient G:
``CAM_RAW`` = ReLU(Σ_k mean_hw(G_k)·A_k) (N×1×h×w), the maps before any normalization or
resize; ``CAM_MAPS``: those resized (bilinear, half-pixel: cv2.resize's INTER_LINEAR) to the
size fed as ``CAM_SIZE`` (N, 1, H, W) and stretched to [0, 1] per map (cv2.normalize's
NORM_MINMAX; a flat map gives zeros); ``CAM_EMPTY``: N flags, True where the raw map is zero
everywhere (the class does not reach the layer). A stretch before the resize, as
:func:`engine.viz.overlay.unit_resized` does, would change nothing: bilinear samples are convex
combinations, so the resize commutes with any a·x + b. :func:`seed_classes` replaces the fed
seed by one-hot rows made in the graph: of each image's top class (output as ``TOP_CLASS``), or of
class indices fed as ``CLASSES``.

>>> from engine.graph.autodiff import differentiate
>>> from engine.graph.normalize import normalize
>>> m = normalize(model.proto, input_size=model.input_size)
>>> source, factor = weights_source(m, model.default_layer)   # the pooled layer: see weights_source
>>> m = seed_classes(differentiate(m, "logits", [source]), "logits", top=True)
>>> m = add_gradcam(m, model.default_layer, source, factor)
>>> [o.name for o in m.graph.output][-4:], [i.name for i in m.graph.input]
(['onnxlens_top_class', 'onnxlens_cam_raw', 'onnxlens_cam_maps', 'onnxlens_cam_empty'], ['image', 'onnxlens_cam_size'])
"""
import math

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from engine.graph.autodiff import SEED, grad_name
from engine.graph.editing import default_opset
from engine.graph.shapes import value_info_shape

CAM_SIZE, CAM_RAW, CAM_MAPS = "onnxlens_cam_size", "onnxlens_cam_raw", "onnxlens_cam_maps"
CAM_EMPTY, TOP_CLASS, CLASSES = "onnxlens_cam_empty", "onnxlens_top_class", "onnxlens_classes"


def weights_source(model, layer):
    """(tensor, factor): Grad-CAM's channel weights at ``layer`` are ``factor`` × the gradient of
    ``tensor``. That is the layer's global average P (N×K×1×1) when a GlobalAveragePool is the
    layer's only reader and its h×w are known: mean_hw(∂y/∂A) = ∂y/∂P / (h·w), with no gradient
    broadcast over h×w to average again; else the layer itself (factor None: the mean over h×w).

    >>> from engine.graph.normalize import normalize
    >>> weights_source(normalize(model.proto, input_size=(64, 64)), model.default_layer)
    ('/pool/GlobalAveragePool_output_0', 0.015625)
    """
    readers = [node for node in model.graph.node if layer in node.input]
    info = next((vi for vi in [*model.graph.value_info, *model.graph.output] if vi.name == layer), None)
    dims = value_info_shape(info) if info is not None else None
    if len(readers) == 1 and readers[0].op_type == "GlobalAveragePool" and dims and len(dims) == 4 \
            and all(isinstance(d, int) for d in dims[2:]):
        return readers[0].output[0], 1.0 / (dims[2] * dims[3])
    return layer, None


def add_gradcam(model, layer, source, factor=None):
    """Append Grad-CAM at ``layer`` (N×K×h×w float32) to a model that outputs the gradient of
    ``source`` (see :func:`weights_source`), in place: the input ``CAM_SIZE`` and the outputs
    ``CAM_RAW``, ``CAM_MAPS`` and ``CAM_EMPTY`` (see the module docstring); returns ``model``."""
    graph, opset, added = model.graph, default_opset(model), set()

    def name(suffix):
        return "onnxlens_cam_" + suffix

    def constant(suffix, value, dtype):  # an initializer, added once
        if suffix not in added:
            added.add(suffix)
            graph.initializer.append(numpy_helper.from_array(np.array(value, dtype), name(suffix)))
        return name(suffix)

    def reduce(op, x, y, axes, since, keepdims=1):  # axes: an input from opset ``since`` on
        if opset >= since:
            return helper.make_node(op, [x, constant("axes" + "".join(map(str, axes)), axes, np.int64)], [y],
                                    keepdims=keepdims)
        return helper.make_node(op, [x], [y], axes=axes, keepdims=keepdims)

    if factor is not None:  # the pooled gradient, scaled
        constant("factor", factor, np.float32)
        weights = helper.make_node("Mul", [grad_name(source), name("factor")], [name("weights")])
    else:
        weights = reduce("ReduceMean", grad_name(source), name("weights"), [2, 3], 18)
    graph.node.extend([
        weights, helper.make_node("Mul", [name("weights"), layer], [name("weighted")]),
        reduce("ReduceSum", name("weighted"), name("sum"), [1], 13),
        helper.make_node("Relu", [name("sum")], [CAM_RAW]),
        helper.make_node("Resize", [CAM_RAW, "", "", CAM_SIZE], [name("resized")], mode="linear"),
        reduce("ReduceMin", name("resized"), name("low"), [2, 3], 18),
        reduce("ReduceMax", name("resized"), name("high"), [2, 3], 18),
        helper.make_node("Sub", [name("resized"), name("low")], [name("above")]),
        helper.make_node("Sub", [name("high"), name("low")], [name("span")]),
        helper.make_node("Max", [name("span"), constant("tiny", 1e-30, np.float32)], [name("divisor")]),
        helper.make_node("Div", [name("above"), name("divisor")], [CAM_MAPS]),
        reduce("ReduceMax", CAM_RAW, name("peak"), [1, 2, 3], 18, keepdims=0),
        helper.make_node("Equal", [name("peak"), constant("zero", 0.0, np.float32)], [CAM_EMPTY])])
    graph.input.append(helper.make_tensor_value_info(CAM_SIZE, TensorProto.INT64, [4]))
    graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1, None, None])
                         for n in (CAM_RAW, CAM_MAPS)])
    graph.output.append(helper.make_tensor_value_info(CAM_EMPTY, TensorProto.BOOL, ["N"]))
    return model


def seed_classes(model, output, top):
    """Seed a differentiated ``model`` in place with one-hot rows shaped like ``output``'s (N×…
    float32, every dim after the batch known; its classes are the flattened row's indices): of
    each image's top class (``top``: the first of tied maxima, as numpy's argmax; output as
    ``TOP_CLASS``, N int64), else of the classes fed as the input ``CLASSES`` (N int64, in
    −C..C−1). ``SEED`` is no longer an input. Returns ``model``."""
    graph = model.graph
    seed = next(i for i in graph.input if i.name == SEED)
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in seed.type.tensor_type.shape.dim[1:]]
    if not dims or not all(dims) or seed.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ValueError(f"one-hot seeds need a float32 output with known dims after the batch, '{output}' is not one")
    graph.input.remove(seed)
    flat = len(dims) > 1  # the seed made flat (N×C), then shaped like the row
    graph.initializer.extend([numpy_helper.from_array(np.array([math.prod(dims)], np.int64), "onnxlens_seed_depth"),
                              numpy_helper.from_array(np.array([0, 1], np.float32), "onnxlens_seed_values")])
    if flat:
        graph.initializer.append(numpy_helper.from_array(np.array([0, *dims], np.int64), "onnxlens_seed_shape"))
    classes, nodes = CLASSES, []
    if top:
        scores = output
        if flat:
            nodes.append(helper.make_node("Flatten", [output], ["onnxlens_seed_scores"], axis=1))
            scores = "onnxlens_seed_scores"
        classes = TOP_CLASS
        nodes.append(helper.make_node("ArgMax", [scores], [classes], axis=1, keepdims=0))
        graph.output.append(helper.make_tensor_value_info(classes, TensorProto.INT64, ["N"]))
    else:
        graph.input.append(helper.make_tensor_value_info(classes, TensorProto.INT64, ["N"]))
    nodes.append(helper.make_node("OneHot", [classes, "onnxlens_seed_depth", "onnxlens_seed_values"],
                                  ["onnxlens_seed_flat" if flat else SEED], axis=1))
    if flat:
        nodes.append(helper.make_node("Reshape", ["onnxlens_seed_flat", "onnxlens_seed_shape"], [SEED]))
    at = 1 + next(i for i, node in enumerate(graph.node) if output in node.output) if top else 0
    nodes = [*graph.node[:at], *nodes, *graph.node[at:]]
    del graph.node[:]
    graph.node.extend(nodes)
    return model
