"""Grad-CAM computed inside the rewritten graph (engine.graph.gradcam, capture.gradcam_fn) and the
``cam`` path that uses it, against independent references: pytorch-grad-cam's maps and torch
autograd on the zoo and wild exports, and the general capture → numpy → cv2 resize path (hand-made
nets at opsets 11, 13 and 18, where the reductions take their axes differently)."""
import numpy as np
import pytest

from engine.api import Model
from engine.data import preprocess as presets
from engine.errors import UsageError
from engine.explain import cam, explainers, methods
from engine.explain.capture import capture, gradcam_fn
from engine.explain.outputs import describe
from engine.graph.autodiff import SEED, differentiate
from engine.graph.gradcam import (CAM_EMPTY, CAM_MAPS, CAM_RAW, CAM_SIZE, CLASSES, TOP_CLASS, seed_classes,
                                  weights_source)
from engine.graph.normalize import normalize
from engine.graph.pixels import PIXELS, normalized_pixels
from engine.runtime import rewrite
from engine.viz.overlay import unit_resized
from tests import wild, zoo
from tests.onnx_build import Builder, session
from tests.test_explain_zoo import CLASSIFIERS, scale

SHAPES = "models/shapes-resnet.onnx"


def _model(path, **kwargs):
    return Model(path, provider="CPUExecutionProvider", threads=1, **kwargs)


@pytest.mark.parametrize("variant", CLASSIFIERS)
def test_top_class_maps_match_pytorch_grad_cam(variant):
    fx = zoo.load(variant)
    model = _model(fx.path)
    size = (40, 24)  # the maps' size: any
    for tap in fx.taps:
        scores, raw, maps, empty, classes = gradcam_fn(model, tap, fx.output_name, "top")(fx.input, size)
        want = fx.gradcam[tap]
        assert empty.tolist() == (want <= 0).all(axis=(1, 2)).tolist()
        assert classes.tolist() == fx.seed_top1.argmax(axis=1).tolist()
        np.testing.assert_allclose(scores, fx.outputs[fx.output_name], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(raw, want, rtol=1e-4, atol=1e-5 * scale(want), err_msg=tap)
        np.testing.assert_allclose(maps, unit_resized(want, size), atol=1e-4, err_msg=tap)
        for seed, fed in (("class", classes), ("given", fx.seed_top1)):  # the same classes fed
            given = gradcam_fn(model, tap, fx.output_name, seed)(fx.input, size, fed)[1]
            np.testing.assert_allclose(given, raw, rtol=1e-5, atol=1e-6 * scale(want), err_msg=tap)


WILD = [n for n in wild.names("own export") if wild.index()[n]["explained"] == "a class score (class:K)"
        and "source" not in wild.index()[n] and "float16" not in str(wild.index()[n])]  # as test_wild's torch checks


@pytest.mark.parametrize("name", WILD)
def test_maps_for_given_seeds_match_torch_on_the_wild_exports(name):
    entry, ref = wild.index()[name], wild.reference(name)
    model = _model(wild.DIR / entry["file"], input_size=tuple(entry["test_size"]),
                   **({"extra_inputs": ref.extras} if ref.extras else {}))
    scores, raw, _, _ = gradcam_fn(model, ref.layer, entry["explained_output"], "given")(ref.input, (8, 8), ref.seed)
    weights = ref.grad_layer.astype(np.float64).mean(axis=(2, 3))
    want = np.maximum(np.einsum("nk,nkhw->nhw", weights, ref.act_layer.astype(np.float64)), 0)
    assert np.abs(raw - want).max() <= 1e-3 * scale(want)
    np.testing.assert_allclose(scores, ref.output, rtol=1e-3, atol=1e-4 * scale(ref.output))


def test_the_weights_come_from_the_pooled_gradient_only_where_a_global_average_reads_the_layer():
    model = _model(SHAPES)
    proto = normalize(model.proto, input_size=model.input_size)
    h, w = model.layer(model.default_layer).shape[2:]
    assert weights_source(proto, model.default_layer) == ("/pool/GlobalAveragePool_output_0", 1 / (h * w))
    assert weights_source(proto, "/layer2/relu_1/Relu_output_0") == ("/layer2/relu_1/Relu_output_0", None)


def _images(model, n):
    h, w = model.input_size
    return list(np.random.default_rng(5).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8))


def _reference(model, images, classes, layer):
    """Grad-CAM the general way: the capture's A and G, the numpy method, the resize."""
    x = model.preprocess(images)
    row = model.outputs[0].shape[1:]
    seeds = np.eye(np.prod(row), dtype=np.float32)[classes].reshape(len(x), *row)
    outputs, acts, grads = capture(model, x, [layer], seeds)
    raw = methods.gradcam(acts[layer], grads[layer])
    return raw, unit_resized(raw, images[0].shape[:2]), outputs[0].reshape(len(x), -1)


def _no_capture(monkeypatch):
    """Make the general path fail, so that a cam call that passes took the in-graph one."""
    def general(*args, **kwargs):
        raise AssertionError("the general capture ran")
    monkeypatch.setattr(explainers, "capture", general)


@pytest.mark.parametrize("targets", ["top", [3, 1, 4, 1, 5], 2, "3"])
def test_cam_makes_gradcam_in_the_graph_in_batches(targets, monkeypatch):
    model = _model(SHAPES)
    images = _images(model, 5)
    _no_capture(monkeypatch)
    exp = cam(model, images, targets=targets, batch=2)
    monkeypatch.undo()
    layer = model.default_layer
    raw, maps, scores = _reference(model, images, exp.targets, layer)
    if targets == "top":
        assert exp.targets.tolist() == scores.argmax(axis=1).tolist()
    else:
        assert exp.targets.tolist() == np.broadcast_to(np.ravel(np.asarray(targets, int)), 5).tolist()
    assert exp.layers == [layer] and exp.image.tolist() == list(range(5))
    np.testing.assert_allclose(exp.raw[layer], raw, rtol=1e-4, atol=1e-6 * scale(raw))
    np.testing.assert_allclose(exp.maps, maps, atol=1e-4)
    np.testing.assert_allclose(exp.scores, scores, rtol=1e-5, atol=1e-5)
    assert exp.empty.tolist() == [False] * 5 and exp.details == [{}] * 5


def test_given_classes_are_checked_and_read_as_the_general_path_reads_them(monkeypatch):
    model = _model(SHAPES)
    images = _images(model, 2)
    _no_capture(monkeypatch)
    for targets, words in [([1], "got 1 targets for 2 images"), ([1, 8], "out of range: the model has 8 classes"),
                           ([-9, 1], "out of range"), ([1, "owl"], "neither a class index nor one of the model's labels")]:
        with pytest.raises(UsageError, match=words):
            cam(model, images, targets=targets)
    exp = cam(model, images, targets=[-1, "star"])
    monkeypatch.undo()
    assert exp.targets.tolist() == [7, model.labels.index("star")]
    np.testing.assert_allclose(exp.maps, _reference(model, images, [7, model.labels.index("star")], exp.layers[0])[1],
                               atol=1e-4)


def test_the_general_path_keeps_what_the_graph_does_not_make():
    model = _model(SHAPES)
    view = describe(model, model.preprocess(_images(model, 1)))
    for method, layer, targets, tta in [("gradcam++", "auto", "top", False), ("gradcam", "layer2,layer3", "top", False),
                                        ("gradcam", "auto", [[1, 2]], False), ("gradcam", "auto", "top", True)]:
        assert explainers._in_graph_gradcam(model, method, layer, view, targets, tta, False, 1) is None


def test_a_static_batch_model_runs_the_graph_in_blocks_like_its_dynamic_twin(monkeypatch):
    static, dynamic = (_model(wild.DIR / f"{n}.onnx") for n in ("regnet_static1", "regnet_dynbatch"))
    images = _images(static, 3)
    _no_capture(monkeypatch)
    a, b = cam(static, images, targets=[1, 4, 7]), cam(dynamic, images, targets=[1, 4, 7])
    ta, tb = cam(static, images), cam(dynamic, images)
    layer = static.default_layer
    np.testing.assert_allclose(a.raw[layer], b.raw[layer], rtol=1e-4, atol=1e-5 * scale(b.raw[layer]))
    np.testing.assert_allclose(a.maps, b.maps, atol=1e-3)
    assert ta.targets.tolist() == tb.targets.tolist() == b.scores.argmax(axis=1).tolist()
    np.testing.assert_allclose(ta.maps, tb.maps, atol=1e-3)


@pytest.mark.parametrize("name", ["mobilenetv3_n1c", "squeezenet_nc11"])
def test_n1c_and_nc11_heads_take_the_graph_for_top_and_given_classes(name, monkeypatch):
    model = _model(wild.DIR / f"{name}.onnx")
    images = _images(model, 2)
    _no_capture(monkeypatch)
    top, given = cam(model, images), cam(model, images, targets=[1, -2])
    monkeypatch.undo()
    layer = model.default_layer
    for exp in (top, given):
        raw, maps, scores = _reference(model, images, exp.targets, layer)
        np.testing.assert_allclose(exp.raw[layer], raw, rtol=1e-4, atol=1e-5 * scale(raw))
        np.testing.assert_allclose(exp.maps, maps, atol=1e-3)
        np.testing.assert_allclose(exp.scores, scores, rtol=1e-4, atol=1e-4 * scale(scores))
    assert top.targets.tolist() == scores.argmax(axis=1).tolist()
    assert given.targets.tolist() == [1, scores.shape[1] - 2]


def test_a_dynamic_size_model_gets_a_graph_per_size(monkeypatch):
    model = _model(wild.DIR / "densenet_varhw.onnx")
    rng = np.random.default_rng(1)
    small, large = (rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in ((64, 80), (96, 64)))
    _no_capture(monkeypatch)
    maps = [cam(model, [image], targets=[2]) for image in (small, large)]
    monkeypatch.undo()
    assert [m.maps.shape for m in maps] == [(1, 64, 80), (1, 96, 64)]
    for image, exp in zip((small, large), maps):
        raw, want, _ = _reference(model, [image], exp.targets, model.default_layer)
        np.testing.assert_allclose(exp.maps, want, atol=1e-4)


def _small_net(opset, pooled):
    """x N×2×6×5 → Conv → ReLU ``act`` → (GlobalAveragePool | MaxPool) → Flatten → Gemm → ``y`` N×4."""
    b = Builder(seed=opset)
    act = b.op("Relu", [b.op("Conv", ["x", b.weight(3, 2, 3, 3), b.weight(3)], pads=[1, 1, 1, 1])], name="act")
    pool = b.op("GlobalAveragePool", [act]) if pooled else b.op("MaxPool", [act], kernel_shape=[2, 2], strides=[2, 2])
    b.op("Gemm", [b.op("Flatten", [pool]), b.weight(4, 3 if pooled else 18), b.weight(4)], name="y", transB=1)
    return b.model([("x", ["N", 2, 6, 5])], [("y", ["N", 4])], opset)


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("pooled", [True, False])
def test_the_graph_maps_equal_numpy_on_the_capture_at_each_opset(opset, pooled):
    net = _small_net(opset, pooled)
    x = np.random.default_rng(opset).standard_normal((3, 2, 6, 5)).astype(np.float32)
    seeds = np.eye(4, dtype=np.float32)[[0, 3, 1]] * np.float32([[1], [1], [0]])  # the last: no gradient, an empty map
    capture_ = session(rewrite.build(net, rewrite.Request(None, ("act",), ("act",), "y")))
    y, a, g = capture_.run(["y", "act", "act__grad"], {"x": x, SEED: seeds})
    fed = {"given": {SEED: seeds}, "class": {CLASSES: np.array([0, -1, 1])}, "top": {}}
    for seed, feeds in fed.items():
        proto = rewrite.build(net, rewrite.Request(None, (), (), "y", seed=seed, cam="act"))
        feeds = {"x": x, CAM_SIZE: np.array([3, 1, 9, 7], np.int64), **feeds}
        fetch = [CAM_RAW, CAM_MAPS, CAM_EMPTY, *([TOP_CLASS] if seed == "top" else [])]
        got_raw, maps, empty, *classes = session(proto).run(fetch, feeds)
        if seed != "given":  # the same maps for these classes: given as seeds to the capture
            classes = classes[0] if classes else [0, 3, 1]  # found in the graph, or those fed (−1: the last)
            if seed == "top":
                assert classes.tolist() == y.argmax(axis=1).tolist()
            g = capture_.run(["act__grad"], {"x": x, SEED: np.eye(4, dtype=np.float32)[classes]})[0]
        raw = methods.gradcam(a, g)
        np.testing.assert_allclose(got_raw[:, 0], raw, rtol=1e-5, atol=1e-6 * scale(raw))
        np.testing.assert_allclose(maps[:, 0], unit_resized(raw, (9, 7)), atol=1e-5)
        assert empty.tolist() == (raw <= 0).all(axis=(1, 2)).tolist() and (seed != "given" or empty[2])


def test_the_top_class_is_the_first_of_tied_maxima():
    b = Builder()
    b.op("Mul", ["x", b.const(np.float32(2.0))], name="y")
    proto = seed_classes(differentiate(b.model([("x", ["N", 3])], [("y", ["N", 3])], 13), "y", ["x"]), "y", top=True)
    x = np.array([[1, 3, 3], [2, 2, 0], [0, 0, 0]], np.float32)
    classes, grad = session(proto).run([TOP_CLASS, "x__grad"], {"x": x})
    assert classes.tolist() == np.argmax(x, axis=1).tolist() == [1, 0, 0]
    np.testing.assert_array_equal(grad, 2 * np.eye(3, dtype=np.float32)[[1, 0, 0]])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("preprocess", [{"preset": "imagenet"}, {"preset": "unit", "channel_order": "BGR"},
                                        {"preset": "symmetric", "mean": "0.2,0.5,0.7", "std": "0.3,0.25,0.2"}])
def test_pixels_normalized_in_the_graph_equal_the_preprocessing_bit_for_bit(layout, preprocess):
    shape = ["N", 3, None, None] if layout == "NCHW" else ["N", None, None, 3]
    b = Builder()
    b.op("Identity", ["image"], name="out")
    proto = b.model([("image", shape)], [("out", None)], 13)
    pre = presets.resolve(preprocess)
    scale, offset = pre.affine()
    normalized_pixels(proto, "image", scale, offset, pre.channel_order == "BGR", layout)
    images = np.random.default_rng(3).integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    got = session(proto).run(["out"], {PIXELS: images})[0]
    np.testing.assert_array_equal(got, pre(images, layout=layout))


@pytest.mark.parametrize("preprocess", [None, {"preset": "unit", "channel_order": "BGR"}])
def test_cam_feeds_uint8_pixels_to_the_graph_for_nchw_and_nhwc_inputs(preprocess, monkeypatch):
    for path in [SHAPES, wild.DIR / "convnext_nhwc.onnx"]:
        model = _model(path, preprocess=preprocess)
        images = _images(model, 3)
        _no_capture(monkeypatch)
        exp = cam(model, images, targets=[1, 0, 2])
        monkeypatch.undo()
        assert explainers._in_graph_plan(model, "auto", describe(model, model.preprocess(images)), "class")[2]
        raw, maps, scores = _reference(model, images, exp.targets, model.default_layer)
        np.testing.assert_allclose(exp.raw[model.default_layer], raw, rtol=1e-4, atol=1e-6 * scale(raw))
        np.testing.assert_allclose(exp.maps, maps, atol=1e-4)
        np.testing.assert_allclose(exp.scores, scores, rtol=1e-5, atol=1e-5)
