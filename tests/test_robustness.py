"""Robustness check: top-1 and Grad-CAM agreement under augmentation ops, warping maps back."""
import json
import math

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from cli import main
from engine.analyze.regions import region_iou, top_region
from engine.analyze.robustness import robustness, warp_back
from engine.api import Model
from engine.augment import CenterCrop, Rotate, Rotate90, Translate
from engine.explain import cam

SIZE = 16


def conv_net(path, mirror, seed=0, classes=4):
    """Conv-ReLU-Conv-ReLU-GAP-Gemm on 3×16×16 inputs, stride 1, zero padding 1. With ``mirror``
    every kernel equals its left-right mirror image, so each activation of a flipped image is
    the flipped activation and the logits (a spatial mean, then Gemm) are flip-invariant."""
    rng = np.random.default_rng(seed)

    def kernel(*dims):
        w = (rng.standard_normal(dims) / np.sqrt(np.prod(dims[1:]))).astype(np.float32)
        return (w + w[..., ::-1]) / 2 if mirror else w

    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w1", kernel(6, 3, 3, 3)), ("b1", rng.standard_normal(6).astype(np.float32) * 0.1),
        ("w2", kernel(6, 6, 3, 3)), ("b2", rng.standard_normal(6).astype(np.float32) * 0.1),
        ("fc_w", rng.standard_normal((classes, 6)).astype(np.float32)),
        ("fc_b", np.zeros(classes, np.float32))]]
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["conv1"], pads=[1] * 4),
             helper.make_node("Relu", ["conv1"], ["relu1"]),
             helper.make_node("Conv", ["relu1", "w2", "b2"], ["conv2"], pads=[1] * 4),
             helper.make_node("Relu", ["conv2"], ["relu2"]),
             helper.make_node("GlobalAveragePool", ["relu2"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "mirror", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                             ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    smooth = [cv2.GaussianBlur(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), (5, 5), 1.5)
              for _ in range(6)]
    return np.stack(smooth)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("robust")
    return {name: Model(conv_net(folder / f"{name}.onnx", mirror=(name == "mirror")), threads=1)
            for name in ("mirror", "plain")}


def reference_region(values, valid, fraction):
    """Top region by sorting: values at least the k-th largest valid one, k = ⌈fraction·n⌉."""
    inside = np.sort(values[valid])[::-1]
    k = math.ceil(fraction * len(inside))
    return valid & (values >= inside[k - 1])


def reference_iou(a, b, valid, fraction=0.2):
    ra, rb = reference_region(a, valid, fraction), reference_region(b, valid, fraction)
    return (ra & rb).sum() / (ra | rb).sum()


# --- regions and IoU ------------------------------------------------------------------------

def test_top_region_matches_sorting_reference_and_skips_invalid_pixels():
    rng = np.random.default_rng(0)
    values = rng.random((12, 9))
    valid = rng.random((12, 9)) > 0.3
    values[~valid] = 10.0  # out-of-frame pixels must not enter the region or its threshold
    for fraction in (0.05, 0.2, 0.5, 1.0):
        np.testing.assert_array_equal(top_region(values, valid, fraction),
                                      reference_region(values, valid, fraction))
    assert top_region(values, valid, 0.2).sum() == math.ceil(0.2 * valid.sum())


def test_iou_counts_ties_and_matches_reference():
    a = np.array([[5, 4, 3, 2, 1]], float)
    b = np.array([[1, 4, 3, 2, 5]], float)
    everywhere = np.ones(a.shape, bool)
    assert region_iou(a, b, everywhere, 0.4) == pytest.approx(1 / 3)  # {0,1} vs {1,4}
    assert region_iou(a, a, everywhere) == 1.0
    flat = np.zeros((4, 4))
    assert region_iou(flat, flat, np.ones((4, 4), bool)) == 1.0  # ties: the whole frame on both sides
    assert math.isnan(region_iou(a, b, np.zeros(a.shape, bool)))
    rng = np.random.default_rng(1)
    for _ in range(5):
        x, y, v = rng.random((10, 10)), rng.random((10, 10)), rng.random((10, 10)) > 0.2
        assert region_iou(x, y, v) == pytest.approx(reference_iou(x, y, v))


# --- warping back onto the original frame ---------------------------------------------------

def test_warp_back_quarter_turn_of_a_hand_made_map():
    original = np.arange(6 * 10, dtype=np.float32).reshape(6, 10)
    op = Rotate90(k=1)
    params = op.sample_images(np.zeros((1, 6, 10, 3), np.uint8), seed=0)
    aug_map = np.rot90(original, 1)  # the map as the rotated (10×6) image would give it
    back, valid = warp_back(aug_map, op.matrices(params, (6, 10))[0], (6, 10))
    np.testing.assert_array_equal(back, original)
    assert valid.all()


def test_warp_back_crop_marks_only_the_box_valid():
    op = CenterCrop(size=(4, 6))
    params = op.sample_images(np.zeros((1, 8, 10, 3), np.uint8), seed=0)
    aug_map = np.arange(24, dtype=np.float32).reshape(4, 6) + 1
    back, valid = warp_back(aug_map, op.matrices(params, (8, 10))[0], (8, 10))
    box = np.zeros((8, 10), bool)
    box[2:6, 2:8] = True
    np.testing.assert_array_equal(valid, box)
    np.testing.assert_array_equal(back[box].reshape(4, 6), aug_map)


def test_warp_back_translate_excludes_pixels_that_left_the_frame():
    op = Translate(x=0.25, y=0.0)  # 2 px to the right on an 8-px-wide image
    params = op.sample_images(np.zeros((1, 8, 8, 3), np.uint8), seed=0)
    aug_map = np.tile(np.arange(8, dtype=np.float32) * 10, (8, 1))
    back, valid = warp_back(aug_map, op.matrices(params, (8, 8))[0], (8, 8))
    assert valid[:, :6].all() and not valid[:, 6:].any()  # original columns 6, 7 moved out
    np.testing.assert_allclose(back[:, :6], aug_map[:, 2:], atol=1e-4)  # column x came from x + 2


def test_warp_back_rotation_validity_follows_the_rotated_square():
    n = 21
    op = Rotate(angle=45)
    params = op.sample_images(np.zeros((1, n, n, 3), np.uint8), seed=0)
    _, valid = warp_back(np.zeros((n, n), np.float32), op.matrices(params, (n, n))[0], (n, n))
    c = (n - 1) / 2
    ys, xs = np.mgrid[0:n, 0:n] - c
    r = np.sqrt(0.5)
    inside = (np.abs(r * (xs + ys)) <= c + 1e-6) & (np.abs(r * (ys - xs)) <= c + 1e-6)
    np.testing.assert_array_equal(valid, inside)
    assert valid[n // 2, n // 2] and not valid[0, 0]


# --- the whole check ------------------------------------------------------------------------

def test_identity_ops_agree_fully(models, images):
    report = robustness(models["plain"], images, "brightness:1,rotate:0,hflip:p=0,rotate90:0")
    for row in report.summary():
        assert row["agreement"] == 1.0 and row["iou_mean"] == 1.0 and row["iou_std"] == 0.0
        assert row["valid"] == 1.0


def test_hflip_on_a_mirror_symmetric_model_keeps_class_and_map(models, images):
    model = models["mirror"]
    x = model.preprocess(images)
    np.testing.assert_allclose(model.run(x[..., ::-1].copy()).outputs[0], model.run(x).outputs[0],
                               rtol=1e-5, atol=1e-5)  # flip-invariant by construction
    report = robustness(model, images, "hflip")
    assert report.summary()[0]["agreement"] == 1.0
    np.testing.assert_array_equal(report.iou, 1.0)


@pytest.mark.parametrize("spec, undo", [("hflip", np.fliplr), ("rotate90:1", lambda m: np.rot90(m, -1))])
def test_plain_model_matches_an_independent_reference(models, images, spec, undo):
    model = models["plain"]
    report = robustness(model, images, spec, batch=4)
    undo_image = {"hflip": lambda im: im[:, ::-1], "rotate90:1": lambda im: np.rot90(im, 1)}[spec]
    augmented = np.stack([np.ascontiguousarray(undo_image(im)) for im in images])
    before = cam(model, images)
    after = cam(model, augmented, targets=list(before.targets))
    expected = [reference_iou(a, undo(b), np.ones(a.shape, bool)) for a, b in zip(before.maps, after.maps)]
    np.testing.assert_allclose(report.iou[0], expected, atol=1e-12)
    assert report.iou[0].mean() < 0.95  # no symmetry here: the check can tell
    top = model.run(model.preprocess(augmented)).outputs[0].argmax(axis=1)
    np.testing.assert_array_equal(report.augmented[0], top)
    np.testing.assert_array_equal(report.original, before.targets)


def test_batch_size_does_not_change_results(models, images):
    one = robustness(models["plain"], images, "rotate:-20..20,contrast:0.5..1.5", seed=4, batch=6)
    two = robustness(models["plain"], images, "rotate:-20..20,contrast:0.5..1.5", seed=4, batch=4)
    np.testing.assert_array_equal(one.iou, two.iou)
    np.testing.assert_array_equal(one.augmented, two.augmented)


# --- CLI ------------------------------------------------------------------------------------

@pytest.fixture()
def model_path(tmp_path):
    return conv_net(tmp_path / "plain.onnx", mirror=False)


def test_cli_table_json_and_out_files(model_path, images, tmp_path):
    files = []
    for i, im in enumerate(images[:3]):
        files.append(str(tmp_path / f"im{i}.png"))
        cv2.imwrite(files[-1], im[..., ::-1])
    res = CliRunner().invoke(main, ["robustness", model_path, *files, "--ops", "hflip,brightness:1", "--json",
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert [r["op"] for r in info["ops"]] == ["hflip", "brightness:1"] and info["images"] == 3
    assert info["ops"][1]["iou_mean"] == 1.0
    assert json.loads((tmp_path / "out" / "robustness.json").read_text()) == info
    lines = (tmp_path / "out" / "robustness.csv").read_text().splitlines()
    assert lines[0] == "op,image,original,augmented,agree,iou,valid" and len(lines) == 1 + 2 * 3
    res = CliRunner().invoke(main, ["robustness", model_path, "--synth", "2", "--ops", "rotate:15"])
    assert res.exit_code == 0, res.output
    assert "rotate:15" in res.output and "top-1 agree" in res.output


@pytest.mark.parametrize("args, message", [
    (["--synth", "2", "--ops", "rotat:15"], "unknown op 'rotat'"),
    (["--synth", "2", "--ops", "cutmix:1.0"], "mixes images"),
    (["--ops", "hflip"], "--synth N or IMAGES"),
    (["--synth", "2", "--ops", "hflip", "--method", "nope"], "unknown CAM method"),
])
def test_cli_errors_exit_2_with_one_line(model_path, tmp_path, args, message):
    res = CliRunner().invoke(main, ["robustness", model_path, *args, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
