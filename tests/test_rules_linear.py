"""Conv, ConvTranspose, Gemm, MatMul, BatchNormalization rules against central finite differences."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from engine.graph.autodiff import SEED, differentiate, grad_name
from engine.graph.rules import linear
from gradcheck import check, finish, float64_copy, float64_slope, node_model, session

RNG = np.random.default_rng(7)


def weight(*shape):
    return RNG.standard_normal(shape)


CONV_CASES = {
    "3x3-pad1": (("N", 3, 7, 7), weight(4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    "3x3-stride2-pad1": (("N", 3, 7, 7), weight(4, 3, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2])),
    "stride2-remainder": (("N", 2, 8, 7), weight(3, 2, 3, 2), dict(strides=[2, 3])),
    "asymmetric-pads": (("N", 2, 6, 6), weight(3, 2, 3, 3), dict(pads=[0, 2, 1, 0])),
    "groups": (("N", 4, 6, 6), weight(6, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "depthwise-stride2": (("N", 4, 8, 8), weight(4, 1, 3, 3), dict(group=4, pads=[1, 1, 1, 1], strides=[2, 2])),
    "dilation2": (("N", 2, 9, 9), weight(3, 2, 3, 3), dict(dilations=[2, 2], pads=[2, 2, 2, 2])),
    "dilation-stride": (("N", 2, 9, 9), weight(3, 2, 3, 3), dict(dilations=[2, 1], strides=[2, 2])),
    "same-upper-stride2": (("N", 2, 7, 8), weight(3, 2, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "same-upper-even-kernel": (("N", 2, 6, 6), weight(3, 2, 2, 4), dict(auto_pad="SAME_UPPER")),
    "same-lower-even-kernel": (("N", 2, 6, 6), weight(3, 2, 2, 4), dict(auto_pad="SAME_LOWER")),
    "same-lower-stride2": (("N", 2, 7, 7), weight(3, 2, 4, 4), dict(auto_pad="SAME_LOWER", strides=[2, 2])),
    "valid": (("N", 2, 6, 6), weight(3, 2, 3, 3), dict(auto_pad="VALID")),
    "1x1-pad-beyond-kernel": (("N", 2, 5, 5), weight(3, 2, 1, 1), dict(pads=[1, 1, 1, 1])),
    "1d": (("N", 2, 9), weight(3, 2, 3), dict(pads=[1, 1], strides=[2])),
    "1x1-stride2": (("N", 3, 7, 8), weight(4, 3, 1, 1), dict(strides=[2, 2])),
    "5x5-stride3-pad2": (("N", 2, 10, 11), weight(3, 2, 5, 5), dict(pads=[2, 1, 0, 2], strides=[3, 3])),
    "2x2-stride4": (("N", 2, 9, 8), weight(3, 2, 2, 2), dict(strides=[4, 4])),
    "groups-stride2": (("N", 4, 9, 8), weight(6, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1], strides=[2, 2])),
    # stride 1 from 16 input channels on: the forward Conv with flipped weights (fewer: ConvTranspose)
    "16ch-3x3-pad1": (("N", 16, 6, 6), weight(4, 16, 3, 3), dict(pads=[1, 1, 1, 1])),
    "16ch-asymmetric-pads": (("N", 16, 6, 6), weight(3, 16, 3, 3), dict(pads=[0, 2, 1, 0])),
    "16ch-same-lower-even-kernel": (("N", 16, 6, 6), weight(3, 16, 2, 4), dict(auto_pad="SAME_LOWER")),
    "16ch-1x1-pad-beyond-kernel": (("N", 16, 5, 5), weight(3, 16, 1, 1), dict(pads=[1, 1, 1, 1])),
}


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv(case, bias):
    x, w, attributes = CONV_CASES[case]
    inputs = [x, w] + ([weight(w.shape[0])] if bias else [])
    check(lambda dt: node_model("Conv", inputs, dt, **attributes))


@pytest.mark.parametrize("channels, group, forward_conv", [(16, 1, True), (15, 1, False), (3, 1, False), (4, 2, True)])
def test_stride1_conv_backward_form(channels, group, forward_conv):
    """A forward Conv with flipped weights, except for dense Convs on fewer than 16 channels."""
    w = weight(4, channels // group, 3, 3)
    model = node_model("Conv", [("N", channels, 7, 7), w], np.float32, pads=[1, 1, 1, 1], group=group)
    added = [n.op_type for n in differentiate(model, "out0", ["in0"]).graph.node[1:]]
    assert ("Conv" in added, "ConvTranspose" in added) == (forward_conv, not forward_conv), added


def test_conv_with_computed_weight():
    """A weight that is not an initializer (e.g. dequantized) goes through ConvTranspose."""
    def make(dt):
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
        w = helper.make_tensor("w", elem, [4, 3, 3, 3], weight(4, 3, 3, 3).astype(dt).ravel().tolist())
        nodes = [helper.make_node("Neg", ["w"], ["wn"]), helper.make_node("Conv", ["x", "wn"], ["y"], pads=[1] * 4)]
        return finish(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, ["N", 3, 5, 5])],
                                        [helper.make_tensor_value_info("y", elem, None)], initializer=[w]))

    check(make)


CONVT_CASES = {
    "stride1": (("N", 3, 5, 5), weight(3, 2, 3, 3), dict(pads=[1, 1, 1, 1])),
    "stride2-output-padding": (("N", 3, 4, 5), weight(3, 2, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1],
                                                                          output_padding=[1, 0])),
    "groups-dilation": (("N", 4, 4, 4), weight(4, 1, 3, 3), dict(group=2, dilations=[2, 2], strides=[2, 1])),
    "output-shape": (("N", 2, 4, 4), weight(2, 3, 3, 3), dict(strides=[2, 2], output_shape=[8, 8])),
    "same-upper": (("N", 2, 4, 4), weight(2, 3, 4, 4), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "same-upper-odd-total": (("N", 2, 4, 4), weight(2, 3, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "same-lower-odd-total": (("N", 2, 4, 4), weight(2, 3, 3, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "output-shape-odd-total": (("N", 2, 4, 4), weight(2, 3, 3, 3), dict(strides=[2, 2], output_shape=[8, 8])),
    "valid": (("N", 2, 4, 4), weight(2, 3, 3, 3), dict(strides=[2, 2], auto_pad="VALID")),
}


@pytest.mark.parametrize("case", CONVT_CASES)
def test_conv_transpose(case):
    x, w, attributes = CONVT_CASES[case]
    check(lambda dt: node_model("ConvTranspose", [x, w], dt, **attributes))


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_activation_times_weight(trans_a, trans_b):
    a = (5, "N") if trans_a else ("N", 5)
    b = weight(*((3, 5) if trans_b else (5, 3)))
    check(lambda dt: node_model("Gemm", [a, b, weight(3)], dt, alpha=0.7, beta=1.3, transA=trans_a,
                                transB=trans_b), batch=4)


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 1)])
def test_gemm_both_operands_and_bias_are_activations(trans_a, trans_b):
    a = (5, 4) if trans_a else (4, 5)
    b = (3, 5) if trans_b else (5, 3)
    check(lambda dt: node_model("Gemm", [a, b, (1, 3)], dt, alpha=0.7, beta=1.3, transA=trans_a, transB=trans_b))


@pytest.mark.parametrize("shapes", [[("N", 5), weight(5, 3)], [("N", 2, 4, 5), ("N", 2, 5, 3)],
                                    [("N", 2, 4, 5), weight(5, 3)], [("N", 1, 4, 5), (2, 5, 3)]])
def test_matmul_broadcasting(shapes):
    check(lambda dt: node_model("MatMul", shapes, dt))


@pytest.mark.parametrize("x", [("N", 3, 4, 4), ("N", 3)])
def test_batch_norm_inference(x):
    stats = [weight(3), weight(3), weight(3), np.abs(weight(3)) + 0.5]
    check(lambda dt: node_model("BatchNormalization", [x, *stats], dt, epsilon=1e-3))


@pytest.mark.parametrize("stride", [1, 2])
def test_batch_norm_scale_folds_into_the_conv_backward(stride):
    stats = [weight(4), weight(4), weight(4), np.abs(weight(4)) + 0.5]

    def make(dt):
        inits = [helper.make_tensor(n, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), a.shape, a.astype(dt).ravel())
                 for n, a in zip(["w", "s", "b", "m", "v"], [weight(4, 3, 3, 3), *stats])]
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4, strides=[stride] * 2),
                 helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"])]
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
        return finish(helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("x", elem, ["N", 3, 6, 6])],
                                        [helper.make_tensor_value_info("y", elem, None)], initializer=inits))

    check(make)
    added = [n.op_type for n in differentiate(make(np.float32), "y", ["x"]).graph.node[2:]]
    assert "Mul" not in added, added


# Strided Convs on inputs with a multiple of 16 channels (ORT's blocked layout) take the phase
# form (here whatever their size); the others above keep ConvTranspose.
# (x spatial dims, weight, attributes, phase form?)
PHASE_CASES = {
    "3x3-stride2-pad1-odd": ((9, 9), weight(8, 16, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2]), True),
    "3x3-stride2-pad1-even": ((8, 10), weight(8, 16, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2]), True),
    "1x1-stride2": ((7, 8), weight(8, 16, 1, 1), dict(strides=[2, 2]), True),
    "2x2-stride2": ((8, 7), weight(8, 16, 2, 2), dict(strides=[2, 2]), False),
    "2x2-stride3": ((8, 7), weight(8, 16, 2, 2), dict(strides=[3, 3]), True),
    "4x4-stride2-asymmetric": ((9, 8), weight(8, 16, 4, 4), dict(pads=[1, 2, 0, 1], strides=[2, 2]), True),
    "7x7-stride2-pad3": ((11, 12), weight(8, 16, 7, 7), dict(pads=[3, 3, 3, 3], strides=[2, 2]), True),
    "3x3-stride3": ((10, 11), weight(8, 16, 3, 3), dict(pads=[1, 1, 1, 1], strides=[3, 3]), False),
    "4x4-stride3-pad1": ((10, 11), weight(8, 16, 4, 4), dict(pads=[1, 1, 1, 1], strides=[3, 3]), True),
    "5x5-stride3-pad2-1": ((10, 11), weight(8, 16, 5, 5), dict(pads=[2, 1, 0, 2], strides=[3, 3]), True),
    "3x2-strides-2-1": ((9, 7), weight(8, 16, 3, 2), dict(pads=[1, 0, 1, 1], strides=[2, 1]), True),
    "same-upper-4x4": ((7, 8), weight(8, 16, 4, 4), dict(auto_pad="SAME_UPPER", strides=[2, 2]), True),
    "same-lower-3x3": ((7, 7), weight(8, 16, 3, 3), dict(auto_pad="SAME_LOWER", strides=[2, 2]), True),
    "groups-stride2": ((9, 8), weight(8, 8, 3, 3), dict(group=2, pads=[1, 1, 1, 1], strides=[2, 2]), False),
    "dilation-stride2": ((9, 9), weight(8, 16, 3, 3), dict(dilations=[2, 2], strides=[2, 2]), False),
    "depthwise-stride2": ((8, 8), weight(16, 1, 3, 3), dict(group=16, pads=[1, 1, 1, 1], strides=[2, 2]), False),
    "pads-beyond-kernel": ((7, 7), weight(8, 16, 1, 1), dict(pads=[1, 1, 1, 1], strides=[2, 2]), True),
    "end-pad-beyond-kernel": ((8, 8), weight(8, 16, 3, 3), dict(pads=[0, 0, 3, 4], strides=[2, 2]), True),
}


@pytest.mark.parametrize("case", PHASE_CASES)
@pytest.mark.parametrize("batch", [1, 3])
def test_strided_conv_backward_phases(case, batch, monkeypatch):
    monkeypatch.setattr(linear, "PHASE_MIN_WORK", 0)
    spatial, w, attributes, phased = PHASE_CASES[case]
    model = node_model("Conv", [("N", 16, *spatial), w, weight(w.shape[0])], np.float32, **attributes)
    rewritten = differentiate(model, "out0", ["in0"])
    interleaves = [n for n in rewritten.graph.node if n.op_type == "ConvTranspose" and "interleave" in n.input[1]]
    assert bool(interleaves) == phased
    assert sum(n.op_type == "ConvTranspose" for n in rewritten.graph.node) == 1
    _check_slopes(model, rewritten, (batch, 16, *spatial), seed=batch)


def _check_slopes(model, rewritten, shape, seed):
    """The rewritten input gradient against float64 central differences of ``model`` (onnx's reference
    evaluator: exact for a linear map, so the tolerance is float32 rounding) along random directions."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    out = session(model).run(None, {"in0": x})[0]
    seed = rng.standard_normal(out.shape).astype(np.float32)
    got = session(rewritten).run([grad_name("in0")], {"in0": x, SEED: seed})[0]
    reference = float64_copy(model)
    for _ in range(3):
        v = rng.standard_normal(x.shape)
        numeric = float64_slope(reference, "out0", {"in0": x.astype(np.float64)}, seed.astype(np.float64), "in0", v)
        analytic = float(np.sum(got.astype(np.float64) * v))
        assert abs(analytic - numeric) < 1e-5 * float(np.sum(np.abs(got * v))), (analytic, numeric)


# Strided depthwise Convs: zeros inserted into dy, then a stride-1 depthwise Conv
# (x spatial dims, kernel, attributes, that form?).
DEPTHWISE_CASES = {
    "3x3-stride2-pad1-even": ((8, 10), (3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2]), True),
    "3x3-stride2-pad1-odd": ((9, 7), (3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2]), True),
    "5x5-stride2-pad2": ((11, 12), (5, 5), dict(pads=[2, 2, 2, 2], strides=[2, 2]), True),
    "3x3-strides-2-1-asymmetric": ((9, 8), (3, 3), dict(pads=[1, 0, 2, 1], strides=[2, 1]), True),
    "same-upper-3x3": ((7, 8), (3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2]), True),
    "4x4-stride3-valid": ((10, 11), (4, 4), dict(strides=[3, 3]), True),
    "2x2-stride2-no-overlap": ((8, 9), (2, 2), dict(strides=[2, 2]), False),
    "pads-beyond-kernel": ((7, 7), (3, 3), dict(pads=[3, 3, 3, 3], strides=[2, 2]), False),
    "dilation-stride2": ((9, 9), (3, 3), dict(dilations=[2, 2], strides=[2, 2]), False),
}


@pytest.mark.parametrize("case", DEPTHWISE_CASES)
@pytest.mark.parametrize("batch, channels, scale", [(1, 16, 1), (3, 16, 1), (2, 24, 1), (1, 24, 4)])
def test_strided_depthwise_conv_backward(case, batch, channels, scale):
    """In and out of ORT's blocked layout (16 channels, 24); zeros inserted by a dense identity
    (small dy) or one group per channel (``scale`` 4: 16× the values)."""
    spatial, kernel, attributes, zero_inserted = DEPTHWISE_CASES[case]
    spatial = tuple(d * scale for d in spatial)
    rng = np.random.default_rng(len(spatial) + sum(kernel))  # (the module's RNG stays as the other tests draw it)
    model = node_model("Conv", [("N", channels, *spatial), rng.standard_normal((channels, 1, *kernel)),
                                rng.standard_normal(channels)], np.float32, group=channels, **attributes)
    rewritten = differentiate(model, "out0", ["in0"])
    spreads = [n for n in rewritten.graph.node if n.op_type == "ConvTranspose" and "zero_insert" in n.input[1]]
    assert bool(spreads) == zero_inserted
    if spreads:
        (spread,) = spreads
        group = next(a.i for a in spread.attribute if a.name == "group")
        assert group == (channels if scale == 4 else 1)
    _check_slopes(model, rewritten, (batch, channels, *spatial), seed=batch)


@pytest.mark.parametrize("channels, size, phased", [(64, 56, True), (64, 12, False), (48, 56, True), (40, 56, False)])
def test_strided_conv_phase_form_needs_work_and_blocked_channels(channels, size, phased):
    """ResNet's 3×3 stride-2 Conv takes the phase form; too little work per phase, or input
    channels outside ORT's blocked layout (not a multiple of 16, an input no Conv made), keep
    ConvTranspose."""
    model = node_model("Conv", [("N", channels, size, size), weight(128, channels, 3, 3)], np.float32,
                       pads=[1, 1, 1, 1], strides=[2, 2])
    added = [n for n in differentiate(model, "out0", ["in0"]).graph.node[1:]]
    assert any("interleave" in n.input[1] for n in added if n.op_type == "ConvTranspose") == phased


def test_strided_conv_phases_over_channels_ort_pads_to_blocks(monkeypatch):
    """24 channels from a Conv (shapes-resnet's stem → layer1), which ORT pads to two blocks of 16:
    the phase form too (0.99× that model's input gradient's time at batch 1 and 16, measured)."""
    monkeypatch.setattr(linear, "PHASE_MIN_WORK", 0)
    rng = np.random.default_rng(7)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.astype(np.float32).ravel()) for n, a in
             [("ws", rng.standard_normal((24, 3, 3, 3))), ("w", rng.standard_normal((32, 24, 3, 3)))]]
    nodes = [helper.make_node("Conv", ["in0", "ws"], ["c"], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w"], ["out0"], pads=[1] * 4, strides=[2, 2])]
    x = helper.make_tensor_value_info("in0", TensorProto.FLOAT, ["N", 3, 64, 64])
    y = helper.make_tensor_value_info("out0", TensorProto.FLOAT, None)
    model = finish(helper.make_graph(nodes, "stem_then_strided", [x], [y], initializer=inits))
    rewritten = differentiate(model, "out0", ["in0"])
    assert any(n.op_type == "ConvTranspose" and "interleave" in n.input[1] for n in rewritten.graph.node)
    _check_slopes(model, rewritten, (2, 3, 64, 64), seed=7)


def test_strided_conv_phases_fold_a_batch_norm_scale(monkeypatch):
    monkeypatch.setattr(linear, "PHASE_MIN_WORK", 0)
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((16, 16, 3, 3)), *rng.standard_normal((3, 16)), np.abs(rng.standard_normal(16)) + 0.5]
    inits = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.astype(np.float32).ravel())
             for n, a in zip(["w", "s", "b", "m", "v"], arrays)]
    nodes = [helper.make_node("Conv", ["in0", "w"], ["c"], pads=[1] * 4, strides=[2, 2]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["out0"])]
    x = helper.make_tensor_value_info("in0", TensorProto.FLOAT, ["N", 16, 7, 7])
    y = helper.make_tensor_value_info("out0", TensorProto.FLOAT, None)
    model = finish(helper.make_graph(nodes, "conv_bn", [x], [y], initializer=inits))
    rewritten = differentiate(model, "out0", ["in0"])
    added = [n.op_type for n in rewritten.graph.node[2:]]
    assert "Mul" not in added and "Concat" in added, added
    _check_slopes(model, rewritten, (2, 16, 7, 7), seed=0)


def _downsampling_block(size, shortcut_stride=2, kernel=3):
    """x (N, 16, size, size) → a strided 3×3 Conv → Relu, plus a 1×1 shortcut Conv → Add: a ResNet
    block's downsampling pair, both reading x."""
    rng = np.random.default_rng(5)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.astype(np.float32).ravel()) for n, a in
             [("w", rng.standard_normal((32, 16, kernel, kernel))), ("ws", rng.standard_normal((32, 16, 1, 1)))]]
    pads = [(kernel - 1) // 2] * 4
    nodes = [helper.make_node("Conv", ["in0", "w"], ["c"], pads=pads, strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["in0", "ws"], ["s"], strides=[shortcut_stride] * 2)]
    if shortcut_stride == 2:
        nodes.append(helper.make_node("Add", ["r", "s"], ["out0"]))
    else:  # sizes that differ: the shortcut's total joins the output
        nodes += [helper.make_node("ReduceSum", ["s"], ["t"], keepdims=0), helper.make_node("Add", ["r", "t"], ["out0"])]
    x = helper.make_tensor_value_info("in0", TensorProto.FLOAT, ["N", 16, size, size])
    y = helper.make_tensor_value_info("out0", TensorProto.FLOAT, None)
    return finish(helper.make_graph(nodes, "block", [x], [y], initializer=inits))


@pytest.mark.parametrize("size", [8, 12])
def test_strided_conv_and_its_strided_shortcut_join_their_phases(size):
    """The 3×3 stride-2 Conv and the 1×1 stride-2 shortcut both take the phase form (however small)
    and their input gradients meet in one interleave: the shortcut's single phase added to the
    3×3's phase (0, 0), no ConvTranspose of the shortcut and no Sum over the input gradient."""
    model = _downsampling_block(size)
    rewritten = differentiate(model, "out0", ["in0"])
    transposes = [n for n in rewritten.graph.node if n.op_type == "ConvTranspose"]
    assert [("interleave" in n.input[1]) for n in transposes] == [True], [n.input[1] for n in transposes]
    assert not [n for n in rewritten.graph.node if n.op_type == "Sum"]
    _check_slopes(model, rewritten, (2, 16, size, size), seed=size)


@pytest.mark.parametrize("size, shortcut_stride, kernel", [(7, 2, 3), (8, 1, 3), (8, 2, 2)])
def test_strided_siblings_that_cannot_join_keep_their_own_forms(size, shortcut_stride, kernel):
    """An odd size (the interleave is cropped), a stride-1 shortcut, or a 2×2 stride-2 Conv (its
    windows do not overlap: one ConvTranspose) keep separate gradients, summed."""
    model = _downsampling_block(size, shortcut_stride, kernel)
    rewritten = differentiate(model, "out0", ["in0"])
    assert any(n.op_type == "Sum" for n in rewritten.graph.node)
    _check_slopes(model, rewritten, (2, 16, size, size), seed=size)
