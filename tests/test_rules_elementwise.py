"""Each arithmetic / pass-through rule alone against central finite differences through ORT."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.graph.autodiff import SEED, differentiate
from engine.graph.nodes import attrs
from gradcheck import check, finish, node_model, random_inputs, session

B = np.random.default_rng(1).standard_normal((3, 1, 1)) + 2.5  # a broadcast weight away from 0


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shapes", [[("N", 3, 4, 4), ("N", 3, 4, 4)], [("N", 3, 4, 4), (1, 3, 1, 4)],
                                    [(3, 1, 4), ("N", 1, 4, 1)]])
def test_binary_broadcast(op, shapes):
    def feeds(rng, dtype):
        a = rng.standard_normal((2, *shapes[0][1:]) if shapes[0][0] == "N" else shapes[0])
        b = rng.standard_normal((2, *shapes[1][1:]) if shapes[1][0] == "N" else shapes[1])
        return {"in0": a.astype(dtype), "in1": (np.sign(b) * (np.abs(b) + 1)).astype(dtype)}

    check(lambda dt: node_model(op, shapes, dt), feeds=feeds)


@pytest.mark.parametrize("channels,blocked", [(16, True), (12, False)])
def test_per_channel_factor(channels, blocked):
    """x · s with s one factor per channel and image (a squeeze-excitation's gate), in ORT's NCHWc
    layout (C a multiple of 16) or not: s's gradient, summed over the image, from a depthwise Conv
    of ones instead of ReduceSum, and x's from s spread over the image by a padded depthwise Conv
    first (a Mul of equal shapes then), which the forward Mul reads too. Both against central
    differences, the forward's output against the model's."""
    def make(dt):
        return node_model("Mul", [("N", channels, 5, 4), ("N", channels, 1, 1)], dt)
    check(make, wrt=["in0", "in1"])
    rewritten = differentiate(make(np.float32), "out0", ["in0", "in1"])
    convs = [n for n in rewritten.graph.node if n.op_type == "Conv"]
    assert [list(attrs(n).get("pads", [])) for n in convs] == ([[4, 3, 4, 3], []] if blocked else [])
    product = next(n for n in rewritten.graph.node if "out0" in n.output)
    assert list(product.input) == (["in0", convs[0].output[0]] if blocked else ["in0", "in1"])
    feeds = random_inputs(make(np.float32), np.random.default_rng(0), batch=3)
    np.testing.assert_array_equal(session(rewritten).run(["out0"], {**feeds, SEED: np.zeros((3, channels, 5, 4),
                                                                                           np.float32)})[0],
                                  session(make(np.float32)).run(["out0"], feeds)[0])


def test_gate_after_a_hard_swish_of_a_conv():
    """A squeeze-excitation's gate on x · HardSigmoid(x) with x from a Conv, 24 channels (ORT pads
    them to 32 and keeps the HardSwish blocked): the gate is spread over the image too."""
    def make(dt):
        weight = numpy_helper.from_array(np.eye(24, dtype=dt).reshape(24, 24, 1, 1), "w")
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("HardSigmoid", ["c"], ["h"], alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["c", "h"], ["a"]), helper.make_node("Mul", ["a", "s"], ["y"])], "se",
            [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(np.dtype(dt)), ["N", 24, 4, 5]),
             helper.make_tensor_value_info("s", helper.np_dtype_to_tensor_dtype(np.dtype(dt)), ["N", 24, 1, 1])],
            [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(dt)), None)], [weight])
        return finish(graph)
    check(make, wrt=["x", "s"], output="y", dtypes=(np.float32,))
    convs = [n for n in differentiate(make(np.float32), "y", ["x", "s"]).graph.node if n.op_type == "Conv"]
    assert [3, 4, 3, 4] in [list(attrs(n).get("pads", [])) for n in convs]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_binary_with_weight(op):
    check(lambda dt: node_model(op, [("N", 3, 4, 4), B], dt))


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
def test_variadic(op):
    check(lambda dt: node_model(op, [("N", 3, 4, 4), (1, 3, 1, 4), ("N", 3, 4, 4)], dt))


@pytest.mark.parametrize("op", ["Identity", "Dropout"])
def test_passthrough(op):
    check(lambda dt: node_model(op, [("N", 3, 4)], dt))


def test_cast_roundtrip():
    def make(dtype):
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        nodes = [helper.make_node("Cast", ["x"], ["c"], to=TensorProto.DOUBLE), helper.make_node("Tanh", ["c"], ["t"]),
                 helper.make_node("Cast", ["t"], ["y"], to=elem)]
        return finish(helper.make_graph(nodes, "cast", [helper.make_tensor_value_info("x", elem, ["N", 5])],
                                        [helper.make_tensor_value_info("y", elem, None)]))

    check(make, dtypes=(np.float32,))  # float32 input, float64 inside


def test_runtime_scalar_chain_is_one_pass():
    """A dynamic int8 layer's (x / s + bias) → no-op Cast → · k, with s and k run-time scalars:
    the gradient of x is right and only one backward node reads the seed-sized gradient (the two
    scalars are combined first; the float → float Cast adds nothing)."""
    def make(dtype):
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        nodes = [helper.make_node("Div", ["x", "s"], ["u"]), helper.make_node("Add", ["u", "bias"], ["b"]),
                 helper.make_node("Cast", ["b"], ["c"], to=elem), helper.make_node("Mul", ["c", "k"], ["y"])]
        inputs = [helper.make_tensor_value_info("x", elem, ["N", 3, 4]), helper.make_tensor_value_info("s", elem, []),
                  helper.make_tensor_value_info("k", elem, [1])]
        return finish(helper.make_graph(nodes, "scales", inputs, [helper.make_tensor_value_info("y", elem, None)],
                                        initializer=[numpy_helper.from_array(B[:, :, 0].astype(dtype), "bias")]))

    def feeds(rng, dtype):
        return {"x": rng.standard_normal((2, 3, 4)).astype(dtype), "s": np.array(0.7, dtype),
                "k": np.array([1.3], dtype)}

    check(make, wrt=["x"], feeds=feeds)
    backward = [n for n in differentiate(make(np.float32), "y", ["x"]).graph.node[4:] if n.op_type != "Identity"]
    assert [n.op_type for n in backward] == ["Div", "Mul"]  # k / s, then seed · (k / s)
    assert set(backward[0].input) == {"k", "s"} and SEED in backward[1].input


def test_cast_like():
    def make(dtype):
        nodes = [helper.make_node("CastLike", ["x", "like"], ["c"]), helper.make_node("Tanh", ["c"], ["y"])]
        return finish(helper.make_graph(nodes, "castlike", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                                        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
                                        initializer=[numpy_helper.from_array(np.zeros(1), "like")]))

    check(make, dtypes=(np.float32,))  # float32 input, float64 inside


def test_where_with_broadcast_branches():
    condition = np.random.default_rng(3).random((1, 3, 4, 4)) > 0.5
    check(lambda dt: node_model("Where", [condition, ("N", 3, 4, 4), (1, 3, 1, 4)], dt))


def test_piecewise_constant_ops_pass_no_gradient():
    def make(dtype):
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        nodes = [helper.make_node("Floor", ["x"], ["f"]), helper.make_node("Sign", ["x"], ["s"]),
                 helper.make_node("Sum", ["x", "f", "s"], ["y"])]
        return finish(helper.make_graph(nodes, "steps", [helper.make_tensor_value_info("x", elem, ["N", 5])],
                                        [helper.make_tensor_value_info("y", elem, None)]))

    check(make)
