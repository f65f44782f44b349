"""compare: agreement of outputs and Grad-CAM maps between two variants of one network.

References: numpy's corrcoef for Pearson, set arithmetic for the top-20 % IoU, a bare ONNX Runtime
session for the output difference, the explain package's Grad-CAM maps for the map agreement.
"""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import zoo
from cli import main
from engine.api import Model
from engine.analyze.regions import region_iou, top_region
from engine.audit.compare import compare, pearson
from engine.data.synth import generate
from engine.explain import cam

MODELS = Path(__file__).resolve().parents[1] / "models"


def load(path):
    return Model(path, provider="CPUExecutionProvider", threads=1)


def shapes_model(name):
    path = MODELS / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path.name} not trained yet (models/train.py)")
    return path


def quantize(src, dst, n=64):
    """A static int8 QDQ copy of ``src``, calibrated on ``n`` generated images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = load(src)

    class Reader(CalibrationDataReader):
        def __init__(self):
            batches = (generate(16, seed=21, start=s).images for s in range(0, n, 16))
            self.feeds = iter({model.input.name: model.preprocess(list(b))} for b in batches)

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return dst


def zero_channel(src, dst, images):
    """Copy of ``src`` with the output channel of its last Conv that is most active on ``images``
    zeroed (weights and bias)."""
    proto = onnx.load(str(src))
    conv = [n for n in proto.graph.node if n.op_type == "Conv"][-1]
    acts = load(src).run(load(src).preprocess(images), activations=[conv.output[0]]).activations[conv.output[0]]
    channel = int(np.abs(acts).mean(axis=(0, 2, 3)).argmax())
    for init in proto.graph.initializer:
        if init.name in conv.input[1:]:
            w = numpy_helper.to_array(init).copy()
            w[channel] = 0
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(proto, str(dst))
    return dst


@pytest.fixture(scope="module")
def scene():
    return generate(24, seed=5)


def test_pearson_matches_corrcoef():
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 7, 9)), rng.random((5, 7, 9))
    b[1] = 3 * a[1] + 2
    b[2] = -a[2]
    expected = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)]
    np.testing.assert_allclose(pearson(a, b), expected, atol=1e-12)
    assert pearson(a, b)[1] == pytest.approx(1) and pearson(a, b)[2] == pytest.approx(-1)
    flat = np.zeros((2, 4, 4))
    np.testing.assert_array_equal(pearson(flat, np.stack([flat[0], a[0, :4, :4]])), [1.0, 0.0])


def test_top_iou_matches_sets():
    rng = np.random.default_rng(1)
    a, b = rng.random((6, 10, 10)), rng.random((6, 10, 10))
    b[0] = a[0]
    for i in range(6):
        ta = set(np.argsort(-a[i].ravel())[:20])
        tb = set(np.argsort(-b[i].ravel())[:20])
        assert region_iou(a, b)[i] == pytest.approx(len(ta & tb) / len(ta | tb))
    assert region_iou(a, b)[0] == 1
    assert top_region(a).sum(axis=(1, 2)).tolist() == [20] * 6


def test_top_regions_of_a_stack_count_ties_as_the_robustness_check_does():
    # one tie rule for the comparison and the robustness check: ties join the region, per map
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 4, (5, 6, 7)).astype(float), rng.integers(0, 4, (5, 6, 7)).astype(float)
    valid = rng.random((5, 6, 7)) > 0.3
    for i in range(5):
        inside = np.sort(a[i][valid[i]])[::-1]
        reference = valid[i] & (a[i] >= inside[int(np.ceil(0.2 * len(inside))) - 1])
        np.testing.assert_array_equal(top_region(a, valid)[i], reference)
        assert region_iou(a, b, valid)[i] == pytest.approx(region_iou(a[i], b[i], valid[i]))
    flat, ramp = np.zeros((1, 4, 5)), np.arange(20.0).reshape(1, 4, 5)
    assert region_iou(flat, flat)[0] == 1.0
    assert region_iou(flat, ramp)[0] == pytest.approx(4 / 20)  # the flat map's region is the whole frame


def test_identical_models_agree_perfectly(scene):
    model = load(MODELS / "shapes-resnet-random.onnx")
    result = compare(model, model, list(scene.images))
    s = result.summary()
    assert s["top1_agreement"] == 1 and s["max_abs_difference"] == 0
    assert s["cam_agreement"] == pytest.approx(1, abs=1e-9)
    assert s["top20_iou"]["min"] == 1


def test_zeroed_channel_agrees_less(scene, tmp_path):
    src = MODELS / "shapes-resnet-random.onnx"
    images = list(scene.images)
    damaged = load(zero_channel(src, tmp_path / "zeroed.onnx", images[:8]))
    result = compare(load(src), damaged, images)
    s = result.summary()
    assert s["max_abs_difference"] > 1e-3
    assert s["cam_agreement"] < 0.999
    assert s["top20_iou"]["mean"] < 1
    exp_b = cam(damaged, images, method="gradcam", targets=list(result.top1_a))
    expected = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(result.maps_a, exp_b.maps)]
    np.testing.assert_allclose(result.pearson, expected, atol=1e-6)


def test_int8_qdq_agrees_closely_but_not_exactly(scene, tmp_path):
    src = shapes_model("shapes-resnet")
    int8 = quantize(src, tmp_path / "shapes-resnet-int8.onnx")
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    a, b = load(src), load(int8)
    images = list(scene.images)
    result = compare(a, b, images)
    s = result.summary()
    x = a.preprocess(images)
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {a.input.name: x})[0]
            for p in (src, int8)]
    assert s["max_abs_difference"] == pytest.approx(np.abs(outs[0] - outs[1]).max(), rel=1e-5)
    assert s["top1_agreement"] == pytest.approx(np.mean(outs[0].argmax(1) == outs[1].argmax(1)))
    assert s["top1_agreement"] >= 0.9
    assert 0.5 < s["cam_agreement"] < 1
    assert s["max_abs_difference"] > 0


def test_two_exports_of_one_torch_model_agree():
    a, b = (load(zoo.load(name).path) for name in ("resnet18_ts13", "resnet18_dynamo18"))
    images = list(np.random.default_rng(2).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8))
    s = compare(a, b, images).summary()
    assert s["top1_agreement"] == 1
    assert s["max_abs_difference"] < 1e-4
    assert s["cam_agreement"] > 0.999
    assert s["top20_iou"]["mean"] > 0.95


def test_cli_compare_json_and_report(tmp_path):
    src = str(MODELS / "shapes-resnet-random.onnx")
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["compare", src, src, "--synth", "6", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["images"] == 6 and summary["top1_agreement"] == 1
    assert json.loads((out / "compare.json").read_text())["cam_agreement"] == pytest.approx(1)
    page = (out / "index.html").read_text()
    assert "top1_agreement" in page and page.count("data:image/png;base64,") >= 3


def test_cli_compare_needs_images(tmp_path):
    src = str(MODELS / "shapes-resnet-random.onnx")
    result = CliRunner().invoke(main, ["compare", src, src])
    assert result.exit_code == 2 and "--images" in result.output
