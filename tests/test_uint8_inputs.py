"""Models that take uint8 pixels and normalize inside the graph: raw preprocessing, predictions,
gradients per input pixel (torch autograd and float64 differences), Grad-CAM and saliency."""
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import cli
from engine import Model
from engine.errors import UnsupportedOpError
from engine.explain import cam, saliency
from engine.graph.pixels import first_float, float_image
from tests.gradcheck import float64_copy, float64_slope
from tests.tiny_models import classifier, save

FIXTURES = Path(__file__).parent / "fixtures" / "inputs"
PATH = FIXTURES / "uint8_nhwc.onnx"  # pixels → Transpose → Cast → /255 − mean → /std → CNN
REFERENCE = np.load(FIXTURES / "uint8.npz")


def test_loads_as_raw_uint8_pixels_and_names_the_gradient_tensor():
    model = Model(PATH)
    assert (model.input.layout, model.input.dtype, model.preprocessing.preset) == ("NHWC", np.uint8, "raw")
    assert model.gradient_input == "/Cast_output_0" == first_float(model.proto, "pixels")
    images = list(REFERENCE["input"])
    np.testing.assert_array_equal(model.preprocess(images), REFERENCE["input"])  # pixels as they are
    assert Model(PATH, preprocess="unit").preprocessing.preset == "unit"  # an explicit choice still wins


def test_predict_matches_torch():
    model = Model(PATH, threads=1)
    probs = np.exp(REFERENCE["logits"]) / np.exp(REFERENCE["logits"]).sum(axis=1, keepdims=True)
    for prediction, row in zip(model.predict(list(REFERENCE["input"]), top=5), probs):
        assert [t.index for t in prediction.top] == list(np.argsort(-row))
        np.testing.assert_allclose([t.score for t in prediction.top], np.sort(row)[::-1], rtol=1e-4)


def test_input_gradient_per_pixel_matches_torch_and_float64_differences():
    model = Model(PATH, threads=1)
    x, seed = REFERENCE["input"], REFERENCE["seed"]
    result = model.run(x, gradients=["input"], seed=seed)
    np.testing.assert_allclose(result.outputs[0], REFERENCE["logits"], rtol=1e-4, atol=1e-5)
    got = result.gradients["input"]
    assert got.shape == x.shape and got.dtype == np.float32
    scale = np.abs(REFERENCE["grad_pixels"]).max()
    np.testing.assert_allclose(got, REFERENCE["grad_pixels"], atol=1e-4 * scale)
    reference = float64_copy(float_image(onnx.load(str(PATH)), "pixels"))
    rng = np.random.default_rng(0)
    feeds = {"pixels": x.astype(np.float64)}
    for _ in range(2):
        v = rng.standard_normal(x.shape)
        numeric = float64_slope(reference, "logits", feeds, seed, "pixels", v)
        assert abs(np.sum(got * v) - numeric) < 1e-3 * abs(numeric), (np.sum(got * v), numeric)
    # off-grid (noisy) inputs are differentiated where they are, not rounded to uint8 first
    noisy = x + rng.normal(0, 3, x.shape)
    moved = model.run(noisy, gradients=["input"], seed=seed).gradients["input"]
    numeric = float64_slope(reference, "logits", {"pixels": noisy}, seed, "pixels", v)
    assert abs(np.sum(moved * v) - numeric) < 1e-3 * abs(numeric)


def test_cam_and_saliency_on_uint8_images_of_another_size():
    model = Model(PATH, threads=1)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (24, 20, 3), dtype=np.uint8) for _ in range(2)]
    grad = cam(model, images, method="gradcam", layer="layer1")
    assert grad.maps.shape == (2, 24, 20) and grad.maps.max() > 0
    for method in ("vanilla", "gradxinput", "smoothgrad", "integrated"):
        exp = saliency(model, images, method=method, samples=4, steps=4)
        assert exp.maps.shape == (2, 24, 20) and np.isfinite(exp.maps).all() and exp.maps.max() > 0, method
    # vanilla saliency is the absmax over channels of the per-pixel gradient of the top class
    x = model.preprocess(images)
    top = model.run(x).outputs[0].argmax(axis=1)
    g = model.run(x, gradients=["input"], seed=np.eye(5)[top]).gradients["input"]
    raw = saliency(model, images, method="vanilla").raw[model.input.name]
    np.testing.assert_allclose(raw, np.abs(g).max(axis=-1), rtol=1e-5, atol=1e-9)


def integer_arithmetic_model():
    """uint8 pixels + a uint8 constant before the Cast: no gradient reaches the pixels."""
    proto = classifier(shape=("N", 3, 8, 8), dtype=TensorProto.UINT8)
    graph = proto.graph
    graph.initializer.append(numpy_helper.from_array(np.array(1, np.uint8), "one"))
    graph.node.insert(0, helper.make_node("Add", ["image", "one"], ["shifted"]))
    for node in graph.node[1:]:
        node.input[:] = ["shifted" if i == "image" else i for i in node.input]
    return proto


def test_pixels_that_do_more_than_move_have_no_input_gradient(tmp_path):
    model = Model(save(integer_arithmetic_model(), tmp_path / "m.onnx"), threads=1)
    assert model.gradient_input is None
    x = model.preprocess([np.full((8, 8, 3), 9, np.uint8)])
    with pytest.raises(UnsupportedOpError, match="goes through Add"):
        model.run(x, gradients=["input"], seed=np.eye(4)[[0]])
    assert model.run(x, gradients=["relu2"], seed=np.eye(4)[[0]]).gradients["relu2"].shape == (1, 4, 4, 4)


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_cli(tmp_path):
    image = tmp_path / "a.png"
    pixels = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    cv2.imwrite(str(image), pixels[..., ::-1])
    result = invoke("inspect", PATH)
    assert result.exit_code == 0, result.output
    assert "NHWC uint8" in result.output and "gradients w.r.t. /Cast_output_0" in result.output
    assert json.loads(invoke("inspect", PATH, "--json").stdout)["image_input"]["gradients"] == "/Cast_output_0"
    result = invoke("predict", PATH, image, "--json", "--top", "1")
    assert result.exit_code == 0, result.output
    want = Model(PATH).predict(pixels, top=1)[0].top[0]
    assert json.loads(result.stdout)[0]["top"][0]["index"] == want.index
    for command, extra in (("cam", ["--layer", "layer2"]), ("saliency", ["--method", "vanilla"])):
        result = invoke(command, PATH, image, "--out", tmp_path / command, *extra)
        assert result.exit_code == 0, result.output
