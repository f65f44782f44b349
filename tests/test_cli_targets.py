"""The CLI's --target vocabulary on each output kind: cam and saliency, summary fields, the
overlay's box, empty-map warnings, the Softmax note and --logits, one-line errors."""
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from engine.api import Model
from engine.explain.targets import resolve
from tests import target_models as tm


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-targets")
    rng = np.random.default_rng(5)
    square = folder / "square.png"          # twice the detectors' 16×16 input: boxes are drawn ×2
    cv2.imwrite(str(square), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    line = folder / "line.png"
    cv2.imwrite(str(line), rng.integers(0, 256, (8, 32, 3), dtype=np.uint8))
    models = {name: str(make(folder / f"{name}.onnx", **kw)) for name, make, kw in [
        ("yolov8", tm.yolov8, {}), ("yolov5", tm.yolov5, {}), ("pair", tm.pair, {}), ("ctc", tm.ctc, {}),
        ("ctc_tnc", tm.ctc, {"time_major": True}), ("dense", tm.dense, {}),
        ("softmax", tm.conv_head, {"layout": "N1C", "softmax": True}), ("picodet", tm.picodet, {})]}
    return {"square": str(square), "line": str(line), "out": folder, **models}


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.mark.parametrize("command,method", [("cam", "gradcam"), ("cam", "gradcam++"), ("saliency", "vanilla"),
                                            ("saliency", "smoothgrad")])
def test_box_target_summary_and_overlay(files, command, method):
    out = files["out"] / f"{command}-{method}"
    run = invoke(command, files["yolov8"], files["square"], "--target", "box:1", "--method", method, "--out", out)
    assert run.exit_code == 0, run.output
    (item,) = json.loads((out / "summary.json").read_text())
    t = item["target"]
    assert item["output"]["kind"] == "yolov8" and item["predicted"] is None and not item["empty"]
    assert t["rank"] == 1 and set(t) >= {"box", "class", "score", "anchor"}
    assert f"explained box 1 #{t['class']} score" in run.output
    # the reference: the second most confident box of the model's own output
    model = Model(files["yolov8"])
    raw = model.run(model.preprocess([files["square"]])).outputs[0]
    rows = resolve("box:1", 1, raw.shape[1:], outputs=raw, kind="yolov8")
    assert t["box"] == rows.details[0]["box"] and t["class"] == rows.details[0]["class"]
    # the overlay draws the box at image scale (×2): white 1-px edges inside a black border
    png = cv2.imread(item["overlay"])[..., ::-1]
    x1, y1, x2, y2 = (int(round(2 * v)) for v in t["box"])
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, 31), min(y2, 31)
    edge = png[y2, x1:x2 + 1] if y2 < 31 else png[y1:y2 + 1, x1]
    assert (edge == 255).all()


@pytest.mark.parametrize("name,target,kind", [("yolov5", "box:0", "yolov5"), ("pair", "box:2,2,10,10", "boxes"),
                                              ("yolov8", "class:1", "yolov8")])
def test_other_detection_layouts(files, name, target, kind):
    out = files["out"] / f"det-{name}"
    run = invoke("cam", files[name], files["square"], "--target", target, "--out", out, "--json")
    assert run.exit_code == 0, run.output
    (item,) = json.loads(run.stdout)
    assert item["output"]["kind"] == kind and "box" in item["target"]
    if target.startswith("class:"):
        assert item["target"]["class"] == 1


def test_anchor_scores_without_boxes(files, tmp_path):
    run = invoke("saliency", files["picodet"], files["square"], "--target", "box:0", "--method", "vanilla",
                 "--output", "cls_s4", "--out", tmp_path / "a")
    assert run.exit_code == 0, run.output
    (item,) = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert item["output"] == {"name": "cls_s4", "kind": "scores", "probabilities": False, "logits": None}
    assert item["target"]["rank"] == 0 and "box" not in item["target"]
    assert "explained anchor" in run.output


@pytest.mark.parametrize("name", ["ctc", "ctc_tnc"])
@pytest.mark.parametrize("command", ["cam", "saliency"])
def test_char_and_text_targets(files, name, command):
    out = files["out"] / f"{name}-{command}"
    run = invoke(command, files[name], files["line"], "--target", "char:0", "--out", out, "--method",
                 "gradcam" if command == "cam" else "integrated")
    assert run.exit_code == 0, run.output
    (item,) = json.loads((out / "summary.json").read_text())
    assert item["output"]["kind"] == "sequence" and item["target"]["char"] == 0
    assert f"read '{item['target']['text']}', explained character 0" in run.output
    whole = invoke(command, files[name], files["line"], "--target", "text", "--out", out / "text")
    assert whole.exit_code == 0 and "explained the whole string" in whole.output
    other = invoke(command, files[name], files["line"], "--target", "text", "--blank", "5", "--out", out / "b5",
                   "--json")
    assert other.exit_code == 0, other.output


def test_region_and_mask_targets_on_a_dense_output(files, tmp_path):
    run = invoke("cam", files["dense"], files["square"], "--target", "class:2@region:0,0,8,8", "--out", tmp_path / "r")
    assert run.exit_code == 0, run.output
    (item,) = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert item["target"]["class"] == 2 and item["target"]["region"] == [0, 0, 8, 8] and item["target"]["pixels"] == 64
    assert "explained class #2 over region 0,0,8,8" in run.output
    mask = tmp_path / "mask.png"
    cv2.imwrite(str(mask), np.pad(np.full((4, 4), 255, np.uint8), ((0, 12), (0, 12))))
    run = invoke("saliency", files["dense"], files["square"], "--target", f"mask:{mask}", "--method", "vanilla",
                 "--out", tmp_path / "m", "--json")
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)[0]["target"]["pixels"] == 16


def test_softmax_note_and_logits(files, tmp_path):
    run = invoke("inspect", files["softmax"])
    assert run.exit_code == 0 and "is a Softmax: gradients are of probabilities; --logits explains" in run.output
    info = json.loads(invoke("inspect", files["softmax"], "--json").stdout)
    assert info["outputs"][0]["softmax_of"]
    probs = invoke("cam", files["softmax"], files["square"], "--out", tmp_path / "p")
    assert probs.exit_code == 0 and "(probabilities: --logits explains the logits)" in probs.output
    logits = invoke("cam", files["softmax"], files["square"], "--logits", "--out", tmp_path / "l", "--json")
    assert logits.exit_code == 0, logits.output
    (item,) = json.loads(logits.stdout)
    assert item["output"]["name"] == info["outputs"][0]["softmax_of"] and not item["output"]["probabilities"]


def test_a_map_that_is_zero_everywhere_is_reported(files, tmp_path):
    model = Model(files["yolov8"])
    heads = [layer.name for layer in model.layers if layer.op == "Sigmoid"]
    found = []
    for layer in heads:
        run = invoke("cam", files["yolov8"], files["square"], "--target", "box:0", "--layer", layer,
                     "--out", tmp_path / layer)
        assert run.exit_code == 0, run.output
        found.append(json.loads((tmp_path / layer / "summary.json").read_text())[0]["empty"])
        assert ("warning:" in run.stderr) == found[-1]
    assert sorted(found) == [False, True]   # the box's own stride head, and the other one


@pytest.mark.parametrize("model,target,text", [
    ("yolov8", "box:999", "has 80 boxes"), ("yolov8", "char:0", "does not apply to a yolov8"),
    ("yolov8", "region:0,0,4,4", "does not apply to a yolov8"), ("ctc", "char:99", "characters"),
    ("softmax", "box:0", "does not apply to a classifier"), ("dense", "bogus", "targets are"),
    ("dense", "channel:7", "channel 7 out of range"), ("yolov8", "box:1,2", "x1,y1,x2,y2"),
])
def test_bad_targets_are_one_line_exit_2(files, tmp_path, model, target, text):
    image = files["line"] if model == "ctc" else files["square"]
    run = invoke("cam", files[model], image, "--target", target, "--out", tmp_path / "o")
    assert run.exit_code == 2 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], run.stderr
    assert not (tmp_path / "o").exists()
    bad_kind = invoke("cam", files["yolov8"], files["square"], "--output-kind", "dense", "--out", tmp_path / "k")
    assert bad_kind.exit_code == 2 and "cannot be read as dense" in bad_kind.stderr
