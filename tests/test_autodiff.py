"""The rewriting core: cone selection, fan-out accumulation, outputs, errors."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.errors import LayerError, UnsupportedOpError
from engine.graph.autodiff import SEED, differentiate, grad_name
from engine.graph.coverage import gradient_blockers
from gradcheck import assert_slopes_match, check, finish, session

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


def test_gradient_blockers_agree_with_differentiate():
    """x → Relu → r → LpNormalization (no rule) → n → Relu → m → Shape/Reshape (int side path)
    → y, and a dead Relu branch: blockers name the op differentiate refuses, None where it works."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("LpNormalization", ["r"], ["n"], name="lp"),
             helper.make_node("Relu", ["n"], ["m"]), helper.make_node("Shape", ["m"], ["s"]),
             helper.make_node("Flatten", ["m"], ["f"]), helper.make_node("Reshape", ["f", "s"], ["y"]),
             helper.make_node("Relu", ["r"], ["dead"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 2, 3])],
                              [helper.make_tensor_value_info("y", F, None)])
    model = finish(graph)
    blockers = gradient_blockers(model, "y", ["x", "r", "n", "m", "y", "dead"])
    assert blockers == {"x": "LpNormalization (node lp)", "r": "LpNormalization (node lp)", "n": None, "m": None,
                        "y": None, "dead": "nothing: dead does not feed y"}
    for name, blocker in blockers.items():
        if blocker is None:
            differentiate(model, "y", [name])
        elif name != "dead":
            with pytest.raises(UnsupportedOpError, match="LpNormalization.*lp"):
                differentiate(model, "y", [name])


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


# -- whole small CNNs ------------------------------------------------------------------------------

def small_cnn(dtype=np.float32, seed=3):
    """conv-bn-relu-maxpool, a residual conv block, a strided depthwise conv, GAP, Gemm → logits."""
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    weights = {
        "w1": rng.standard_normal((8, 3, 3, 3)) * 0.4, "b1": rng.standard_normal(8) * 0.1,
        "bn_s": rng.uniform(0.5, 1.5, 8), "bn_b": rng.standard_normal(8) * 0.1,
        "bn_m": rng.standard_normal(8) * 0.1, "bn_v": rng.uniform(0.5, 1.5, 8),
        "w2": rng.standard_normal((8, 8, 3, 3)) * 0.2, "w3": rng.standard_normal((8, 1, 3, 3)) * 0.4,
        "wf": rng.standard_normal((5, 8)), "bf": rng.standard_normal(5) * 0.1,
    }
    inits = [numpy_helper.from_array(v.astype(dtype), k) for k, v in weights.items()]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1] * 4),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Add", ["r2", "p1"], ["block"]),
        helper.make_node("Conv", ["block", "w3"], ["c3"], pads=[1] * 4, strides=[2, 2], group=8),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(nodes, "small_cnn", [helper.make_tensor_value_info("image", elem, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("logits", elem, None)], initializer=inits)
    return finish(graph)


@pytest.mark.parametrize("tap", ["image", "n1", "block", "gap"])
def test_small_cnn_gradients_match_finite_differences(tap):
    """Gradient from the rewritten float32 model on ORT vs float64 central differences at the tap
    (``n1`` is pre-ReLU: taps right after a ReLU feeding a MaxPool have exact ties at 0)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 12, 12))
    seed = rng.standard_normal((2, 5))
    got = session(differentiate(small_cnn(), "logits", [tap])).run(
        [grad_name(tap)], {"image": x.astype(np.float32), SEED: seed.astype(np.float32)})[0]
    assert_slopes_match(got, small_cnn(np.float64), "logits", x, seed, tap, rng, rounds=3, rtol=1e-4)


def test_batch_1_and_batch_8_give_the_same_gradients():
    rewritten = session(differentiate(small_cnn(), "logits", ["image", "block"]))
    rng = np.random.default_rng(11)
    x = rng.standard_normal((8, 3, 12, 12)).astype(np.float32)
    seeds = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 8)] * rng.uniform(0.5, 2, (8, 1)).astype(np.float32)
    names = ["logits", grad_name("image"), grad_name("block")]
    batch = rewritten.run(names, {"image": x, SEED: seeds})
    for i in range(8):
        single = rewritten.run(names, {"image": x[i:i + 1], SEED: seeds[i:i + 1]})
        for b, s in zip(batch, single):
            np.testing.assert_allclose(b[i:i + 1], s, rtol=1e-5, atol=1e-6)
    assert np.abs(batch[1]).max() > 0


def test_axes_from_a_constant_node():
    nodes = [helper.make_node("Constant", [], ["axes"], value_ints=[1, 2]),
             helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 3, 4])],
                              [helper.make_tensor_value_info("y", F, None)])
    check(lambda dt: finish(graph, opset=18))


def test_differentiating_twice_is_refused():
    once = differentiate(fanout_model(), "y", ["x"])
    with pytest.raises(LayerError, match="already differentiated"):
        differentiate(once, "y", ["x"])


def test_integer_tensor_request_is_refused():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("ArgMax", ["r"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    with pytest.raises(LayerError, match="float"):
        differentiate(finish(graph), "y", ["x"])


def test_backward_tensors_keep_the_batch_name():
    """Each gradient a rule returns is declared with its forward tensor's shape, so shape
    inference (ORT's too) keeps the batch's name through rules that compute a dim (the small
    MaxPool's scatter reshapes to [-1, C, H, W]). ORT's NCHWc layout needs the name to keep a
    gradient times its forward mask in the blocked layout."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w", (8, 3, 3, 3)), ("wf", (5, 8)))]
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1] * 4),
             helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("MaxPool", ["s"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4),
             helper.make_node("GlobalAveragePool", ["p"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "wf"], ["logits"], transB=1)]
    model = finish(helper.make_graph(nodes, "pooled", [helper.make_tensor_value_info("image", 1, ["N", 3, 12, 12])],
                                     [helper.make_tensor_value_info("logits", 1, None)], initializer=inits))
    rewritten = onnx.shape_inference.infer_shapes(differentiate(model, "logits", ["image"]))
    dims = {vi.name: vi.type.tensor_type.shape.dim for vi in rewritten.graph.value_info}
    binary = [n for n in rewritten.graph.node[len(model.graph.node):] if n.op_type in ("Mul", "Add", "Sum")]
    images = {i for n in binary for i in n.input if len(dims.get(i, [])) == 4}
    assert any(n.op_type == "ScatterElements" for n in rewritten.graph.node)
    assert len(images) >= 3 and all(dims[t][0].dim_param == "N" for t in images), \
        [(t, dims[t][0]) for t in images if dims[t][0].dim_param != "N"]
