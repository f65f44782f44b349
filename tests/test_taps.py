import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.errors import LayerError
from engine.graph.taps import add_taps


def _session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _model(with_value_info=True):
    """x[N,2,5,5] -> Conv(1x1, w) -> conv_out -> Relu -> relu_out -> GlobalAveragePool -> pooled
    -> Flatten -> logits."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv_out"]),
        helper.make_node("Relu", ["conv_out"], ["relu_out"]),
        helper.make_node("GlobalAveragePool", ["relu_out"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if with_value_info:
        model = onnx.shape_inference.infer_shapes(model)
    return model, w


def test_taps_return_intermediates_and_keep_outputs():
    model, w = _model()
    x = np.random.default_rng(1).standard_normal((4, 2, 5, 5)).astype(np.float32)
    plain = _session(model).run(None, {"x": x})
    tapped = add_taps(model, ["relu_out", "conv_out"])
    assert [o.name for o in tapped.graph.output] == ["logits", "relu_out", "conv_out"]
    logits, relu, conv = _session(tapped).run(None, {"x": x})
    expected_conv = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x)
    np.testing.assert_allclose(conv, expected_conv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(relu, np.maximum(expected_conv, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(logits, plain[0])
    assert len(model.graph.output) == 1  # input model untouched


def test_tap_info_comes_from_value_info_or_inference():
    for with_vi in (True, False):
        model, _ = _model(with_value_info=with_vi)
        out = add_taps(model, "relu_out").graph.output[1]
        dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
        assert out.type.tensor_type.elem_type == TensorProto.FLOAT
        assert dims == ["N", 3, 5, 5]


def test_tap_of_graph_input_and_existing_output_and_duplicates():
    model, _ = _model()
    tapped = add_taps(model, ["x", "logits", "x"])
    assert [o.name for o in tapped.graph.output] == ["logits", "x"]
    x = np.ones((1, 2, 5, 5), np.float32)
    np.testing.assert_array_equal(_session(tapped).run(["x"], {"x": x})[0], x)
    onnx.checker.check_model(tapped, full_check=True)


def test_unknown_tap_lists_close_names():
    model, _ = _model()
    with pytest.raises(LayerError, match="relu_out"):
        add_taps(model, ["relu_ot"])
    with pytest.raises(LayerError, match="No tensor named 'zzz'"):
        add_taps(model, ["zzz"])


def test_tap_info_inferred_with_large_weights_left_as_initializers():
    """Inference runs on a weightless skeleton: the tap still gets its type and shape, and the
    large weight stays an initializer of the returned model (not a graph input)."""
    w = np.random.default_rng(2).standard_normal((64, 64, 1, 1)).astype(np.float32)  # 4096 elements
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["conv_out"]), helper.make_node("Relu", ["conv_out"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    tapped = add_taps(model, "conv_out")
    out = tapped.graph.output[1]
    assert out.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 64, 3, 3]
    assert [i.name for i in tapped.graph.input] == ["x"]
    assert [t.name for t in tapped.graph.initializer] == ["w"]
    x = np.random.default_rng(3).standard_normal((2, 64, 3, 3)).astype(np.float32)
    conv = _session(tapped).run(["conv_out"], {"x": x})[0]
    np.testing.assert_allclose(conv, np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x), rtol=1e-4, atol=1e-5)
