"""The rewriting core: cone selection, fan-out accumulation, outputs, errors."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.errors import LayerError, UnsupportedOpError
from engine.graph.autodiff import SEED, differentiate, grad_name
from gradcheck import check, finish, session

F = TensorProto.DOUBLE


def fanout_model(dtype=np.float64):
    """x → a = tanh(x) → y = a·a + sigmoid(a) + (x·w): fan-out at x and at a; w is a weight."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    w = numpy_helper.from_array(np.linspace(-1, 1, 6).reshape(1, 6).astype(dtype), "w")
    nodes = [helper.make_node("Tanh", ["x"], ["a"], name="tanh"),
             helper.make_node("Mul", ["a", "a"], ["aa"], name="square"),
             helper.make_node("Sigmoid", ["a"], ["s"], name="sig"),
             helper.make_node("Mul", ["x", "w"], ["xw"], name="scale"),
             helper.make_node("Sum", ["aa", "s", "xw"], ["y"], name="sum"),
             helper.make_node("Relu", ["y"], ["side"], name="side_branch")]
    graph = helper.make_graph(nodes, "fanout", [helper.make_tensor_value_info("x", elem, ["N", 6])],
                              [helper.make_tensor_value_info("y", elem, None),
                               helper.make_tensor_value_info("side", elem, None)], initializer=[w])
    return finish(graph)


def test_fanout_gradients_match_finite_differences():
    check(fanout_model, output="y")


def test_intermediate_and_input_gradients_together():
    model = fanout_model()
    rewritten = differentiate(model, "y", ["x", "a"])
    onnx.checker.check_model(rewritten, full_check=True)
    x = np.random.default_rng(0).standard_normal((3, 6))
    seed = np.random.default_rng(1).standard_normal((3, 6))
    y, side, gx, ga = session(rewritten).run(["y", "side", "x__grad", "a__grad"], {"x": x, SEED: seed})
    a = np.tanh(x)
    sig = 1 / (1 + np.exp(-a))
    ga_ref = seed * (2 * a + sig * (1 - sig))
    np.testing.assert_allclose(ga, ga_ref, rtol=1e-12)
    np.testing.assert_allclose(gx, ga_ref * (1 - a**2) + seed * np.linspace(-1, 1, 6), rtol=1e-12)
    # The original outputs are kept, in order, and unchanged.
    assert [o.name for o in rewritten.graph.output] == ["y", "side", "x__grad", "a__grad"]
    np.testing.assert_allclose(side, np.maximum(y, 0))


def test_only_the_cone_is_differentiated():
    model = fanout_model()
    rewritten = differentiate(model, "y", ["a"])
    added = rewritten.graph.node[len(model.graph.node):]
    # Nothing upstream of `a` (Tanh, x·w) and nothing off the path (side branch) gets a backward node.
    assert not any(n.op_type in ("Tanh", "Relu") or "scale" in n.name for n in added)
    assert [i.name for i in rewritten.graph.input] == ["x", SEED]
    seed_dims = [d.dim_param or d.dim_value for d in rewritten.graph.input[1].type.tensor_type.shape.dim]
    assert seed_dims == ["N", 6]


def test_gradient_of_unreachable_tensor_is_zero():
    model = fanout_model()
    rewritten = differentiate(model, "y", ["side"])  # `side` is downstream of y
    g = session(rewritten).run([grad_name("side")], {"x": np.ones((2, 6)), SEED: np.ones((2, 6))})[0]
    np.testing.assert_array_equal(g, np.zeros((2, 6)))


def test_unsupported_op_names_op_and_node():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Det", ["r"], ["y"], name="the_det")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 3, 3])],
                              [helper.make_tensor_value_info("y", F, None)])
    with pytest.raises(UnsupportedOpError, match="Det.*the_det"):
        differentiate(finish(graph), "y", ["x"])
    # Off the path the op does not matter: the gradient w.r.t. y itself needs no rule.
    differentiate(finish(graph), "y", ["y"])


def test_integer_side_paths_need_no_rule():
    """Shape → Reshape carries no gradient through its int64 shape input."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Reshape", ["f", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 2, 3])],
                              [helper.make_tensor_value_info("y", F, None)])
    check(lambda dt: finish(graph))


@pytest.mark.parametrize("request_", [("nope", ["x"]), ("y", ["nope"]), ("y", ["w"])])
def test_bad_requests_raise_layer_error(request_):
    with pytest.raises(LayerError):
        differentiate(fanout_model(), *request_)


def test_unknown_mode():
    with pytest.raises(LayerError, match="mode"):
        differentiate(fanout_model(), "y", ["x"], mode="smooth")
