"""Pooling and reduction rules against central finite differences through ORT."""
import numpy as np
import pytest

from engine.graph.autodiff import differentiate
from gradcheck import check, node_model

POOLS = {
    "k2s2": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "k3s2-overlap-pad": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "k3s1-overlap": dict(kernel_shape=[3, 3]),
    "k3s2-ceil": dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "k3s2-ceil-pad": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 0], ceil_mode=1),
    "k2s3-gaps": dict(kernel_shape=[2, 2], strides=[3, 3]),
    "k21s21-pad": dict(kernel_shape=[2, 1], strides=[2, 1], pads=[1, 0, 1, 0]),
    "same-upper": dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
    "dilated": dict(kernel_shape=[2, 2], dilations=[2, 2], strides=[1, 2]),
}
X = ("N", 3, 8, 7)


@pytest.mark.parametrize("case", POOLS)
def test_max_pool(case):
    check(lambda dt: node_model("MaxPool", [X], dt, **POOLS[case]))


@pytest.mark.parametrize("case,unpool", [("k2s2", True), ("k2s3-gaps", True), ("k3s2-overlap-pad", False)])
def test_max_pool_backward_op(case, unpool):
    """Windows that do not overlap: MaxUnpool (float32); overlapping ones: ScatterElements."""
    rewritten = differentiate(node_model("MaxPool", [X], np.float32, **POOLS[case]), "out0", ["in0"])
    assert ("MaxUnpool" in [n.op_type for n in rewritten.graph.node]) == unpool


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
