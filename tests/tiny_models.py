"""Small CNN classifiers built with onnx.helper for tests (random weights, no torch).

``classifier(layout="NHWC", shape=("N", 8, 8, 3))`` → Conv/Relu/MaxPool/Conv/Relu/GAP/Flatten/Gemm,
output ``logits`` [N, classes] (or ``probs`` after a Softmax).
"""
import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def classifier(layout="NCHW", shape=("N", 3, 8, 8), classes=4, width=4, metadata=None, softmax=False,
               seed=0, stages=((None, 1),), opset=17, dtype=TensorProto.FLOAT):
    """Build a small classifier. ``stages`` lists (channels or None for ``width``, stride) of extra
    Conv+Relu stages after the first pooled one; ``metadata`` becomes ``metadata_props``
    (lists are JSON-encoded)."""
    rng = np.random.default_rng(seed)
    channels = shape[1] if layout == "NCHW" else shape[3]
    channels = channels if isinstance(channels, int) else 3
    nodes, inits = [], []

    def weight(name, *dims):
        fan_in = int(np.prod(dims[1:])) or 1
        inits.append(numpy_helper.from_array((rng.standard_normal(dims) / np.sqrt(fan_in)).astype(np.float32), name))
        return name

    x = "image"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["to_nchw"], perm=[0, 3, 1, 2]))
        x = "to_nchw"
    if dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [x], ["as_float"], to=TensorProto.FLOAT))
        x = "as_float"
    nodes.append(helper.make_node("Conv", [x, weight("w1", width, channels, 3, 3), weight("b1", width)], ["conv1"], pads=[1] * 4))
    nodes.append(helper.make_node("Relu", ["conv1"], ["relu1"]))
    nodes.append(helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]))
    x, c = "pool1", width
    for i, (out, stride) in enumerate(stages, start=2):
        out = out or width
        nodes.append(helper.make_node("Conv", [x, weight(f"w{i}", out, c, 3, 3), weight(f"b{i}", out)], [f"conv{i}"],
                                      pads=[1] * 4, strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        x, c = f"relu{i}", out
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    nodes.append(helper.make_node("Gemm", ["flat", weight("fc_w", classes, c), weight("fc_b", classes)], ["logits"], transB=1))
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        out = "probs"
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", dtype, list(shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [shape[0], classes])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tiny_models")
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                       key: json.dumps(value) if isinstance(value, list) else value})
    onnx.checker.check_model(model)
    return model


def save(model, path, external=None):
    """Save ``model`` at ``path``; ``external`` = data file location relative to the model's folder."""
    if external is None:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=external, size_threshold=0)
    return path
