import numpy as np
import onnx
import pytest
from onnx import helper

from engine.errors import InputShapeError, ModelLoadError
from engine.graph import normalize as nz
from engine.graph.editing import default_opset
from engine.graph.shapes import image_input, infer
from tests.onnx_build import Builder, run

RNG = np.random.default_rng(0)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _dims(info):
    return [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _check_clean(model, opset=nz.TARGET_OPSET):
    onnx.checker.check_model(model, full_check=True)
    assert default_opset(model) == opset
    assert not {"Identity", "Dropout", "Constant", "ConstantOfShape", "Shape"} & set(_ops(model))
    typed = {v.name for v in list(model.graph.value_info) + list(model.graph.output)}
    assert all(o in typed for n in model.graph.node for o in n.output)


def _assert_same(original, normalized, x, rtol=1e-5):
    for a, b in zip(run(original, x), run(normalized, x), strict=True):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=1e-6)


# --------------------------------------------------------------------------- producer imitations
def torchscript_model(opset=11):
    """Constant nodes, x.view(x.size(0), x.size(1)*x.size(2)*x.size(3)), a second flatten
    x.view(x.size(0), -1), shared weights behind Identity, Identity before the output."""
    b = Builder(1)
    h = b.op("Mul", ["input.1", b.constant_node(np.float32(0.5))])
    h = b.op("Conv", [h, b.weight(4, 3, 3, 3), b.weight(4)], pads=[1, 1, 1, 1])
    h = b.op("Relu", [h])
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    shape = b.op("Shape", [h])

    def unsqueeze(t):
        if opset >= 13:
            return b.op("Unsqueeze", [t, b.constant_node(np.array([0]))])
        return b.op("Unsqueeze", [t], axes=[0])

    n, c, hh, ww = (b.op("Gather", [shape, b.constant_node(np.int64(i))], axis=0)
                    for i in range(4))
    chw = b.op("Mul", [b.op("Mul", [c, hh]), ww])
    target = b.op("Concat", [unsqueeze(n), unsqueeze(chw)],
                  axis=0)
    flat = b.op("Reshape", [h, target])
    shared = b.op("Identity", [b.weight(64, 5)])
    logits = b.op("Gemm", [flat, shared, b.weight(5)])
    target2 = b.op("Concat", [unsqueeze(n), b.constant_node(np.array([-1]))],
                   axis=0)
    flat2 = b.op("Reshape", [h, target2])
    b.op("Identity", [b.op("Add", [b.op("MatMul", [flat2, shared]), logits])], name="logits")
    return b.model([("input.1", ["batch_size", 3, 8, 8])], [("logits", ["batch_size", 5])], opset)


def paddle_model():
    """opset 12, dynamic dims everywhere, Shape->Slice->Concat->Reshape, ConstantOfShape,
    ceil_mode pooling, BatchNormalization, AveragePool without padding counted."""
    b = Builder(2)
    x = "x"
    h = b.op("Conv", [x, b.weight(4, 3, 3, 3), b.weight(4)], pads=[1, 1, 1, 1])
    h = b.op("BatchNormalization", [h, b.weight(4, positive=True), b.weight(4), b.weight(4),
                                    b.weight(4, positive=True)])
    h = b.op("Relu", [h])
    h = b.op("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    h = b.op("AveragePool", [h], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
             count_include_pad=0)
    fill = b.op("ConstantOfShape", [b.constant_node(np.array([1, 4, 1, 1], np.int64))],
                value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.25]))
    h = b.op("Add", [h, fill])
    h = b.op("ReduceMean", [h], axes=[2, 3], keepdims=1)
    batch = b.op("Slice", [b.op("Shape", [h]), b.const(np.array([0])), b.const(np.array([1]))])
    flat = b.op("Reshape", [h, b.op("Concat", [batch, b.const(np.array([-1]))], axis=0)])
    out = b.op("Add", [b.op("MatMul", [flat, b.weight(4, 6)]), b.weight(6)])
    b.op("Softmax", [out], axis=1, name="save_infer_model/scale_0.tmp_0")
    dyn = ["p2o.DynamicDimension.0", 3, "p2o.DynamicDimension.1", "p2o.DynamicDimension.2"]
    out_dims = ["p2o.DynamicDimension.0", 6]
    return b.model([("x", dyn)], [("save_infer_model/scale_0.tmp_0", out_dims)], opset=12)


def tf2onnx_model(spatial=(16, 16)):
    """NHWC input and a Transpose, auto_pad=SAME_UPPER (stride 2, odd sizes pad unevenly),
    flatten through a constant [-1, K] Reshape, Identity in front of the output."""
    b = Builder(3)
    h = b.op("Transpose", ["input_1:0"], perm=[0, 3, 1, 2])
    h = b.op("Conv", [h, b.weight(4, 3, 3, 3), b.weight(4)], auto_pad="SAME_UPPER", strides=[2, 2])
    h = b.op("Relu", [h])
    h = b.op("Conv", [h, b.weight(4, 4, 2, 2)], auto_pad="SAME_UPPER")
    h = b.op("Transpose", [h], perm=[0, 2, 3, 1])
    oh, ow = (spatial[0] + 1) // 2, (spatial[1] + 1) // 2
    flat = b.op("Reshape", [h, b.const(np.array([-1, oh * ow * 4]))])
    out = b.op("Add", [b.op("MatMul", [flat, b.weight(oh * ow * 4, 3)]), b.weight(3)])
    b.op("Identity", [out], name="dense/BiasAdd:0")
    return b.model([("input_1:0", ["unk__6", *spatial, 3])], [("dense/BiasAdd:0", ["unk__6", 3])],
                   opset=13)


def caffe2_model():
    """opset 9, IR 3 with every weight listed as a graph input, fixed batch 1, LRN, ceil-like
    asymmetric MaxPool pads, Upsample, Dropout, a Reshape to [1, -1], Softmax(axis=1) on a 4-D
    tensor (pre-13: softmax over C*H*W) and on the 2-D logits."""
    b = Builder(4)
    h = b.op("Conv", ["data", b.weight(4, 3, 3, 3), b.weight(4)], pads=[1, 1, 1, 1])
    h = b.op("Relu", [h])
    h = b.op("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    h = b.op("LRN", [h], size=3, alpha=1e-2, beta=0.75, bias=1.0)
    h = b.op("Conv", [h, b.weight(4, 4, 1, 1)])
    h = b.op("BatchNormalization", [h, b.weight(4, positive=True), b.weight(4), b.weight(4),
                                    b.weight(4, positive=True)])
    up = b.op("Upsample", [h, b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    b.op("Softmax", [up], axis=1, name="prob_map")
    h = b.op("Dropout", [h], ratio=0.5)
    flat = b.op("Reshape", [h, b.const(np.array([1, -1]))])
    logits = b.op("Gemm", [flat, b.weight(7, 64), b.weight(7)], transB=1)
    b.op("Softmax", [logits], axis=1, name="prob")
    return b.model([("data", [1, 3, 8, 8])], [("prob_map", [1, 4, 8, 8]), ("prob", [1, 7])],
                   opset=9, ir_version=3, weights_as_inputs=True)


# ---------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("opset", [11, 13])
def test_torchscript_shape_subgraphs_fold_for_any_batch(opset):
    model = torchscript_model(opset)
    clean = nz.normalize(model)
    _check_clean(clean)
    reshape_targets = [i.name for i in clean.graph.initializer if i.name.endswith("__folded")]
    assert sorted(onnx.numpy_helper.to_array(t).tolist() for t in clean.graph.initializer
                  if t.name in reshape_targets) == [[0, -1], [0, 64]]
    for batch in (1, 5):
        _assert_same(model, clean, _x(batch, 3, 8, 8))


def test_paddle_dynamic_dims_specialized_and_folded():
    model = paddle_model()
    clean = nz.normalize(model, input_size=(13, 11))
    _check_clean(clean)
    assert _dims(clean.graph.input[0]) == ["p2o.DynamicDimension.0", 3, 13, 11]
    assert _dims(clean.graph.output[0]) == ["p2o.DynamicDimension.0", 6]
    # the converter's Flatten/Reshape around the 2-D pre-13 Softmax are no-ops and go
    assert _ops(clean)[-4:] == ["Reshape", "MatMul", "Add", "Softmax"]
    for batch in (1, 5):
        _assert_same(model, clean, _x(batch, 3, 13, 11))


def test_paddle_without_input_size_keeps_spatial_dims_symbolic():
    model = paddle_model()
    clean = nz.normalize(model)
    _check_clean(clean)
    assert _dims(clean.graph.input[0]) == _dims(model.graph.input[0])
    _assert_same(model, clean, _x(2, 3, 9, 14))
    _assert_same(model, clean, _x(1, 3, 16, 16))


def test_tf2onnx_nhwc_input_same_upper():
    model = tf2onnx_model((15, 15))
    clean = nz.normalize(model, input_size=(15, 15))
    _check_clean(clean)
    assert image_input(clean).layout == "NHWC"
    assert [o.name for o in clean.graph.output] == ["dense/BiasAdd:0"]
    for batch in (1, 5):
        _assert_same(model, clean, _x(batch, 15, 15, 3))


def test_specialize_nhwc_and_nchw_spatial_axes():
    nhwc = Builder().model([("img", ["n", "h", "w", 3])], [("img", None)], 17)
    nchw = Builder().model([("img", ["n", 3, "h", "w"])], [("img", None)], 17)
    gray = Builder().model([("img", ["n", "h", "w", 1])], [("img", None)], 17)
    assert _dims(nz.specialize_input(nhwc, (5, 7)).graph.input[0]) == ["n", 5, 7, 3]
    assert _dims(nz.specialize_input(nchw, (5, 7)).graph.input[0]) == ["n", 3, 5, 7]
    assert _dims(nz.specialize_input(gray, (5, 7)).graph.input[0]) == ["n", 5, 7, 1]
    for dims, expected in [(["n", 3, 224, 3], "NCHW"), (["n", 224, 224, "c"], "NHWC"),
                           (["n", "c", 224, 224], "NCHW"), (["n", "c", "h", "w"], "NCHW")]:
        model = Builder().model([("img", dims)], [("img", None)], 17)
        assert image_input(model).layout == expected, dims
    with pytest.raises(InputShapeError, match="fixed at"):
        nz.specialize_input(tf2onnx_model((16, 16)), (32, 32))


def test_caffe2_opset9_upgraded_with_old_semantics_and_free_batch():
    model = caffe2_model()
    clean = nz.normalize(model)
    _check_clean(clean)
    assert [i.name for i in clean.graph.input] == ["data"]
    assert _dims(clean.graph.input[0]) == ["batch", 3, 8, 8]
    images = _x(5, 3, 8, 8)
    prob_map, prob = run(clean, images)
    # pre-13 Softmax(axis=1) on [N, C, H, W] normalizes over C*H*W of each image
    np.testing.assert_allclose(prob_map.sum(axis=(1, 2, 3)), np.ones(5), rtol=1e-5)
    for i in range(5):  # batch 5 through the normalized model == batch 1 through the original
        expected = run(model, images[i:i + 1])
        np.testing.assert_allclose(prob_map[i:i + 1], expected[0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(prob[i:i + 1], expected[1], rtol=1e-5, atol=1e-7)


def test_opset_upgrade_range():
    model = torchscript_model(11)
    assert default_opset(nz.upgrade_opset(model)) == 17
    newer = helper.make_model(torchscript_model(13).graph,
                              opset_imports=[helper.make_opsetid("", 18)])
    assert default_opset(nz.normalize(newer)) == 18


def test_unupgradable_model_names_the_blocking_op():
    b = Builder()
    h = b.op("Relu", ["data"])
    b.op("ImageScaler", [h], scale=2.0, bias=[1.0, 2.0, 3.0], name="scaled")
    model = b.model([("data", [1, 3, 4, 4])], [("scaled", None)], opset=9)
    with pytest.raises(ModelLoadError, match="ImageScaler node 'scaled'"):
        nz.normalize(model)


def test_drop_identities_keeps_output_names_and_needed_nodes():
    b = Builder()
    r = b.op("Relu", ["x"])
    mask_dropout = b.op("Dropout", [r, b.const(np.float32(0.2)), b.const(np.bool_(False))],
                        outputs=2)
    b.op("Identity", ["x"], name="same_as_input")
    b.op("Identity", [b.op("Identity", [r])], name="relu_out")
    b.op("Cast", [mask_dropout[1]], to=onnx.TensorProto.FLOAT, name="mask")
    model = b.model([("x", ["n", 2])], [("same_as_input", None), ("relu_out", None),
                                        ("mask", None)], 17)
    clean = nz.drop_identities(model)
    assert _ops(clean) == ["Relu", "Dropout", "Identity", "Cast"]
    assert [o.name for o in clean.graph.output] == ["same_as_input", "relu_out", "mask"]
    x = _x(3, 2)
    _assert_same(model, clean, x)


def test_inference_dropout_dropped():
    b = Builder()
    d = b.op("Dropout", ["x", b.const(np.float32(0.2))])
    b.op("Relu", [d], name="y")
    model = b.model([("x", ["n", 2])], [("y", None)], 17)
    assert _ops(nz.drop_identities(model)) == ["Relu"]
    training = Builder()
    d = training.op("Dropout", ["x", training.const(np.float32(0.2)),
                                training.const(np.bool_(True))])
    training.op("Relu", [d], name="y")
    assert _ops(nz.drop_identities(training.model([("x", ["n", 2])], [("y", None)], 17))) \
        == ["Dropout", "Relu"]


def test_shape_subgraph_reading_only_symbolic_dims_becomes_minus_one():
    """Reshape [N*C, H*W] on a fully symbolic input: only one unknown may become -1, so the
    N*C element folds to -1 only when H*W is static."""
    def build():
        b = Builder()
        s = b.op("Shape", ["x"])
        g = [b.op("Gather", [s, b.const(np.array([i]))], axis=0) for i in range(4)]
        nc, hw = b.op("Mul", [g[0], g[1]]), b.op("Mul", [g[2], g[3]])
        b.op("Reshape", ["x", b.op("Concat", [nc, hw], axis=0)], name="y")
        return b.model([("x", ["n", 3, "h", "w"])], [("y", None)], 17)
    dynamic = nz.normalize(build())
    assert "Shape" in _ops(dynamic)  # two unknowns: left computed at run time
    _assert_same(build(), dynamic, _x(3, 3, 4, 5))
    static = nz.normalize(build(), input_size=(4, 5))
    assert _ops(static) == ["Reshape"]
    assert onnx.numpy_helper.to_array(static.graph.initializer[0]).tolist() == [-1, 20]
    _assert_same(build(), static, _x(3, 3, 4, 5))
    _assert_same(build(), static, _x(1, 3, 4, 5))


PASSES = {
    "normalize": lambda m, **k: nz.normalize(m, input_size=(8, 8), **k),
    "drop_initializer_inputs": nz.drop_initializer_inputs, "upgrade_opset": nz.upgrade_opset,
    "specialize_input": lambda m, **k: nz.specialize_input(m, (8, 8), **k), "free_batch": nz.free_batch,
    "drop_identities": nz.drop_identities, "fold_constants": nz.fold_constants, "infer_shapes": nz.infer_shapes,
}


@pytest.mark.parametrize("name", PASSES)
@pytest.mark.parametrize("make", [torchscript_model, caffe2_model])
def test_passes_leave_their_argument_untouched(name, make):
    model = make()
    before = model.SerializeToString()
    PASSES[name](model)
    assert model.SerializeToString() == before


@pytest.mark.parametrize("name", PASSES)
@pytest.mark.parametrize("make", [torchscript_model, caffe2_model])
def test_inplace_passes_give_the_same_model(name, make):
    expected = PASSES[name](make()).SerializeToString()
    assert PASSES[name](make(), inplace=True).SerializeToString() == expected


def test_large_weights_survive_the_weightless_upgrade_and_inference():
    b = Builder(6)
    h = b.op("Conv", ["x", b.weight(32, 3, 3, 3), b.weight(32)], pads=[1, 1, 1, 1])
    h = b.op("Conv", [h, b.weight(64, 32, 3, 3, scale=0.05)], pads=[1, 1, 1, 1])  # 18432 weights
    b.op("Softmax", [b.op("Flatten", [h])], axis=1, name="y")
    model = b.model([("x", ["n", 3, 4, 4])], [("y", None)], opset=11)
    clean = nz.normalize(model, input_size=(4, 4))
    _check_clean(clean)
    assert [i.name for i in clean.graph.input] == ["x"]
    names = sorted(t.name for t in model.graph.initializer)
    assert sorted(t.name for t in clean.graph.initializer) == names
    _assert_same(model, clean, _x(2, 3, 4, 4))


def test_infer_with_large_weights_matches_onnx_inference_on_the_whole_model():
    b = Builder(6)
    h = b.op("Conv", ["x", b.weight(64, 3, 3, 3)], pads=[1, 1, 1, 1], name="c1")
    b.op("Conv", [h, b.weight(64, 64, 3, 3, scale=0.05)], strides=[2, 2], name="y")  # 36864 weights
    model = b.model([("x", ["n", 3, "h", "w"])], [("y", None)], opset=17)
    before = model.SerializeToString()
    infos = infer(model, {"x": ["batch", 3, 8, 8]})
    assert model.SerializeToString() == before
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for dim, value in zip(fixed.graph.input[0].type.tensor_type.shape.dim[2:], (8, 8)):
        dim.Clear()
        dim.dim_value = value
    expected = onnx.shape_inference.infer_shapes(fixed).graph
    for vi in (*expected.value_info, *expected.output):
        assert infos[vi.name].shape[1:] == tuple(_dims(vi))[1:] and infos[vi.name].is_float
    assert infos["y"].shape == ("batch", 64, 3, 3)  # (8 - 3) // 2 + 1, no pads
    assert {t.name: infos[t.name].shape for t in model.graph.initializer} == {
        t.name: tuple(t.dims) for t in model.graph.initializer}


def test_tensors_read_inside_subgraphs_are_kept():
    b = Builder()
    kept = b.op("Identity", [b.op("Relu", ["x"])])
    then = helper.make_graph([helper.make_node("Neg", [kept], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Abs", [kept], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, None)])
    b.op("If", [b.const(np.bool_(True))], then_branch=then, else_branch=other, name="y")
    model = b.model([("x", ["n", 3])], [("y", None)], 17)
    clean = nz.normalize(model)
    assert "Identity" in _ops(clean) and "Relu" in _ops(clean)
    _assert_same(model, clean, _x(2, 3))


def nhwc_normalization(kept=None):
    """A uint8 NHWC image cast, normalized by 1×1×1×3 constants and transposed to NCHW for a Conv
    (a channels-last export with its preprocessing inside). ``kept``: "tap" makes the normalized
    tensor a graph output too, "shared" gives the centred one a second reader."""
    from onnx import TensorProto, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([120.0, 110.0, 100.0], np.float32).reshape(1, 1, 1, 3), "mean"),
             numpy_helper.from_array(np.array([58.0, 57.0, 59.0], np.float32).reshape(1, 1, 1, 3), "std"),
             numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["f", "mean"], ["c"]), helper.make_node("Div", ["c", "std"], ["n"]),
             helper.make_node("Transpose", ["n"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["y"], pads=[1, 1, 1, 1])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if kept == "tap":
        outputs.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, None))
    if kept == "shared":
        nodes.append(helper.make_node("ReduceMean", ["c"], ["m"], keepdims=0))
        outputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, None))
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 8, 8, 3])
    graph = helper.make_graph(nodes, "nhwc", [image], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_nhwc_normalization_moves_after_its_transpose():
    """The Transpose goes first and the constants become 1×3×1×1 (fast broadcasts on ORT CPU):
    the same outputs, bit for bit."""
    model = nhwc_normalization()
    moved = nz.normalize(model)
    assert [n.op_type for n in moved.graph.node] == ["Transpose", "Cast", "Sub", "Div", "Conv"]
    assert sorted(tuple(t.dims) for t in moved.graph.initializer if t.name != "w") == [(1, 3, 1, 1)] * 2
    x = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(run(model, x)[0], run(moved, x)[0])


@pytest.mark.parametrize("kept,order", [("tap", ["Cast", "Sub", "Div", "Transpose"]),
                                        ("shared", ["Cast", "Sub", "Transpose", "Div"])])
def test_nhwc_normalization_moves_no_tensor_read_elsewhere(kept, order):
    """A tapped normalized tensor keeps its layout (nothing moves); a centred one read twice stays
    before the Transpose, the Div after it moves."""
    model = nhwc_normalization(kept)
    moved = nz.normalize(model)
    assert [n.op_type for n in moved.graph.node][:4] == order
    x = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    for a, b in zip(run(model, x), run(moved, x)):
        np.testing.assert_array_equal(a, b)


def fpn_model(sizes_from_shape):
    """An FPN top-down path: the coarse map upsampled twice (Resize scales [1, 1, 2, 2], or
    torch's interpolate(size=): sizes Concat(Shape(x)[0:2], (H, W))) and added to the finer
    maps, then a [-1, C] flatten of a pooled map; ONNX shape inference names none of the
    outputs' batch."""
    b = Builder(5)
    fine = b.op("Conv", ["x", b.weight(8, 3, 3, 3)], pads=[1, 1, 1, 1])
    mid = b.op("Conv", [fine, b.weight(8, 8, 3, 3)], pads=[1, 1, 1, 1], strides=[2, 2])
    coarse = b.op("Conv", [mid, b.weight(8, 8, 3, 3)], pads=[1, 1, 1, 1], strides=[2, 2])

    def up(t, size):
        if not sizes_from_shape:
            return b.op("Resize", [t, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
        leading = b.op("Slice", [b.op("Shape", [t]), b.const(np.array([0])), b.const(np.array([2]))])
        sizes = b.op("Concat", [leading, b.const(np.array([size, size]))], axis=0)
        return b.op("Resize", [t, "", "", sizes], mode="linear")

    merged = b.op("Add", [up(b.op("Add", [up(coarse, 8), mid]), 16), fine])
    pooled = b.op("GlobalAveragePool", [merged])
    flat = b.op("Reshape", [pooled, b.const(np.array([-1, 8]))])
    b.op("Gemm", [flat, b.weight(4, 8)], transB=1, name="logits")
    b.op("Identity", [merged], name="map")
    return b.model([("x", ["N", 3, 16, 16])], [("logits", None), ("map", None)], opset=13)


@pytest.mark.parametrize("sizes_from_shape", [False, True])
def test_batch_kept_through_resizes_and_flattens(sizes_from_shape):
    """ONNX inference loses the batch at every Resize (floor(N · 1); sizes from Shape) and at a
    [-1, C] Reshape; normalize names it back, down the whole FPN (one Resize feeds the next),
    and the model computes the same."""
    model = fpn_model(sizes_from_shape)
    plain = nz.infer_shapes(model)
    assert _dims(plain.graph.output[0])[0] != "N"
    normalized = nz.normalize(model)
    shapes = {v.name: _dims(v) for v in list(normalized.graph.value_info) + list(normalized.graph.output)}
    assert all(dims[0] == "N" for name, dims in shapes.items() if len(dims) > 1), shapes
    onnx.checker.check_model(normalized, full_check=True)
    _assert_same(model, normalized, _x(2, 3, 16, 16))


def test_batch_not_claimed_where_dim_0_changes():
    """A Reshape whose -1 is not dim 0 ([-1, 4] of (N, 8, 1, 1): 2·N rows) and a Resize scaling
    dim 0 keep whatever inference says."""
    b = Builder(6)
    h = b.op("Conv", ["x", b.weight(8, 3, 1, 1)])
    b.op("Resize", [h, "", b.const(np.array([2, 1, 1, 1], np.float32))], mode="nearest", name="doubled")
    b.op("Reshape", [b.op("GlobalAveragePool", [h]), b.const(np.array([-1, 4]))], name="halves")
    model = b.model([("x", ["N", 3, 4, 4])], [("doubled", None), ("halves", None)], opset=13)
    assert nz.batch_pins(nz.infer_shapes(model)) == []
    assert all(_dims(o)[0] != "N" for o in nz.normalize(model).graph.output)


def test_legacy_minus_one_output_dim_takes_the_inferred_batch():
    """keras2onnx / old torch exports declare the output's batch as -1: normalize drops it (as it
    drops an unk__N an earlier inference wrote there), so the output takes the input's batch name."""
    b = Builder(7)
    pooled = b.op("ReduceMean", [b.op("Conv", ["x", b.weight(8, 3, 3, 3)])], axes=[2, 3], keepdims=0)
    b.op("Gemm", [pooled, b.weight(5, 8)], transB=1, name="logits")
    model = b.model([("x", [-1, 3, 8, 8])], [("logits", [-1, 5])], opset=11)
    assert _dims(nz.normalize(model).graph.output[0]) == ["batch", 5]


def _recurrent_with_initial_states(make_state):
    """X (T×N×4) → LSTM (hidden 3) with initial_h and initial_c from ``make_state(builder)``."""
    b = Builder(8)
    h, c = make_state(b), make_state(b)
    b.op("LSTM", ["x", b.weight(1, 12, 4), b.weight(1, 12, 3), b.weight(1, 24), "", h, c], name="y", hidden_size=3)
    return b.model([("x", [5, "N", 4])], [("y", None)], opset=14)


def _zeros_of_batch(b):
    """A 1×N×3 ConstantOfShape of 0, its batch from X's shape: what torch exports for a default state."""
    batch = b.op("Gather", [b.op("Shape", ["x"]), b.const(np.array([1]))])
    dims = b.op("Concat", [b.const(np.array([1])), batch, b.const(np.array([3]))], axis=0)
    return b.op("ConstantOfShape", [dims], value=onnx.numpy_helper.from_array(np.zeros(1, np.float32)))


@pytest.mark.parametrize("state, dropped", [
    (_zeros_of_batch, True),
    (lambda b: b.const(np.zeros((1, 2, 3), np.float32)), True),
    (lambda b: b.op("ConstantOfShape", [b.const(np.array([1, 2, 3]))]), True),  # no value: zeros
    (lambda b: b.const(np.full((1, 2, 3), 0.5, np.float32)), False),
])
def test_zero_initial_states_left_out(state, dropped):
    """Zeros as initial states are left out (absent means zeros), with what computed them."""
    model = _recurrent_with_initial_states(state)
    clean = nz.drop_zero_initial_states(model)
    lstm = next(n for n in clean.graph.node if n.op_type == "LSTM")
    assert (list(lstm.input[5:]) == []) == dropped
    assert dropped == ("ConstantOfShape" not in _ops(clean) and "Shape" not in _ops(clean) and len(clean.graph.initializer) == 3)
    x = _x(5, 2, 4)
    _assert_same(model, clean, x)
