"""Each activation / softmax rule alone against central finite differences through ORT."""
import numpy as np
import onnxruntime as ort
import pytest

from engine.graph.autodiff import SEED, differentiate, grad_name
from gradcheck import check, node_model, session

X = ("N", 3, 5, 5)


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Sigmoid", {}), ("Tanh", {}),
                                      ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {})])
def test_pointwise(op, attrs):
    # Spread inputs so HardSwish / HardSigmoid see all three pieces.
    check(lambda dt: node_model(op, [X], dt, **attrs),
          feeds=lambda rng, dt: {"in0": (rng.standard_normal((2, 3, 5, 5)) * 3).astype(dt)})


def test_prelu_per_channel():
    slope = np.array([0.1, -0.5, 2.0]).reshape(3, 1, 1)
    check(lambda dt: node_model("PRelu", [X, slope], dt))


@pytest.mark.parametrize("bounds", [(-0.5, 0.7), (0.0, None), (None, 0.3)])
def test_clip_bounds_as_inputs(bounds):
    inputs = [X] + [np.array(b) if b is not None else "" for b in bounds]
    while inputs[-1] == "":
        inputs.pop()
    check(lambda dt: node_model("Clip", inputs, dt))


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis", [(17, 1), (17, -1), (11, 1), (11, 2)])
def test_softmax_semantics(op, opset, axis):
    # opset 11: softmax over the flattened trailing axes from `axis` on.
    check(lambda dt: node_model(op, [("N", 3, 4, 2)], dt, opset=opset, axis=axis))


def test_clip_bounds_as_attributes_before_opset_11():
    # float32 here (no float64 kernel): keep inputs 0.1 away from the kinks at the bounds.
    def feeds(rng, dt):
        centers = rng.choice([-1.5, -0.9, -0.2, 0.1, 0.4, 1.2], (2, 3, 5, 5))
        return {"in0": (centers + rng.uniform(-0.1, 0.1, centers.shape)).astype(dt)}

    check(lambda dt: node_model("Clip", [X], dt, opset=10, min=-0.5, max=0.7), feeds=feeds)



@pytest.mark.parametrize("channels", [3, 8, 16])
def test_relu_mask_is_exact_at_zero_and_at_tiny_values(channels):
    """16 channels: the mask is a depthwise step Conv (kept in ORT's NCHWc layout); 3, and 8
    (which ORT would pad to a block of 16): one HardSigmoid step."""
    rewritten = differentiate(node_model("Relu", [("N", channels, 2, 2)], np.float32), "out0", ["in0"])
    assert ("Conv" in [n.op_type for n in rewritten.graph.node]) == (channels == 16)
    values = np.array([0.0, -0.0, 1.2e-38, -1e-30, 1e-30, 3e38, -3e38, 0.5], np.float32)
    x = np.resize(values, (2, channels, 2, 2)).astype(np.float32)
    seed = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    (got,) = session(rewritten).run(["in0__grad"], {"in0": x, SEED: seed})
    np.testing.assert_array_equal(got, np.where(x > 0, seed, 0).astype(np.float32))


@pytest.mark.parametrize("shape", [("N", 3, 5, 5), ("N", 7)])
def test_float32_relu_mask_is_exact(shape):
    """The float32 ReLU mask (one HardSigmoid step) is [y > 0] exactly: zeros, the smallest
    normal float, large values and values of either sign."""
    model = node_model("Relu", [shape], np.float32)
    rewritten = differentiate(model, "out0", ["in0"])
    assert "HardSigmoid" in [n.op_type for n in rewritten.graph.node]
    rng = np.random.default_rng(0)
    dims = [2 if d == "N" else d for d in shape]
    x = rng.standard_normal(dims).astype(np.float32)
    x.flat[:4] = [0.0, np.finfo(np.float32).tiny, -np.finfo(np.float32).tiny, 3e38]
    seed = rng.standard_normal(dims).astype(np.float32)
    session = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(["in0__grad"], {"in0": x, SEED: seed})
    np.testing.assert_array_equal(got, seed * (x > 0))


@pytest.mark.parametrize("op,attrs", [("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
                                      ("HardSigmoid", {"alpha": 2.5, "beta": 0.5}), ("HardSwish", {})])
def test_hard_activations_on_image_tensors(op, attrs):
    """16 channels: the slopes come from clipped depthwise Convs (ORT's NCHWc layout)."""
    assert "Conv" in [n.op_type for n in differentiate(node_model(op, [("N", 16, 3, 3)], np.float32, **attrs),
                                                       "out0", ["in0"]).graph.node]
    check(lambda dt: node_model(op, [("N", 16, 3, 3)], dt, **attrs),
          feeds=lambda rng, dt: {"in0": (rng.standard_normal((2, 16, 3, 3)) * 3).astype(dt)})


def after_a_conv(op, channels, dt, **attrs):
    """``op`` on the output of a 1×1 Conv of the input (``channels`` channels, 3×3) whose weight is
    the identity: the op sees the input's values, which the check keeps away from its kinks."""
    from onnx import helper, numpy_helper
    from gradcheck import finish
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
    weight = np.eye(channels).reshape(channels, channels, 1, 1)
    return finish(helper.make_graph(
        [helper.make_node("Conv", ["in0", "w"], ["x"]), helper.make_node(op, ["x"], ["out0"], **attrs)], "after_a_conv",
        [helper.make_tensor_value_info("in0", elem, ["N", channels, 3, 3])],
        [helper.make_tensor_value_info("out0", elem, None)], [numpy_helper.from_array(weight.astype(dt), "w")]))


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {})])
@pytest.mark.parametrize("conv", [True, False])
def test_padded_channel_counts_take_the_blocked_forms_after_convs(op, attrs, conv):
    """24 channels, which ORT pads up to whole NCHWc blocks where Convs make them: the mask or the
    slopes come from depthwise Convs after a Conv, from elementwise ops on a tensor that no Conv
    made (a model input here; a float16 model's Cast, a DenseNet's Concat of 12-channel pieces in
    the corpus); both against central differences."""
    def make(dt):
        return after_a_conv(op, 24, dt, **attrs) if conv else node_model(op, [("N", 24, 3, 3)], dt, **attrs)

    rewritten = differentiate(make(np.float32), "out0", ["in0"])
    depthwise = [n for n in rewritten.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i == 24 for a in n.attribute)]
    assert bool(depthwise) == conv

    def feeds(rng, dt):  # 0.4 or more from every kink (0; −4/3 and 2; ±3)
        centers = rng.choice([-3.6, -2.2, -0.8, 0.5, 1.4, 2.5, 3.7], (2, 24, 3, 3))
        return {"in0": (centers + rng.uniform(-0.1, 0.1, centers.shape)).astype(dt)}

    check(make, feeds=feeds)


def conv_then_hard_swish(dt, producer, gated):
    """A 16-channel 1×1 Conv (its biases spread the channels over the three pieces) feeding a
    HardSwish directly ("Conv"), through a BatchNormalization, or through an Add of the input; the
    HardSwish as the op, or x · HardSigmoid(x; 1/6, 1/2) (``gated``)."""
    from onnx import helper, numpy_helper
    from gradcheck import finish
    rng = np.random.default_rng(3)
    weights = {"w": rng.standard_normal((16, 16, 1, 1)) * 0.4, "b": rng.standard_normal(16) * 2}
    nodes = [helper.make_node("Conv", ["in", "w", "b"], ["x" if producer == "Conv" else "c"])]
    if producer == "BatchNormalization":
        weights.update(scale=rng.uniform(0.5, 2, 16), bias=rng.standard_normal(16), mean=rng.standard_normal(16),
                       var=rng.uniform(0.5, 2, 16))
        nodes.append(helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["x"]))
    elif producer == "Add":
        nodes.append(helper.make_node("Add", ["c", "in"], ["x"]))
    if gated:
        nodes += [helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1 / 6, beta=0.5),
                  helper.make_node("Mul", ["x", "h"], ["y"])]
    else:
        nodes.append(helper.make_node("HardSwish", ["x"], ["y"]))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
    return finish(helper.make_graph(
        nodes, "conv_hard_swish", [helper.make_tensor_value_info("in", elem, ["N", 16, 4, 4])],
        [helper.make_tensor_value_info("y", elem, None)],
        [numpy_helper.from_array(v.astype(dt), k) for k, v in weights.items()]))


@pytest.mark.parametrize("producer,folded", [("BatchNormalization", True), ("Conv", True), ("Add", False)])
@pytest.mark.parametrize("gated", [False, True])
def test_hard_swish_backward_reuses_the_forward_gate(producer, folded, gated):
    """The backward reads the forward's HardSigmoid (the op becomes x · HardSigmoid(x)) and adds
    two clipped steps; its factor 2 is folded into the Conv's weight where a Conv or a
    BatchNormalization computes x, else one depthwise Conv applies it. Against the gradient in
    float64 from torch's slope (0 below −3, x/3 + 1/2 up to 3, 1 above): finite differences
    would cross the kinks."""
    from onnx import numpy_helper
    model = conv_then_hard_swish(np.float32, producer, gated)
    rewritten = differentiate(model, "y", ["in"])
    ops = [n.op_type for n in rewritten.graph.node]
    assert "HardSwish" not in ops and ops.count("HardSigmoid") == 1
    # forward, the two steps, backward (and a depthwise Conv for the factor 2 where it cannot fold)
    assert ops.count("Conv") == 1 + 2 + 1 + (not folded)
    assert ops.count("Mul") == 2  # forward x · h, backward dy · slope / 2

    rng = np.random.default_rng(0)
    x_in = rng.uniform(-1, 1, (2, 16, 4, 4)).astype(np.float32)
    seed = rng.standard_normal((2, 16, 4, 4)).astype(np.float32)
    got = session(rewritten).run(["in__grad"], {"in": x_in, SEED: seed})[0]
    p = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    w = p["w"][:, :, 0, 0]
    x = np.einsum("oc,nchw->nohw", w, x_in) + p["b"][:, None, None]
    scale = np.ones(16)
    if producer == "BatchNormalization":
        scale = p["scale"] / np.sqrt(p["var"] + 1e-5)
        x = (x - p["mean"][:, None, None]) * scale[:, None, None] + p["bias"][:, None, None]
    elif producer == "Add":
        x = x + x_in
    assert (x < -3).any() and (x > 3).any()  # all three pieces
    dx = seed * np.where(x < -3, 0, np.where(x <= 3, x / 3 + 0.5, 1))
    expected = np.einsum("oc,nohw->nchw", w, dx * scale[:, None, None]) + (dx if producer == "Add" else 0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_hard_swish_slope_at_the_kinks():
    """Image tensors: torch's slope, 0 below -3, x/3 + 1/2 on [-3, 3], 1 above, exactly at and next
    to ±3 (the elementwise form of 3 channels rounds h to 1 one float below 3)."""
    channels = 16
    rewritten = differentiate(node_model("HardSwish", [("N", channels, 2, 2)], np.float32), "out0", ["in0"])
    kinks = [np.nextafter(np.float32(k), np.float32(k + d)) for k in (-3, 3) for d in (-1, 1)]
    values = np.array([*kinks, -3.0, 3.0, 1e30, -1e30], np.float32)
    x = np.resize(values, (2, channels, 2, 2)).astype(np.float32)
    seed = np.ones_like(x)
    (got,) = session(rewritten).run(["in0__grad"], {"in0": x, SEED: seed})
    expected = np.where(x < -3, 0, np.where(x > 3, 1, x / 3 + 0.5))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("channels,size", [(3, 2), (16, 2), (16, 1)])
def test_hard_sigmoid_slope_where_saturated(channels, size):
    """alpha where 0 < y < 1; 0 where y is 0 or 1 (saturated) and next to those: elementwise (3
    channels), from clipped Convs (16, a per-channel gate 16×1×1 too)."""
    alpha, beta = 0.2, 0.5
    rewritten = differentiate(node_model("HardSigmoid", [("N", channels, size, size)], np.float32, alpha=alpha,
                                         beta=beta), "out0", ["in0"])
    values = np.array([-2.5, 2.5, -10.0, 10.0, -2.4999, 2.4999, 0.0, 1.0, 2.5 - 2e-7, 1e-30], np.float32)
    x = np.resize(values, (2, channels, size, size)).astype(np.float32)
    y, got = session(rewritten).run(["out0", "in0__grad"], {"in0": x, SEED: np.ones_like(x)})
    np.testing.assert_allclose(got, np.where((y > 0) & (y < 1), alpha, 0), rtol=1e-6)


def gated_model(gate, channels, dt, gate_is_output=False, **attrs):
    """x · gate(x) (Swish with Sigmoid, HardSwish with HardSigmoid(1/6, 1/2)); ``gate_is_output``:
    the gate's output is a model output too, so it must keep its own gradient path."""
    from onnx import TensorProto, helper
    from gradcheck import finish
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
    nodes = [helper.make_node(gate, ["x"], ["g"], **attrs), helper.make_node("Mul", ["x", "g"], ["y"])]
    outputs = [helper.make_tensor_value_info(n, elem, None) for n in ["y", "g"][:1 + gate_is_output]]
    return finish(helper.make_graph(nodes, "gated", [helper.make_tensor_value_info("x", elem, ["N", channels, 4, 4])],
                                   outputs))


@pytest.mark.parametrize("gate,attrs", [("Sigmoid", {}), ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5})])
@pytest.mark.parametrize("channels", [3, 16])
def test_self_gated_mul_swish_and_hardswish(gate, attrs, channels):
    """x · f(x) differentiated in one go: against central differences, away from HardSwish's kinks."""
    def feeds(rng, dt):
        x = rng.uniform(-5, 5, (2, channels, 4, 4))
        return {"x": np.where(np.abs(np.abs(x) - 3) < 0.1, x + 0.3, x).astype(dt)}

    check(lambda dt: gated_model(gate, channels, dt, **attrs), feeds=feeds)
    sizes = [len(differentiate(gated_model(gate, channels, np.float32, both, **attrs), "y", ["x"]).graph.node)
             for both in (False, True)]
    assert sizes[0] < sizes[1]  # fewer ops than through the Mul and the gate apart


def test_swish_backward_stays_in_the_blocked_layout():
    """For image tensors of 16 channels the 1 − s of Swish's slope is a depthwise Conv, not a Sub
    (ORT CPU would convert s, y and dy out of its NCHWc layout and back for it); against the
    slope s + x·s·(1 − s) in float64."""
    from gradcheck import session
    rewritten = differentiate(gated_model("Sigmoid", 16, np.float32), "y", ["x"])
    assert "Sub" not in [n.op_type for n in rewritten.graph.node]
    rng = np.random.default_rng(3)
    x = rng.uniform(-8, 8, (2, 16, 4, 4)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    got = session(rewritten).run([grad_name("x")], {"x": x, SEED: dy})[0]
    s = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(got, dy * (s + x * s * (1 - s)), rtol=1e-5, atol=1e-6)


def test_self_gated_mul_keeps_the_gate_path_when_the_gate_is_also_read_elsewhere():
    check(lambda dt: gated_model("Sigmoid", 3, dt, gate_is_output=True), output="y")


@pytest.mark.parametrize("bounds", [(0.0, 6.0), (-0.5, None), (None, 0.3)])
def test_clip_passes_the_gradient_at_its_bounds_and_inside_only(bounds):
    from gradcheck import session
    inputs = [("N", 3, 2, 2)] + [np.array(b, np.float32) if b is not None else "" for b in bounds]
    while inputs[-1] == "":
        inputs.pop()
    edges = [b for b in bounds if b is not None]
    values = [v for e in edges for v in (e, np.nextafter(np.float32(e), np.float32(-9)), np.nextafter(np.float32(e), np.float32(9)))]
    x = np.resize(np.array(values + [0.1, -7.0, 7.0], np.float32), (1, 3, 2, 2)).astype(np.float32)
    dy = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    rewritten = differentiate(node_model("Clip", inputs, np.float32), "out0", ["in0"])
    (got,) = session(rewritten).run([grad_name("in0")], {"in0": x, SEED: dy})
    low, high = (np.float32(b) if b is not None else np.float32(side * np.inf) for b, side in zip(bounds, (-1, 1)))
    np.testing.assert_array_equal(got, np.where((x >= low) & (x <= high), dy, 0))


def primitive_hard_swish(channels, dt, tail="Div", x_first=True, opset=17, gate_is_output=False, conv=False):
    """x · Clip(x + 3, 0, 6) then ``tail``: "Div" (by 6, as paddle2onnx writes a HardSwish), "Mul"
    (by 1/6) or None; the Clip's bounds as inputs, or as attributes before opset 11. ``conv``: x is
    an identity 1×1 Conv of the input "in" (as a Conv, in ORT's NCHWc layout, makes it), else the input."""
    from onnx import helper, numpy_helper
    from gradcheck import finish
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
    consts = [numpy_helper.from_array(np.array(v, dt), name) for name, v in
              (("three", 3.0), ("zero", 0.0), ("six", 6.0), ("sixth", 1 / 6))]
    consts.append(numpy_helper.from_array(np.eye(channels, dtype=dt).reshape(channels, channels, 1, 1), "eye"))
    clip = (helper.make_node("Clip", ["t", "zero", "six"], ["c"]) if opset >= 11 else
            helper.make_node("Clip", ["t"], ["c"], min=0.0, max=6.0))
    nodes = [helper.make_node("Conv", ["in", "eye"], ["x"])] if conv else []
    nodes += [helper.make_node("Add", ["x", "three"], ["t"]), clip,
              helper.make_node("Mul", ["x", "c"] if x_first else ["c", "x"], ["m"])]
    if tail:
        nodes.append(helper.make_node(tail, ["m", "six" if tail == "Div" else "sixth"], ["y"]))
    outputs = [helper.make_tensor_value_info("y" if tail else "m", elem, None)]
    if gate_is_output:
        outputs.append(helper.make_tensor_value_info("c", elem, None))
    graph = helper.make_graph(nodes, "hardswish", [helper.make_tensor_value_info("in" if conv else "x", elem,
                                                                               ["N", channels, 4, 4])],
                              outputs, initializer=consts)
    return finish(graph, opset=opset)


@pytest.mark.parametrize("channels,conv", [(3, False), (16, False), (16, True)])
@pytest.mark.parametrize("tail,x_first,opset", [("Div", True, 17), ("Div", False, 17), ("Mul", True, 17),
                                                (None, True, 17), ("Div", True, 10)])
def test_primitive_hard_swish(channels, conv, tail, x_first, opset):
    """x · relu6(x + 3) / 6 differentiated as one HardSwish (6 · HardSwish without the Div): against
    central differences away from the kinks, in fewer ops than through the Add, Clip, Mul and Div
    apart; divided by 6 after a Conv in ORT's NCHWc layout, the forward becomes x · HardSigmoid(x)."""
    wrt = "in" if conv else "x"

    def feeds(rng, dt):
        x = rng.uniform(-5, 5, (2, channels, 4, 4))
        return {wrt: np.where(np.abs(np.abs(x) - 3) < 0.1, x + 0.3, x).astype(dt)}

    check(lambda dt: primitive_hard_swish(channels, dt, tail, x_first, opset, conv=conv), feeds=feeds)
    output = "y" if tail else "m"
    models = [differentiate(primitive_hard_swish(channels, np.float32, tail, x_first, opset, both, conv), output, [wrt])
              for both in (False, True)]
    assert len(models[0].graph.node) < len(models[1].graph.node)
    assert ("HardSigmoid" in [n.op_type for n in models[0].graph.node]) == (conv and tail == "Div")


@pytest.mark.parametrize("channels", [3, 16])
def test_primitive_hard_swish_slope_at_the_kinks(channels):
    """The one-go gradient of x · relu6(x + 3) / 6 at and next to ±3, the Div by 6 passing its
    gradient on unscaled to the Mul's rule. Elementwise (3 channels): what torch's autograd gives
    for the same ops in float32. In ORT's NCHWc layout (16 channels) the forward becomes
    x · HardSigmoid(x) (equal up to rounding) with the HardSwish rule's backward: torch's
    HardSwish slope. Both -1/2 at -3 and 3/2 at 3."""
    conv = channels == 16  # an identity Conv makes x (exactly)
    model = primitive_hard_swish(channels, np.float32, conv=conv)
    wrt = "in" if conv else "x"
    rewritten = differentiate(model, "y", [wrt])
    ops = [n.op_type for n in rewritten.graph.node]
    kinks = [np.nextafter(np.float32(k), np.float32(k + d)) for k in (-3, 3) for d in (-1, 1)]
    x = np.resize(np.array([*kinks, -3.0, 3.0, 1e30, -1e30], np.float32), (2, channels, 4, 4)).astype(np.float32)
    y, got = session(rewritten).run(["y", grad_name(wrt)], {wrt: x, SEED: np.ones_like(x)})
    if conv:
        assert ops[:3] == ["Conv", "HardSigmoid", "Mul"] and not {"Add", "Div"} & set(ops)
        expected = np.where(x < -3, 0, np.where(x > 3, 1, x / 3 + 0.5))
    else:
        assert "Div" not in ops[4:] and "Sum" not in ops[4:]  # neither the Div's nor the Mul's own rule ran
        t = x + np.float32(3)  # (3 + 2⁻²² rounds to 6 here, where the Clip passes its gradient, as torch's clamp does)
        expected = (np.clip(t, 0, 6) + x * ((t >= 0) & (t <= 6))) / 6
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert set(np.round(got[x == -3], 6)) == {-0.5} and set(np.round(got[x == 3], 6)) == {1.5}
    np.testing.assert_allclose(y, session(model).run(["y"], {wrt: x})[0], rtol=1e-6, atol=1e-7)


def test_hard_sigmoid_gate_in_the_blocked_layout():
    """A squeeze-excitation gate, HardSigmoid(Conv(s)) on (N, 16, 1, 1): its slope from the clipped
    depthwise Convs, as for images (its gradient arrives in ORT's NCHWc layout from the gate's sum
    over the image), and the gradient matches central differences."""
    from onnx import helper, numpy_helper
    from gradcheck import finish
    weight = np.random.default_rng(1).standard_normal((16, 8, 1, 1))

    def make(dt):
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
        nodes = [helper.make_node("Conv", ["s", "w"], ["z"]),
                 helper.make_node("HardSigmoid", ["z"], ["y"], alpha=0.2, beta=0.5)]
        graph = helper.make_graph(nodes, "gate", [helper.make_tensor_value_info("s", elem, ["N", 8, 1, 1])],
                                  [helper.make_tensor_value_info("y", elem, None)],
                                  initializer=[numpy_helper.from_array(weight.astype(dt), "w")])
        return finish(graph)

    check(make, dtypes=(np.float32,))
    backward = differentiate(make(np.float32), "y", ["s"]).graph.node[2:]
    assert [n.op_type for n in backward].count("Clip") == 2
