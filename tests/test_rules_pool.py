"""Pooling and reduction rules against central finite differences through ORT, and MaxPool at
ties against a float64 reference of torch's rule."""
import numpy as np
import pytest

from onnx import TensorProto, helper, numpy_helper

from engine.graph.autodiff import SEED, differentiate, grad_name
from engine.graph.nodes import attrs
from engine.graph.rules import pool as pool_rules
from gradcheck import check, finish, float64_copy, float64_slope, node_model, session

POOLS = {
    "k2s2": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "k3s2-overlap-pad": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "k3s1-overlap": dict(kernel_shape=[3, 3]),
    "k3s2-ceil": dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "k3s2-ceil-pad": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 0], ceil_mode=1),
    "k2s3-gaps": dict(kernel_shape=[2, 2], strides=[3, 3]),
    "k2s2-ceil-odd": dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "k21s21-pad": dict(kernel_shape=[2, 1], strides=[2, 1], pads=[1, 0, 1, 0]),
    "same-upper": dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
    "dilated": dict(kernel_shape=[2, 2], dilations=[2, 2], strides=[1, 2]),
    "k5s1-spp": dict(kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
}
SPP = {"k9s1-spp": dict(kernel_shape=[9, 9], pads=[4, 4, 4, 4]), "k13s1-spp": dict(kernel_shape=[13, 13], pads=[6, 6, 6, 6]),
       "k5s2-ceil-pad": dict(kernel_shape=[5, 4], strides=[2, 1], pads=[2, 1, 1, 2], ceil_mode=1)}
X = ("N", 3, 8, 7)


@pytest.mark.parametrize("case", POOLS)
def test_max_pool(case):
    check(lambda dt: node_model("MaxPool", [X], dt, **POOLS[case]))


@pytest.mark.parametrize("case,unpool", [("k2s2", True), ("k2s3-gaps", True), ("k2s2-ceil-odd", True), ("k3s2-overlap-pad", False)])
def test_max_pool_backward_op(case, unpool):
    """Windows that do not overlap: MaxUnpool (float32); overlapping ones: ScatterElements."""
    rewritten = differentiate(node_model("MaxPool", [X], np.float32, **POOLS[case]), "out0", ["in0"])
    assert ("MaxUnpool" in [n.op_type for n in rewritten.graph.node]) == unpool


@pytest.mark.parametrize("case", SPP)
def test_max_pool_large_windows(case):
    check(lambda dt: node_model("MaxPool", [X], dt, **SPP[case]))


@pytest.mark.parametrize("case,separable", [("k5s1-spp", True), ("k3s2-overlap-pad", False), ("k3s1-overlap", False)])
def test_max_pool_separable_indices(case, separable):
    """Large stride-1 windows: one 1-D pool per axis (the forward pool keeps no Indices output)."""
    rewritten = differentiate(node_model("MaxPool", [X], np.float32, **POOLS[case]), "out0", ["in0"])
    pools = [n for n in rewritten.graph.node if n.op_type == "MaxPool"]
    assert len(pools) == (3 if separable else 1)
    assert (len(pools[0].output) == 1) == separable


def first_max_gradient(x, dy, kernel_shape, strides=None, pads=None, dilations=None, **_):
    """float64 dx of a MaxPool (any number of spatial axes) by torch's rule: each window's
    gradient goes to its first maximum in row-major order, padding excluded (windows placed by
    ``dy``'s size)."""
    rank = len(kernel_shape)
    strides, dilations, pads = strides or [1] * rank, dilations or [1] * rank, pads or [0] * rank
    dx = np.zeros(x.shape)
    for n, c, *at in np.ndindex(*dy.shape):
        taps = [o * s - p + np.arange(k) * d for o, s, p, k, d in zip(at, strides, pads, kernel_shape, dilations)]
        taps = [t[(t >= 0) & (t < size)] for t, size in zip(taps, x.shape[2:])]
        window = x[n, c][np.ix_(*taps)]
        first = np.unravel_index(np.argmax(window), window.shape)  # argmax: the first maximum
        dx[(n, c, *(t[i] for t, i in zip(taps, first)))] += dy[(n, c, *at)]
    return dx


def tied(kind, shape, rng):
    """Inputs full of ties: ReLU outputs (all-zero windows), integers, constant blocks."""
    if kind == "relu":
        return np.maximum(rng.standard_normal(shape) - 0.5, 0)
    if kind == "integers":
        return np.round(rng.standard_normal(shape))
    x = rng.standard_normal(shape)
    x[(..., *[slice(1, 6)] * (len(shape) - 2))] = 1.5
    x[:, 1:, ..., -4:] = -2.0
    return x


def tie_check(attributes, shape, kind, declared=None):
    """Check the input gradient of a float32 MaxPool on tied inputs against
    :func:`first_max_gradient`; returns the rewritten model. ``declared``: the model's input
    shape (default: ``shape`` with a symbolic batch)."""
    model = node_model("MaxPool", [declared or ("N", *shape[1:])], np.float32, **attributes)
    rng = np.random.default_rng(1)
    x = tied(kind, shape, rng).astype(np.float32)
    y = session(model).run(None, {"in0": x})[0]
    dy = rng.standard_normal(y.shape).astype(np.float32)
    rewritten = differentiate(model, "out0", ["in0"])
    got = session(rewritten).run([grad_name("in0")], {"in0": x, SEED: dy})[0]
    np.testing.assert_allclose(got, first_max_gradient(x, dy, **attributes), rtol=1e-6, atol=1e-6)
    return rewritten


@pytest.mark.parametrize("kind", ["relu", "integers", "constant"])
@pytest.mark.parametrize("case", [c for c in [*POOLS, *SPP] if c != "same-upper"])
def test_max_pool_ties_go_to_the_first_maximum(case, kind):
    """Exact at ties, batch 3, odd sizes: against torch's first-maximum rule in float64."""
    tie_check({**POOLS, **SPP}[case], (3, 3, 11, 9), kind)


@pytest.mark.parametrize("kind", ["relu", "integers", "constant"])
@pytest.mark.parametrize("attributes", [dict(kernel_shape=[5, 5, 5], pads=[2] * 6), dict(kernel_shape=[3, 3, 3], strides=[2] * 3),
                                        dict(kernel_shape=[5], pads=[2, 2])])
def test_max_pool_ties_3d_and_1d(attributes, kind):
    tie_check(attributes, (2, 2, 7, 6, 5)[:2 + len(attributes["kernel_shape"])], kind)


@pytest.mark.parametrize("case,unpool", [("k2s2", True), ("k2s2-ceil-odd", False), ("k21s21-pad", False), ("k3s2-ceil", False)])
def test_max_pool_with_symbolic_spatial_dims(case, unpool):
    """H×W unknown when the rule is built: MaxUnpool only where no window reaches past the input."""
    rewritten = tie_check(POOLS[case], (2, 3, 7, 5), "integers", declared=("N", 3, "H", "W"))
    assert ("MaxUnpool" in [n.op_type for n in rewritten.graph.node]) == unpool


def test_max_pool_with_its_own_indices_output():
    check(lambda dt: node_model("MaxPool", [X], dt, outputs=2, **POOLS["k3s2-overlap-pad"]), output="out0")


@pytest.mark.parametrize("case", [c for c in POOLS if c != "dilated"])
@pytest.mark.parametrize("include_pad", [0, 1])
def test_average_pool(case, include_pad):
    check(lambda dt: node_model("AveragePool", [X], dt, count_include_pad=include_pad, **POOLS[case]))


@pytest.mark.parametrize("case,include_pad,folded", [("k2s2", 0, True), ("k3s2-overlap-pad", 1, True),
                                                     ("k3s2-overlap-pad", 0, False), ("k3s2-ceil", 1, False)])
def test_average_pool_divisor_in_the_weights(case, include_pad, folded):
    """One count for every window: 1/count sits in the ConvTranspose weights (no Mul over dy)."""
    model = node_model("AveragePool", [X], np.float32, count_include_pad=include_pad, **POOLS[case])
    ops = [n.op_type for n in differentiate(model, "out0", ["in0"]).graph.node]
    assert "ConvTranspose" in ops and ("Mul" not in ops) == folded


def test_average_pool_dilated_opset19():
    check(lambda dt: node_model("AveragePool", [X], dt, opset=19, **POOLS["dilated"]))


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pools(op):
    check(lambda dt: node_model(op, [X], dt))


@pytest.mark.parametrize("size,spread", [((4, 4), True), ((8, 7), True), ((9, 8), False)])
def test_global_average_pool_spread_by_a_padded_depthwise_conv(size, spread):
    """Blocked channel counts (16) and up to SPREAD_MAX_POSITIONS positions: dy / (H·W) spread by
    one depthwise Conv over dy padded by the kernel's size less one (no Expand: it stays in ORT's
    NCHWc layout); more positions: Expand and the depthwise scale. Against central differences."""
    check(lambda dt: node_model("GlobalAveragePool", [("N", 16, *size)], dt), dtypes=(np.float32,))
    rewritten = differentiate(node_model("GlobalAveragePool", [("N", 16, *size)], np.float32), "out0", ["in0"])
    ops = [n.op_type for n in rewritten.graph.node[1:]]
    assert ("Expand" not in ops) == spread and ops.count("Conv") == 1, ops


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


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("spatial", [(5, 4), ("H", "W")])
def test_reduce_mean_over_the_spatial_axes_is_a_global_average_pool(keepdims, spatial):
    """ReduceMean over every axis after N and C (a squeeze-excitation or a head written that way)
    takes GlobalAveragePool's rule: for 16 channels (ORT's blocked layout) its 1/positions rides
    on the depthwise Conv that moves the gradient into NCHWc, no Div; symbolic H×W count at run time."""
    model = node_model("ReduceMean", [("N", 16, *spatial)], np.float32, opset=11, keepdims=keepdims, axes=[2, 3])
    ops = [n.op_type for n in differentiate(model, "out0", ["in0"]).graph.node]
    assert ("Div" in ops) == isinstance(spatial[0], str) and (ops.count("Conv") == 1) == isinstance(spatial[0], int), ops
    check(lambda dt: node_model("ReduceMean", [("N", 16, *spatial)], dt, opset=11, keepdims=keepdims, axes=[2, 3]))


def test_reduce_noop_with_empty_axes():
    check(lambda dt: node_model("ReduceSum", [X], dt, opset=18, noop_with_empty_axes=1))


def relu_pool_model(channels, attributes):
    """Relu → MaxPool, the ReLU's output read by the pool alone (a ResNet stem, a CRNN block)."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MaxPool", ["r"], ["y"], **attributes)],
                              "relu_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 11, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return finish(graph)


@pytest.mark.parametrize("mode", ["standard", "guided"])
@pytest.mark.parametrize("channels", [3, 16])
@pytest.mark.parametrize("case", ["k2s2", "k3s2-overlap-pad", "k3s2-ceil", "k5s1-spp"])
def test_relu_mask_applied_at_the_pool(case, channels, mode):
    """In standard mode the ReLU's mask is [y > 0] on the pooled output, before the scatter (no
    mask reads the ReLU's output, only shapes and index pools do); exact against [x > 0] ·
    torch's first-maximum rule, with all-zero windows and positive ties. Guided backprop keeps
    its own mask."""
    attributes = POOLS[case]
    model = relu_pool_model(channels, attributes)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, channels, 11, 9)).astype(np.float32) - 0.3
    x[:, :, 2:7, 3:8] = 0.75  # a flat positive block: ties among positive maxima
    r = np.maximum(x, 0)
    y = session(model).run(None, {"x": x})[0]
    dy = rng.standard_normal(y.shape).astype(np.float32)
    rewritten = differentiate(model, "y", ["x"], mode=mode)
    got = session(rewritten).run([grad_name("x")], {"x": x, SEED: dy})[0]
    pooled = first_max_gradient(r, dy, **attributes)
    want = pooled * (x > 0) * ((pooled > 0) if mode == "guided" else 1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    readers = [n for n in rewritten.graph.node[len(model.graph.node):] if "r" in n.input and n.op_type not in ("Shape", "MaxPool")]
    masks = [n for n in readers if not (n.op_type == "Conv" and attrs(n).get("strides") == [2, 2])]  # not x's phases
    assert bool(masks) == (mode == "guided"), [n.op_type for n in masks]


@pytest.mark.parametrize("channels", [32, 24])
@pytest.mark.parametrize("pool", ["k3s2-overlap-pad", "k3s2-ceil", "k3s2-ceil-pad", "k3s2"])
@pytest.mark.parametrize("size", [(8, 10), (11, 9), (3, 4)])
def test_first_maximum_by_taps_at_stem_pools(pool, size, channels, monkeypatch):
    """A 3×3 stride-2 pool over a Relu (ResNet stems: pads 1; SqueezeNet: none, ceil_mode), 32
    or 24 channels (ORT's blocked layout, 24 padded): the first maximum found tap by tap from x's
    phases, with no Indices output and no scatter; exact against torch's rule with all-zero windows
    and positive ties, at even and odd sizes (small ones: the size threshold lowered)."""
    monkeypatch.setattr(pool_rules, "TAPS_MIN_OUTPUTS", 0)
    attributes = {**POOLS, "k3s2": dict(kernel_shape=[3, 3], strides=[2, 2])}[pool]
    assert uses_taps(relu_pool_check((3, channels, *size), attributes, np.s_[:, :8, 1:6, 2:7], seed=7))


def relu_pool_check(shape, attributes, flat, seed):
    """Check the input gradient of a Relu then a float32 MaxPool on an input with the ``flat``
    block positive and constant (ties among positive maxima) against [x > 0] · torch's
    first-maximum rule; returns the rewritten model."""
    model = stem_pool_model(shape, attributes)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) - 0.3
    x[flat] = 0.75
    x[:, -1, :2, :2] = 2.0 ** -100  # a tied window of tiny maxima (a Relu's mask folded in holds from 2⁻¹⁰² on)
    y = session(model).run(None, {"x": x})[0]
    dy = rng.standard_normal(y.shape).astype(np.float32)
    rewritten = differentiate(model, "y", ["x"])
    got = session(rewritten).run([grad_name("x")], {"x": x, SEED: dy})[0]
    np.testing.assert_allclose(got, first_max_gradient(np.maximum(x, 0), dy, **attributes) * (x > 0), rtol=1e-6, atol=1e-6)
    return rewritten


def stem_pool_model(shape, attributes):
    """Conv → Relu → MaxPool, as in a stem (the 1×1 Conv's weight is the identity, so the ReLU
    reads x's values: a Conv makes the channel counts that ORT pads, such as 24, blocked)."""
    weight = numpy_helper.from_array(np.eye(shape[1], dtype=np.float32).reshape(shape[1], shape[1], 1, 1), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
                               helper.make_node("MaxPool", ["r"], ["y"], **attributes)],
                              "stem_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    return finish(graph)


def uses_taps(rewritten):
    """Whether a differentiated pool found its maxima tap by tap: no Indices output, no scatter."""
    return "ScatterElements" not in [n.op_type for n in rewritten.graph.node] and all(
        len(n.output) == 1 for n in rewritten.graph.node if n.op_type == "MaxPool")


def test_taps_only_from_the_size_where_they_were_faster():
    pool = POOLS["k3s2-overlap-pad"]
    assert uses_taps(differentiate(stem_pool_model((1, 16, 31, 31), POOLS["k3s2-ceil"]), "y", ["x"]))  # 16 × 15 × 15 outputs
    assert uses_taps(differentiate(stem_pool_model((1, 16, 32, 32), pool), "y", ["x"]))  # 16 × 16 × 16
    assert not uses_taps(differentiate(stem_pool_model((1, 16, 24, 24), pool), "y", ["x"]))  # 16 × 12 × 12
    assert uses_taps(differentiate(stem_pool_model((1, 24, 32, 32), pool), "y", ["x"]))  # 24 channels: ORT pads them
    assert not uses_taps(differentiate(stem_pool_model((1, 12, 64, 64), pool), "y", ["x"]))  # 12: no whole half block


def test_taps_in_an_exported_densenet_match_the_indices_path(monkeypatch):
    """densenet_varhw (a torch export) at 128×128, where its stem pool has 16 384 outputs: the
    input gradient through the tap-by-tap backward equals the one through MaxPool's Indices."""
    from engine import Model
    from engine.runtime import rewrite
    from tests import wild

    model = Model(wild.DIR / "densenet_varhw.onnx", provider="CPUExecutionProvider", threads=1, input_size=(128, 128))
    rng = np.random.default_rng(2)
    x = model.preprocess(list(rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)))
    seed = rng.standard_normal(model.run(x).outputs[0].shape).astype(np.float32)
    request = rewrite.Request((128, 128), (), (model.input.name,), model.outputs[0].name)

    def gradient(min_outputs):
        monkeypatch.setattr(pool_rules, "TAPS_MIN_OUTPUTS", min_outputs)
        rewritten = rewrite.build(model.proto, request)
        assert uses_taps(rewritten) == (min_outputs <= 16384)
        return session(rewritten).run([grad_name(model.input.name)], {model.input.name: x, SEED: seed})[0]

    taps, indices = gradient(pool_rules.TAPS_MIN_OUTPUTS), gradient(10 ** 9)
    assert np.abs(taps).max() > 0
    np.testing.assert_allclose(taps, indices, rtol=1e-5, atol=1e-6 * np.abs(indices).max())


STEMS = {"resnet-7x7-stride2": dict(kernel_shape=[7, 7], strides=[2, 2], pads=[3, 3, 3, 3]),
         "squeezenet-3x3-stride2": dict(kernel_shape=[3, 3], strides=[2, 2]),
         "stride1-pad1": dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         "asymmetric-5x3": dict(kernel_shape=[5, 3], strides=[2, 1], pads=[1, 2, 2, 0])}


@pytest.mark.parametrize("pool", ["k3s2-overlap-pad", "k3s2-ceil"])
@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("conv_output", [(12, 10), (11, 10)])
@pytest.mark.parametrize("channels", [3, 8])
def test_stem_conv_backward_reads_the_pool_phases(stem, pool, conv_output, channels, monkeypatch):
    """A stem Conv (3 or 8 → 16 channels) → Relu → 3×3 stride-2 pool by taps: the Conv's
    ConvTranspose reads the pool's four phases (no interleave) where they tile the Conv's output
    (even sizes; an odd one keeps the interleave) and are smaller than it (3 channels; 4 × 8 are
    not), with zero taps before the kernel where a phase starts before its begin pad
    (SqueezeNet's unpadded stem); against float64 central differences."""
    monkeypatch.setattr(pool_rules, "TAPS_MIN_OUTPUTS", 0)
    model, rewritten = conv_relu_pool(STEMS[stem], POOLS[pool], channels, 16, conv_output)
    transposes = [n for n in rewritten.graph.node if n.op_type == "ConvTranspose"]
    phases = conv_output[0] % 2 == 0 and channels == 3
    assert uses_taps(rewritten) and len(transposes) == (4 if phases else 2), [n.input[1] for n in transposes]
    assert_input_gradient_matches_differences(model, rewritten)


GREY_CONVS = {"pad1": dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), "valid": dict(kernel_shape=[3, 3]),
              "asymmetric": dict(kernel_shape=[3, 5], pads=[2, 0, 0, 1])}


@pytest.mark.parametrize("conv", GREY_CONVS)
@pytest.mark.parametrize("conv_output", [(12, 10), (11, 9)])
def test_grey_conv_backward_takes_in_the_pool_scatter(conv, conv_output, monkeypatch):
    """A grey first Conv (1 → 8 channels) → Relu → 2×2 pool by blocks: one ConvTranspose of the
    pool's shares, its kernel composed with the scatter's, at odd sizes too (rows and columns
    past the last window) and with pads of every width; against float64 central differences."""
    monkeypatch.setattr(pool_rules, "BLOCKS_MIN_OUTPUTS", 0)
    monkeypatch.setattr(pool_rules, "BLOCKS_MIN_POSITIONS", 0)
    model, rewritten = conv_relu_pool(GREY_CONVS[conv], BLOCK_POOLS["k2s2"], 1, 8, conv_output)
    transposes = [n.input[1] for n in rewritten.graph.node if n.op_type == "ConvTranspose"]
    assert uses_blocks(rewritten) and len(transposes) == 1 and "scatter_weight" in transposes[0], transposes
    assert_input_gradient_matches_differences(model, rewritten)


def conv_relu_pool(conv, pool, channels, outputs, conv_output):
    """(model, its input gradient's model) of Conv (``channels`` → ``outputs``, attributes
    ``conv``, a random weight) → Relu → MaxPool (``pool``), the Conv's output ``conv_output``."""
    pads, strides = conv.get("pads", [0] * 4), conv.get("strides", [1, 1])
    size = [(o - 1) * s + k - p - q for o, s, k, p, q in zip(conv_output, strides, conv["kernel_shape"], pads[:2], pads[2:])]
    w = np.random.default_rng(4).standard_normal((outputs, channels, *conv["kernel_shape"])).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], **conv), helper.make_node("Relu", ["c"], ["r"]),
                               helper.make_node("MaxPool", ["r"], ["y"], **pool)], "conv_relu_pool",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, *size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    model = finish(graph)
    return model, differentiate(model, "y", ["x"])


def assert_input_gradient_matches_differences(model, rewritten):
    """The input gradient of ``rewritten`` (batch 2, a random seed) along three random directions
    against float64 central differences of ``model``."""
    rng = np.random.default_rng(5)
    shape = [2, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:]]
    x = rng.standard_normal(shape).astype(np.float32)
    seed = rng.standard_normal(session(model).run(None, {"x": x})[0].shape).astype(np.float32)
    got = session(rewritten).run([grad_name("x")], {"x": x, SEED: seed})[0].astype(np.float64)
    for _ in range(3):
        v = rng.standard_normal(x.shape)
        numeric = float64_slope(float64_copy(model), "y", {"x": x.astype(np.float64)}, seed.astype(np.float64), "x", v)
        assert abs(np.sum(got * v) - numeric) < 1e-5 * np.sum(np.abs(got * v)), (np.sum(got * v), numeric)


BLOCK_POOLS = {"k2s2": dict(kernel_shape=[2, 2], strides=[2, 2]), "k12s12": dict(kernel_shape=[1, 2], strides=[1, 2]),
               "k3s3": dict(kernel_shape=[3, 3], strides=[3, 3])}
COLUMN_POOLS = {"k21s21": dict(kernel_shape=[2, 1], strides=[2, 1]), "k41s41": dict(kernel_shape=[4, 1], strides=[4, 1])}


def uses_blocks(rewritten):
    """Whether a differentiated pool took the first maxima of its windows side by side (a one-hot
    Conv of its taps, or SpaceToDepth): no Indices output, no MaxUnpool."""
    return bool(blocks_form(rewritten)) and all(len(n.output) == 1 for n in rewritten.graph.node if n.op_type == "MaxPool")


def blocks_form(rewritten):
    """How a differentiated pool laid its windows' taps side by side: "conv" (a one-hot grouped
    Conv), "space_to_depth", or None."""
    if any("window_taps" in n.input[1] for n in rewritten.graph.node if n.op_type == "Conv"):
        return "conv"
    return "space_to_depth" if any(n.op_type == "SpaceToDepth" for n in rewritten.graph.node) else None


@pytest.mark.parametrize("kind", ["relu", "integers", "constant"])
@pytest.mark.parametrize("size", [(8, 12), (11, 9)])
@pytest.mark.parametrize("pool", BLOCK_POOLS)
def test_first_maximum_in_blocks(pool, size, kind, monkeypatch):
    """Windows that tile the input (CRNN pools: 2×2, 1×2 and 3×3), rows and columns left over at
    odd sizes: the first maxima found side by side with no Indices output, exact against
    torch's rule on tied inputs (all-zero windows, integers, constant blocks); the size thresholds
    lowered."""
    monkeypatch.setattr(pool_rules, "BLOCKS_MIN_OUTPUTS", 0)
    monkeypatch.setattr(pool_rules, "BLOCKS_MIN_POSITIONS", 0)
    assert uses_blocks(tie_check(BLOCK_POOLS[pool], (3, 4, *size), kind))


@pytest.mark.parametrize("channels, pool, form", [(8, "k2s2", "space_to_depth"), (4, "k3s3", "space_to_depth"),
                                                  (8, "k12s12", "conv"), (32, "k2s2", "conv")])
def test_blocks_form_follows_the_layout(channels, pool, form, monkeypatch):
    """Square windows outside ORT's NCHWc layout (8 channels) take SpaceToDepth, their shares
    back in channel-major order for the one-hot grouped ConvTranspose; other windows, and inputs
    in that layout (32 channels, below the tiles' sizes), the one-hot grouped Conv."""
    monkeypatch.setattr(pool_rules, "BLOCKS_MIN_OUTPUTS", 0)
    monkeypatch.setattr(pool_rules, "BLOCKS_MIN_POSITIONS", 0)
    rewritten = tie_check(BLOCK_POOLS[pool], (2, channels, 7, 12), "integers")
    assert blocks_form(rewritten) == form
    transposed = any(n.op_type == "Transpose" for n in rewritten.graph.node)
    assert transposed == (form == "space_to_depth") and not any(n.op_type == "DepthToSpace" for n in rewritten.graph.node)


def test_blocks_only_from_the_size_where_they_were_faster():
    pool = BLOCK_POOLS["k2s2"]
    assert uses_blocks(differentiate(stem_pool_model((1, 8, 32, 96), pool), "y", ["x"]))  # 8 × 16 × 48 outputs
    assert uses_blocks(differentiate(stem_pool_model((1, 24, 16, 48), pool), "y", ["x"]))  # 24 × 8 × 24
    assert not uses_blocks(differentiate(stem_pool_model((1, 200, 4, 24), pool), "y", ["x"]))  # 2 × 12 per channel
    # ceil_mode windows reaching past an odd size: not tiles
    assert not uses_blocks(differentiate(stem_pool_model((1, 8, 33, 97), POOLS["k2s2-ceil-odd"]), "y", ["x"]))


def uses_tiles(rewritten):
    """Whether a differentiated 2×2 pool found its first maxima tap by tap in ORT's NCHWc layout
    (four depthwise stride-2 Convs picking one tap each): no Indices output, no one-hot Conv."""
    taps = [n for n in rewritten.graph.node if n.op_type == "Conv" and "tap" in n.input[1] and attrs(n).get("strides") == [2, 2]]
    return len(taps) == 4 and not uses_blocks(rewritten) and all(
        len(n.output) == 1 for n in rewritten.graph.node if n.op_type == "MaxPool")


@pytest.mark.parametrize("kind", ["relu", "integers", "constant"])
@pytest.mark.parametrize("size", [(8, 12), (11, 9)])
def test_first_maximum_by_tiles(size, kind, monkeypatch):
    """2×2 windows over 16 channels, rows and columns left over at odd sizes: the first maxima
    found tap by tap with no Indices output, exact against torch's rule on tied inputs; the size
    thresholds lowered."""
    monkeypatch.setattr(pool_rules, "TILES_MIN_OUTPUTS", 0)
    monkeypatch.setattr(pool_rules, "TILES_MIN_POSITIONS", 0)
    assert uses_tiles(tie_check(BLOCK_POOLS["k2s2"], (3, 16, *size), kind))


@pytest.mark.parametrize("path,channels", [("blocks", 8), ("tiles", 16)])
def test_first_maximum_over_a_relu(path, channels, monkeypatch):
    """Over a Relu the blocks and the tiles fold the Relu's mask into their step ([t = y > 0]):
    no mask of dy."""
    monkeypatch.setattr(pool_rules, f"{path.upper()}_MIN_OUTPUTS", 0)
    monkeypatch.setattr(pool_rules, f"{path.upper()}_MIN_POSITIONS", 0)
    rewritten = relu_pool_check((2, channels, 10, 12), BLOCK_POOLS["k2s2"], np.s_[:, :4, 2:8, 1:7], seed=3)
    uses = uses_blocks if path == "blocks" else uses_tiles
    assert uses(rewritten) and not reads_the_pooled_output(rewritten, "HardSigmoid", "Clip")


def test_tiles_only_where_they_were_faster():
    pool = BLOCK_POOLS["k2s2"]
    assert uses_tiles(differentiate(stem_pool_model((1, 16, 16, 48), pool), "y", ["x"]))  # 16 × 8 × 24 outputs
    assert uses_tiles(differentiate(stem_pool_model((1, 48, 12, 12), pool), "y", ["x"]))  # 48 × 6 × 6
    assert not uses_tiles(differentiate(stem_pool_model((1, 16, 12, 12), pool), "y", ["x"]))  # 16 × 6 × 6
    assert not uses_tiles(differentiate(stem_pool_model((1, 128, 8, 8), pool), "y", ["x"]))  # 4 × 4 per channel
    assert not uses_tiles(differentiate(stem_pool_model((1, 24, 16, 48), pool), "y", ["x"]))  # 24: padded blocks
    assert not uses_tiles(differentiate(stem_pool_model((1, 16, 33, 97), POOLS["k2s2-ceil-odd"]), "y", ["x"]))


def uses_columns(rewritten):
    """Whether a differentiated pool took the first maxima down its columns (a CumSum over the
    taps of each window): no Indices output, no MaxUnpool, no one-hot Conv."""
    return "CumSum" in [n.op_type for n in rewritten.graph.node] and not uses_blocks(rewritten) and all(
        len(n.output) == 1 for n in rewritten.graph.node if n.op_type == "MaxPool")


@pytest.mark.parametrize("kind", ["relu", "integers", "constant"])
@pytest.mark.parametrize("size", [(8, 12), (11, 9)])
@pytest.mark.parametrize("pool", COLUMN_POOLS)
def test_first_maximum_down_columns(pool, size, kind, monkeypatch):
    """k×1 windows that tile the rows (CRNN pools: 2×1, 4×1), rows left over at odd heights:
    the first maxima found down each column with no Indices output, exact against torch's rule
    on tied inputs (all-zero windows, integers, constant blocks); the size threshold lowered."""
    monkeypatch.setattr(pool_rules, "COLUMNS_MIN_OUTPUTS", 0)
    assert uses_columns(tie_check(COLUMN_POOLS[pool], (3, 4, *size), kind))


def test_first_maximum_down_columns_over_a_relu(monkeypatch):
    """Over a Relu the columns fold the Relu's mask into their step ([t = y > 0]): no mask of dy."""
    monkeypatch.setattr(pool_rules, "COLUMNS_MIN_OUTPUTS_OVER_RELU", 0)
    rewritten = relu_pool_check((2, 8, 9, 12), COLUMN_POOLS["k21s21"], np.s_[:, :4, 2:8, 1:7], seed=3)
    assert uses_columns(rewritten) and not reads_the_pooled_output(rewritten, "HardSigmoid", "Clip")


def reads_the_pooled_output(rewritten, *op_types):
    """Whether a node of ``op_types`` reads the pool's output y, or a depthwise Conv of it (a mask)."""
    readers = [n for n in rewritten.graph.node if "y" in n.input]
    masks = {o for n in readers if n.op_type == "Conv" for o in n.output}
    return any(n.op_type in op_types and (n.input[0] == "y" or n.input[0] in masks) for n in rewritten.graph.node)


def test_columns_only_from_the_size_where_they_were_faster():
    """From 2,048 outputs per image; over a Relu (whose mask the columns fold in) from 512."""
    assert uses_columns(differentiate(stem_pool_model((1, 24, 8, 24), COLUMN_POOLS["k21s21"]), "y", ["x"]))  # 24 × 4 × 24
    assert uses_columns(differentiate(stem_pool_model((1, 128, 4, 25), COLUMN_POOLS["k41s41"]), "y", ["x"]))  # 128 × 1 × 25
    assert uses_columns(differentiate(stem_pool_model((1, 32, 4, 24), COLUMN_POOLS["k41s41"]), "y", ["x"]))  # 32 × 1 × 24
    assert not uses_columns(differentiate(stem_pool_model((1, 16, 4, 24), COLUMN_POOLS["k41s41"]), "y", ["x"]))  # 16 × 1 × 24
    plain = node_model("MaxPool", [("N", 32, 4, 24)], np.float32, **COLUMN_POOLS["k41s41"])  # no Relu
    assert not uses_columns(differentiate(plain, "out0", ["in0"]))
    assert not uses_blocks(differentiate(stem_pool_model((1, 16, 32, 100), COLUMN_POOLS["k21s21"]), "y", ["x"]))
