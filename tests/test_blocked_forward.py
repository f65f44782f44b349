"""The rewritten forward's blocked forms (engine/graph/blocked_forward.py): spatial means as
GlobalAveragePool, constant scales and shifts folded into the Conv before them. The same outputs
and gradients (central differences), names kept, and nothing rewritten that should not be."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.graph.blocked_forward import affine_into_convs, means_as_pools
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


def affine_model(dtype=np.float32, steps=(("Mul", (4, 1, 1)), ("Add", (1,))), bias=True, extra_reader=None,
                 group=1):
    """x → Conv (3×3, 4 outputs, pads 1) → each step with a constant of its shape → Tanh → y;
    ``extra_reader``: the Conv's output is also a graph "output", or read by another "node"."""
    rng = np.random.default_rng(0)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array((rng.standard_normal((4, 4 // group, 3, 3)) * 0.1).astype(dtype), "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(4).astype(dtype), "b"))
    nodes = [helper.make_node("Conv", ["x", "w", *(["b"] if bias else [])], ["c0"], name="conv", pads=[1, 1, 1, 1],
                              group=group)]
    for i, (op, shape) in enumerate(steps):
        inits.append(numpy_helper.from_array(rng.uniform(0.5, 1, shape).astype(dtype), f"k{i}"))
        nodes.append(helper.make_node(op, [f"c{i}", f"k{i}"], [f"c{i + 1}"]))
    nodes.append(helper.make_node("Tanh", [f"c{len(steps)}"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", elem, None)]
    if extra_reader == "node":
        nodes.append(helper.make_node("Tanh", ["c0"], ["z"]))
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("c0" if extra_reader == "output" else "z", elem, None))
    graph = helper.make_graph(nodes, "affine", [helper.make_tensor_value_info("x", elem, ["N", 4, 5, 6])], outputs,
                              inits)
    return finish(graph)


@pytest.mark.parametrize("steps,bias,group", [((("Mul", (4, 1, 1)), ("Add", (1,))), True, 1),
                                              ((("Mul", (1,)), ("Add", (1, 4, 1, 1))), False, 1),
                                              ((("Mul", ()),), True, 2), ((("Add", (4, 1, 1)),), True, 1)])
def test_constant_affine_after_a_conv_folds_into_it(steps, bias, group):
    original = affine_model(steps=steps, bias=bias, group=group)
    folded = affine_into_convs(affine_model(steps=steps, bias=bias, group=group))
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Tanh"]
    assert folded.graph.node[0].output[0] == f"c{len(steps)}" and folded.graph.node[0].name == "conv"
    x = random_inputs(original, np.random.default_rng(1), batch=2)
    np.testing.assert_allclose(session(folded).run(["y"], x)[0], session(original).run(["y"], x)[0], rtol=1e-5,
                               atol=1e-6)
    check(lambda dt: affine_into_convs(affine_model(dt, steps, bias, group=group)))


@pytest.mark.parametrize("steps,extra_reader", [((("Mul", (4, 5, 6)),), None), ((("Sub", (1,)),), None),
                                                ((("Mul", (1,)),), "output"), ((("Mul", (1,)),), "node")])
def test_other_affines_stay(steps, extra_reader):
    """A factor per position (not per channel), a Sub, or a Conv output that something else reads
    too: nothing folds."""
    model = affine_into_convs(affine_model(steps=steps, extra_reader=extra_reader))
    assert [n.op_type for n in model.graph.node][:3] == ["Conv", steps[0][0], "Tanh"]


def test_a_shared_weight_is_left_as_it_was():
    """Two Convs share one weight, one of them scaled after: the scaled one gets its own folded copy."""
    model = affine_model(steps=(("Mul", (1,)),))
    graph = model.graph
    graph.node.insert(1, helper.make_node("Conv", ["x", "w", "b"], ["twin"], pads=[1, 1, 1, 1]))
    graph.output.append(helper.make_tensor_value_info("twin", TensorProto.FLOAT, None))
    x = random_inputs(model, np.random.default_rng(2), batch=2)
    before = session(model).run(["twin", "y"], x)
    folded = affine_into_convs(model)
    assert [n.input[1] for n in folded.graph.node if n.op_type == "Conv"] == ["w_folded", "w"]
    for got, want in zip(session(folded).run(["twin", "y"], x), before):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_one_dimensional_conv_stays():
    """Only image (2-D) Convs fold: a 1-D Conv's scaled output stays as it is."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([2.0], np.float32), "a")]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1]),
                               helper.make_node("Mul", ["c", "a"], ["y"])], "conv1d",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    assert [n.op_type for n in affine_into_convs(finish(graph)).graph.node] == ["Conv", "Mul"]
