"""Models with inputs besides the image: Model(extra_inputs=...), --input NAME=VALUE|FILE.npy, and the
rewritten / cut models that must receive them too."""
import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import cli
from engine import Model
from engine.errors import InputShapeError, UsageError
from engine.explain import cam
from engine.explain.capture import head_fn, head_gradient_fn
from engine.runtime.feeds import ExtraInput, coerce, feed, parse
from tests.gradcheck import float64_copy, float64_slope
from tests.tiny_models import classifier, save

RNG = np.random.default_rng(11)


def detector_like(batch="N"):
    """The tiny classifier whose logits are scaled by input ``scale`` [N,1] and shifted by
    0.01·(h + w) of an int64 ``im_shape`` [N,2]: out = logits·scale + 0.01·Σ im_shape."""
    model = classifier(shape=(batch, 3, 8, 8), stages=((6, 1),))
    graph = model.graph
    graph.input.extend([helper.make_tensor_value_info("scale", TensorProto.FLOAT, [batch, 1]),
                        helper.make_tensor_value_info("im_shape", TensorProto.INT64, [batch, 2])])
    graph.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                              numpy_helper.from_array(np.array(0.01, np.float32), "cent")])
    graph.node.extend([
        helper.make_node("Mul", ["logits", "scale"], ["scaled"]),
        helper.make_node("Cast", ["im_shape"], ["shape_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["shape_f", "axis1"], ["shape_sum"], keepdims=1),
        helper.make_node("Mul", ["shape_sum", "cent"], ["shift"]),
        helper.make_node("Add", ["scaled", "shift"], ["out"]),
    ])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 4]))
    onnx.checker.check_model(model)
    return model


@pytest.fixture()
def path(tmp_path):
    return save(detector_like(), tmp_path / "det.onnx")


def bare(path, x, scale, im_shape):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x, "scale": scale, "im_shape": im_shape})[0]


def test_values_are_fed_on_every_run_and_repeated_per_image(path):
    m = Model(path, extra_inputs={"scale": 2.0, "im_shape": [480, 640]}, threads=1)
    x = RNG.standard_normal((3, 3, 8, 8)).astype(np.float32)
    want = bare(path, x, np.full((3, 1), 2, np.float32), np.tile(np.array([[480, 640]], np.int64), (3, 1)))
    np.testing.assert_allclose(m.run(x).outputs[0], want, rtol=1e-6)
    # with activations, through the rewritten model
    result = m.run(x, activations=["relu2"])
    np.testing.assert_allclose(result.outputs[0], want, rtol=1e-5)
    # one row per image is fed as it is
    rows = Model(path, extra_inputs={"scale": [[1.0], [2.0], [3.0]], "im_shape": [8, 8]}, threads=1)
    want = bare(path, x, np.array([[1], [2], [3]], np.float32), np.full((3, 2), 8, np.int64))
    np.testing.assert_allclose(rows.run(x).outputs[0], want, rtol=1e-6)
    with pytest.raises(InputShapeError, match="3 rows for a batch of 2"):
        rows.run(x[:2])


def test_missing_and_unknown_inputs_are_named(path):
    m = Model(path, extra_inputs={"scale": 1.0})
    with pytest.raises(UsageError, match=r"also needs the inputs im_shape \(int64 \?×2\).*extra_inputs="):
        m.predict(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(UsageError, match="no extra input scal .*scale \\(float32 \\?×1\\), im_shape"):
        Model(path, extra_inputs={"scal": 1.0})
    with pytest.raises(InputShapeError, match="int64 values"):
        Model(path, extra_inputs={"im_shape": [0.5, 2]})
    assert Model(path).summary()["inputs"][1] == {"name": "scale", "dtype": "float32", "shape": ("N", 1)}


def test_input_gradient_against_float64_differences(path):
    scale, im_shape = np.float32(1.7), [24, 32]
    m = Model(path, extra_inputs={"scale": scale, "im_shape": im_shape}, threads=1)
    x = RNG.standard_normal((2, 3, 8, 8))
    seed = RNG.standard_normal((2, 4))
    got = m.run(x.astype(np.float32), gradients=["input"], seed=seed).gradients["input"]
    reference = float64_copy(onnx.load(str(path)))
    feeds = {"image": x, "scale": np.full((2, 1), scale, np.float64), "im_shape": np.array([im_shape] * 2)}
    for _ in range(2):
        v = RNG.standard_normal(x.shape)
        numeric = float64_slope(reference, "out", feeds, seed, "image", v)
        assert abs(np.sum(got * v) - numeric) < 2e-3 * abs(numeric), (np.sum(got * v), numeric)
    # the scale multiplies the gradient: an independent check that the value reached the rewritten model
    halved = Model(path, extra_inputs={"scale": scale / 2, "im_shape": im_shape}, threads=1)
    np.testing.assert_allclose(halved.run(x.astype(np.float32), gradients=["input"], seed=seed).gradients["input"],
                               got / 2, rtol=1e-4, atol=1e-7)


def test_cut_sub_models_receive_the_extra_inputs(path):
    m = Model(path, extra_inputs={"scale": 3.0, "im_shape": [5, 7]}, threads=1)
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    seed = RNG.standard_normal((2, 4)).astype(np.float32)
    full = m.run(x, activations=["relu2"], gradients=["relu2"], seed=seed)
    acts = full.activations["relu2"]
    np.testing.assert_allclose(head_fn(m, "relu2")(acts), full.outputs[0], rtol=1e-5)
    np.testing.assert_allclose(head_gradient_fn(m, "relu2")(acts, seed), full.gradients["relu2"], rtol=1e-5, atol=1e-7)
    images = [RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2)]
    for method in ("gradcam", "ablationcam"):
        exp = cam(m, images, method=method, targets=1)
        assert exp.maps.shape == (2, 8, 8) and np.isfinite(exp.maps).all() and exp.maps.max() > 0


def test_feeds_rule():
    batched = ExtraInput("im_shape", np.dtype("float32"), ("N", 2), True)
    value = coerce(batched, [480, 640])
    assert value.shape == (1, 2) and feed(batched, value, 3).tolist() == [[480, 640]] * 3
    fixed = ExtraInput("size", np.dtype("int64"), (2,), False)
    assert feed(fixed, coerce(fixed, [4, 5]), 3).tolist() == [4, 5]
    unbatched = ExtraInput("scale_factor", np.dtype("float32"), ("M", 2), False)  # dynamic, but not the batch
    assert feed(unbatched, coerce(unbatched, [0.5, 0.25]), 3).tolist() == [[0.5, 0.25]]
    scalar = ExtraInput("scale", np.dtype("float32"), (), False)
    assert coerce(scalar, 0.5).shape == ()
    with pytest.raises(InputShapeError, match="declared shape"):
        coerce(fixed, [1, 2, 3])
    assert parse("im_shape=480,640")[1].tolist() == [480, 640] and parse("scale=0.5")[1] == 0.5
    for bad in ("scale", "=3", "scale=a,b"):
        with pytest.raises(UsageError, match="--input"):
            parse(bad)


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_cli_input_option(path, tmp_path):
    image = tmp_path / "a.png"
    pixels = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    cv2.imwrite(str(image), pixels)
    np.save(tmp_path / "scale.npy", np.array([[2.5]], np.float32))
    result = invoke("predict", path, image, "--input", f"scale={tmp_path / 'scale.npy'}", "--input",
                    "im_shape=8,8", "--json", "--top", "4")
    assert result.exit_code == 0, result.output
    api = Model(path, extra_inputs={"scale": 2.5, "im_shape": [8, 8]}).predict(str(image), top=4)[0]
    assert json.loads(result.stdout)[0] == json.loads(json.dumps(api.to_dict()))
    missing = invoke("predict", path, image, "--input", "scale=1")
    assert missing.exit_code == 2 and missing.output.count("\n") == 1
    assert "im_shape" in missing.output and "--input NAME=VALUE" in missing.output
    assert invoke("predict", path, image, "--input", "scale").exit_code == 2
    out = tmp_path / "cams"
    result = invoke("cam", path, image, "--input", "scale=2", "--input", "im_shape=8,8", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert (out / "cams.npz").is_file()
    result = invoke("saliency", path, image, "--input", "scale=2", "--input", "im_shape=8,8", "--method", "vanilla",
                    "--out", tmp_path / "sal")
    assert result.exit_code == 0, result.output
    assert invoke("inspect", path).exit_code == 0


def masked_classifier():
    """The tiny classifier whose first activation is multiplied by a second 4-D input ``mask`` [N,1,8,8]."""
    model = classifier(shape=("N", 3, 8, 8))
    graph = model.graph
    graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, 8, 8]))
    graph.node.insert(1, helper.make_node("Mul", ["conv1", "mask"], ["masked"]))
    for node in graph.node[2:]:
        node.input[:] = ["masked" if i == "conv1" else i for i in node.input]
    onnx.checker.check_model(model)
    return model


def test_a_second_4d_tensor(tmp_path):
    path = save(masked_classifier(), tmp_path / "masked.onnx")
    mask = np.zeros((8, 8), np.float32)
    mask[2:6, 1:7] = 1
    m = Model(path, extra_inputs={"mask": mask}, threads=1)  # the first 4-D input is the image
    assert m.input.name == "image" and m.extra_inputs["mask"].shape == (1, 1, 8, 8)
    x = RNG.standard_normal((2, 3, 8, 8))
    seed = RNG.standard_normal((2, 4))
    got = m.run(x.astype(np.float32), gradients=["input"], seed=seed).gradients["input"]
    feeds = {"image": x, "mask": np.broadcast_to(mask, (2, 1, 8, 8)).astype(np.float64)}
    reference = float64_copy(onnx.load(str(path)))
    v = RNG.standard_normal(x.shape)
    numeric = float64_slope(reference, "logits", feeds, seed, "image", v)
    assert abs(np.sum(got * v) - numeric) < 2e-3 * abs(numeric)
    # pixels whose 3×3 neighbourhood the mask zeroes get no gradient
    assert np.all(got[:, :, 0, :] == 0) and np.all(got[:, :, 7, :] == 0)
    exp = cam(m, [RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)], method="gradcam")
    assert exp.maps.shape == (1, 8, 8)
