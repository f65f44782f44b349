"""Spatial means run as GlobalAveragePool (engine/graph/means.py): the same outputs and gradients
(central differences), names kept, and only ReduceMeans over H and W of 4-D float tensors replaced."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.graph.means import means_as_pools
from gradcheck import check, finish, random_inputs, session


def mean_model(dtype=np.float32, axes=(2, 3), keepdims=1, shape=("N", 4, 5, 3), axes_input=False):
    """x → Tanh → ReduceMean(axes, keepdims) → Tanh → y; ``axes_input``: the axes as an input (opset 18)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    if axes_input:
        mean = helper.make_node("ReduceMean", ["t", "axes"], ["m"], name="mean", keepdims=keepdims)
        inits = [numpy_helper.from_array(np.array(axes, np.int64), "axes")]
    else:
        mean = helper.make_node("ReduceMean", ["t"], ["m"], name="mean", axes=list(axes), keepdims=keepdims)
        inits = []
    graph = helper.make_graph([helper.make_node("Tanh", ["x"], ["t"]), mean, helper.make_node("Tanh", ["m"], ["y"])],
                              "mean", [helper.make_tensor_value_info("x", elem, list(shape))],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    return finish(graph, opset=18 if axes_input else 17)


@pytest.mark.parametrize("axes,keepdims,axes_input", [((2, 3), 1, False), ((-1, -2), 1, False), ((3, 2), 0, False),
                                                      ((2, 3), 1, True), ((-2, -1), 0, True)])
def test_spatial_mean_becomes_a_pool(axes, keepdims, axes_input):
    original = mean_model(axes=axes, keepdims=keepdims, axes_input=axes_input)
    pooled = means_as_pools(mean_model(axes=axes, keepdims=keepdims, axes_input=axes_input))
    assert [n.op_type for n in pooled.graph.node] == ["Tanh", "GlobalAveragePool", *["Flatten"][:1 - keepdims], "Tanh"]
    assert "m" in pooled.graph.node[-2].output and pooled.graph.node[1].name == "mean"
    x = random_inputs(original, np.random.default_rng(0), batch=3)
    np.testing.assert_allclose(session(pooled).run(["y"], x)[0], session(original).run(["y"], x)[0], rtol=1e-6)
    check(lambda dt: means_as_pools(mean_model(dt, axes, keepdims, axes_input=axes_input)))


@pytest.mark.parametrize("axes,shape", [((1,), ("N", 4, 5, 3)), ((2,), ("N", 4, 5, 3)), ((1, 2, 3), ("N", 4, 5, 3)),
                                        ((2,), ("N", 4, 5))])
def test_other_means_stay(axes, shape):
    """Over the channels, one spatial axis, everything, or a 3-D tensor: not a spatial mean of an image."""
    model = means_as_pools(mean_model(axes=axes, shape=shape))
    assert [n.op_type for n in model.graph.node] == ["Tanh", "ReduceMean", "Tanh"]


def test_integer_means_stay():
    graph = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3])], "int",
                              [helper.make_tensor_value_info("x", TensorProto.INT32, ["N", 4, 5, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, None)])
    assert [n.op_type for n in means_as_pools(finish(graph)).graph.node] == ["ReduceMean"]
