"""Pooling and reduction rules against central finite differences through ORT."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from engine.graph.autodiff import SEED, differentiate
from gradcheck import check, node_model

POOLS = {
    "k2s2": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "k3s2-overlap-pad": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "k3s1-overlap": dict(kernel_shape=[3, 3]),
    "k3s2-ceil": dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "k3s2-ceil-pad": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 0], ceil_mode=1),
    "k2s3-gaps": dict(kernel_shape=[2, 2], strides=[3, 3]),
    "same-upper": dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
    "dilated": dict(kernel_shape=[2, 2], dilations=[2, 2], strides=[1, 2]),
}
X = ("N", 3, 8, 7)


@pytest.mark.parametrize("case", POOLS)
def test_max_pool(case):
    check(lambda dt: node_model("MaxPool", [X], dt, **POOLS[case]))


def _indices_gradient(x, seed, attributes):
    """Reference: ORT's MaxPool Indices, the seed scatter-added at them (float32)."""
    graph = helper.make_graph([helper.make_node("MaxPool", ["x"], ["y", "i"], **attributes)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("i", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _, indices = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    grad = np.zeros(x.size, np.float32)
    np.add.at(grad, indices.ravel(), seed.ravel())
    return grad.reshape(x.shape)


@pytest.mark.parametrize("case", POOLS)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_float32_matches_the_indices(case, ties):
    """The float32 rule (windows as channels, no Indices output) sends each window's gradient to
    its first maximum in row-major order, as the Indices do; ``ties``: values in {0, 1, 2}, so
    most windows hold several maxima (a ReLU's zeros, saturated pixels)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 8, 7)).astype(np.float32)
    x = np.round(np.clip(x, 0, 2)).astype(np.float32) if ties else x
    model = node_model("MaxPool", [X], np.float32, **POOLS[case])
    rewritten = differentiate(model, "out0", ["in0"])
    assert "ScatterElements" not in [n.op_type for n in rewritten.graph.node]
    session = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"in0": x})
    seed = rng.standard_normal(y.shape).astype(np.float32)
    (got,) = session.run(["in0__grad"], {"in0": x, SEED: seed})
    np.testing.assert_allclose(got, _indices_gradient(x, seed, POOLS[case]), rtol=1e-6, atol=1e-6)


def test_max_pool_with_its_own_indices_output():
    check(lambda dt: node_model("MaxPool", [X], dt, outputs=2, **POOLS["k3s2-overlap-pad"]), output="out0")


@pytest.mark.parametrize("case", [c for c in POOLS if c != "dilated"])
@pytest.mark.parametrize("include_pad", [0, 1])
def test_average_pool(case, include_pad):
    check(lambda dt: node_model("AveragePool", [X], dt, count_include_pad=include_pad, **POOLS[case]))


def test_average_pool_dilated_opset19():
    check(lambda dt: node_model("AveragePool", [X], dt, opset=19, **POOLS["dilated"]))


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pools(op):
    check(lambda dt: node_model(op, [X], dt))


def test_global_average_pool_with_symbolic_spatial_dims():
    """Dynamic H×W (the count of positions is computed at run time); the check runs at 2×2."""
    check(lambda dt: node_model("GlobalAveragePool", [("N", 3, "H", "W")], dt))


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("axes", [[1], [-1, 2], [0, 3], None])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_axes_as_input(op, axes, keepdims):
    inputs = [X] + ([np.array(axes)] if axes is not None else [])
    check(lambda dt: node_model(op, inputs, dt, opset=18, keepdims=keepdims))


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_axes_as_attribute(op, keepdims):
    check(lambda dt: node_model(op, [X], dt, opset=11, keepdims=keepdims, axes=[2, 3]))


def test_reduce_noop_with_empty_axes():
    check(lambda dt: node_model("ReduceSum", [X], dt, opset=18, noop_with_empty_axes=1))
