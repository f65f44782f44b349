"""Grad-CAM inside a differentiated model, so that one session run returns the raw maps.

:func:`add_gradcam` appends, after a layer's activations A (N×K×h×w) and their gradient G, the
output ``CAM_RAW`` = ReLU(Σ_k mean_hw(G_k)·A_k), N×h×w: the layer's Grad-CAM maps before any
normalization or resize (which cv2 does faster than ONNX Runtime's Resize on small maps).
:func:`seed_top_class` replaces the fed seed by the one-hot row of each image's top class,
computed from the output in the graph, and outputs that class as ``TOP_CLASS``.

>>> from engine.graph.autodiff import differentiate
>>> from engine.graph.normalize import normalize
>>> m = normalize(model.proto, input_size=model.input_size)
>>> source, factor = weights_source(m, model.default_layer)   # the pooled layer: see weights_source
>>> m = seed_top_class(differentiate(m, "logits", [source]), "logits")
>>> m = add_gradcam(m, model.default_layer, source, factor)
>>> [o.name for o in m.graph.output][-2:], SEED in [i.name for i in m.graph.input]
(['onnxlens_top_class', 'onnxlens_cam_raw'], False)
"""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from engine.graph.autodiff import SEED, grad_name
from engine.graph.editing import default_opset
from engine.graph.shapes import value_info_shape

CAM_RAW, TOP_CLASS = "onnxlens_cam_raw", "onnxlens_top_class"


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
    ``source`` (see :func:`weights_source`), in place, as the output ``CAM_RAW`` (see the module
    docstring); returns ``model``."""
    graph, opset = model.graph, default_opset(model)
    weights, weighted, summed = "onnxlens_cam_weights", "onnxlens_cam_weighted", "onnxlens_cam_sum"
    if factor is not None:  # the pooled gradient, scaled
        graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "onnxlens_cam_factor"))
        mean = helper.make_node("Mul", [grad_name(source), "onnxlens_cam_factor"], [weights])
    elif opset >= 18:  # ReduceMean's axes: an input from opset 18 on
        graph.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64), "onnxlens_cam_hw"))
        mean = helper.make_node("ReduceMean", [grad_name(source), "onnxlens_cam_hw"], [weights], keepdims=1)
    else:
        mean = helper.make_node("ReduceMean", [grad_name(source)], [weights], axes=[2, 3], keepdims=1)
    if opset >= 13:  # ReduceSum's: from 13 on
        graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "onnxlens_cam_channels"))
        total = helper.make_node("ReduceSum", [weighted, "onnxlens_cam_channels"], [summed], keepdims=0)
    else:
        total = helper.make_node("ReduceSum", [weighted], [summed], axes=[1], keepdims=0)
    graph.node.extend([mean, helper.make_node("Mul", [weights, layer], [weighted]), total,
                       helper.make_node("Relu", [summed], [CAM_RAW])])
    graph.output.append(helper.make_tensor_value_info(CAM_RAW, TensorProto.FLOAT, ["N", None, None]))
    return model


def seed_top_class(model, output):
    """Seed a differentiated ``model`` (its input ``SEED``) in place with the one-hot row of each
    image's top class of ``output`` (N×C float32; the first of tied maxima, as numpy's argmax),
    computed in the graph: ``SEED`` is no longer an input and ``TOP_CLASS`` (N int64) is an
    output. Returns ``model``."""
    graph = model.graph
    seed = next(i for i in graph.input if i.name == SEED)
    dims = seed.type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].dim_value or seed.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ValueError(f"the top class needs an N×C float32 output with a known C, '{output}' is not one")
    graph.input.remove(seed)
    graph.initializer.extend([numpy_helper.from_array(np.array([dims[1].dim_value], np.int64), "onnxlens_top_depth"),
                              numpy_helper.from_array(np.array([0, 1], np.float32), "onnxlens_top_values")])
    top = [helper.make_node("ArgMax", [output], [TOP_CLASS], axis=1, keepdims=0),
           helper.make_node("OneHot", [TOP_CLASS, "onnxlens_top_depth", "onnxlens_top_values"], [SEED], axis=1)]
    at = 1 + next(i for i, node in enumerate(graph.node) if output in node.output)
    nodes = [*graph.node[:at], *top, *graph.node[at:]]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.output.append(helper.make_tensor_value_info(TOP_CLASS, TensorProto.INT64, ["N"]))
    return model
