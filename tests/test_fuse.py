"""fold_batchnorm: Conv → BatchNormalization pairs become one Conv with the same outputs (through ORT)."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from engine.graph.fuse import fold_batchnorm


def conv_bn_model():
    """conv1 → bn1 → relu; conv2 (no bias, grouped) → bn2 where conv2's output is also a graph output."""
    rng = np.random.default_rng(0)

    def init(name, *dims, positive=False):
        value = rng.standard_normal(dims)
        return numpy_helper.from_array((np.abs(value) + 0.5 if positive else value).astype(np.float32), name)

    inits = [init("w1", 4, 3, 3, 3), init("b1", 4), init("w2", 4, 2, 1, 1)]
    for bn in ("bn1", "bn2"):
        inits += [init(f"{bn}_s", 4), init(f"{bn}_b", 4), init(f"{bn}_m", 4), init(f"{bn}_v", 4, positive=True)]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1] * 4, strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c1", "bn1_s", "bn1_b", "bn1_m", "bn1_v"], ["n1"], epsilon=1e-3),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], group=2),
        helper.make_node("BatchNormalization", ["c2", "bn2_s", "bn2_b", "bn2_m", "bn2_v"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "convbn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 4, 4]),
                               helper.make_tensor_value_info("c2", TensorProto.FLOAT, ["N", 4, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, x):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fusion by ORT itself
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {"image": x})


def test_fold_keeps_outputs_and_tapped_convs():
    model = conv_bn_model()
    folded = fold_batchnorm(model)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "Conv", "BatchNormalization"]
    onnx.checker.check_model(folded)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for got, want in zip(run(folded, x), run(model, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert {t.name for t in folded.graph.initializer} >= {"w2", "bn2_s"} and "w1" not in {
        t.name for t in folded.graph.initializer}
    assert [n.op_type for n in model.graph.node][1] == "BatchNormalization"  # the argument is untouched
