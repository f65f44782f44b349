"""The audit report: every section present and timed, sections that do not apply say why, every
image is a decodable PNG, untrusted names are escaped; the HTML building blocks; the CLI."""
import base64
import csv
import html
import json
import re
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import zoo
from cli import main
from engine.api import Model
from engine.audit import Options, audit, choose, from_folder, from_synth
from engine.audit.sections import SECTIONS
from engine.data.files import write_image
from engine.errors import DatasetError, UsageError
from engine.viz import report

MODELS = Path(__file__).resolve().parents[1] / "models"
EVIL = "<script>alert(1)</script>"
SMALL = Options(gallery=3, cam_methods=("cam", "gradcam", "scorecam"), saliency_methods=("vanilla", "smoothgrad"),
                smoothgrad_samples=2, integrated_steps=2, faithfulness=6, faithfulness_steps=2, classes=2,
                classviz_steps=3, embed=24, queries=2, neighbours=3, dissect=24, channels=2, patches=3, width=48,
                robustness=6, robustness_ops="hflip,brightness:0.8")


def evil_model(tmp_path):
    """shapes-resnet-random with hostile class names in its metadata."""
    proto = onnx.load(str(MODELS / "shapes-resnet-random.onnx"))
    names = [EVIL, '"><img src=x onerror=alert(2)>', "a&b", *[f"class{i}" for i in range(5)]]
    for prop in proto.metadata_props:
        if prop.key == "labels":
            prop.value = json.dumps(names)
    path = tmp_path / "evil<b>.onnx"
    onnx.save(proto, str(path))
    return path


def pngs(page):
    """Every embedded image of ``page`` decoded with OpenCV."""
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    return [cv2.imdecode(np.frombuffer(base64.b64decode(u), np.uint8), cv2.IMREAD_COLOR) for u in uris]


def sections_of(page):
    """{title: (seconds, body)} of the report's sections."""
    found = re.findall(r'<section id="[^"]*"><h2>(.*?)(?:<span class="time">([\d.]+) s</span>)?</h2>(.*?)</section>',
                       page, flags=re.S)
    return {html.unescape(title): (float(seconds) if seconds else None, body) for title, seconds, body in found}


@pytest.fixture(scope="module")
def synth_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    model = Model(evil_model(tmp), provider="CPUExecutionProvider", threads=1)
    path, timings = audit(model, from_synth(24, seed=3), tmp / "out", SMALL)
    return path.read_text(encoding="utf-8"), timings


def test_every_section_is_present_and_timed(synth_report):
    page, timings = synth_report
    found = sections_of(page)
    assert [title for title, _ in SECTIONS] + ["Timing"] == list(found)
    for title, _ in SECTIONS:
        assert found[title][0] is not None and found[title][0] >= 0
    status = {t.title: t.status for t in timings}
    assert set(status.values()) == {"ok"}, status
    timing_rows = re.findall(r"<tr><td>([^<]*)</td><td class=\"num\">", found["Timing"][1])
    assert [html.unescape(r) for r in timing_rows] == [t.title for t in timings] + ["total"]


def test_sections_hold_their_content(synth_report):
    page, _ = synth_report
    found = sections_of(page)
    assert "top-1 accuracy" in found["Predictions"][1] and "Confusion matrix" in found["Predictions"][1]
    for method in ("cam", "gradcam", "scorecam"):
        assert f"<th>{method}</th>" in found["Class activation maps"][1]
    assert "Pointing game" in found["Class activation maps"][1]
    assert "units detect a concept" in found["Dissection"][1] and "families found: " in found["Dissection"][1]
    assert "its 3 concepts cover far more" in found["Dissection"][1]  # the backgrounds: out of reach at 0.995
    assert "deletion AUC" in found["Faithfulness"][1] and "<td>centre</td>" in found["Faithfulness"][1]
    assert "receptive field" in found["Model"][1] and "GlobalAveragePool" in found["Model"][1]
    robust = found["Augmentation robustness"][1]
    assert "<td>hflip</td>" in robust and "<td>brightness:0.8</td>" in robust and "iou_mean" in robust
    images = pngs(page)
    assert len(images) >= 3 * 4 + 3 * 3 + 2 + 1 + 1 + 2
    assert all(im is not None and im.size > 0 for im in images)


def test_untrusted_names_are_escaped(synth_report):
    page, _ = synth_report
    assert "<script" not in page.lower() and "onerror=alert(2)>" not in page
    assert html.escape(EVIL) in page and "a&amp;b" in page
    assert "evil&lt;b&gt;.onnx" in page


def test_sections_that_do_not_apply_say_why(tmp_path):
    """A dense-output U-Net on unlabelled images: no predictions, no CAM targets, no dissection."""
    folder = tmp_path / "images"
    for i, img in enumerate(np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)):
        write_image(folder / f"sub/{i}.png", img)
    model = Model(zoo.load("unet_ts13").path, provider="CPUExecutionProvider", threads=1)
    path, timings = audit(model, from_folder(folder), tmp_path / "out", SMALL)
    status = {t.title: (t.status, t.reason) for t in timings}
    assert status["Predictions"][0] == "not applicable" and "classifier" in status["Predictions"][1]
    assert status["Dissection"][0] == "not applicable" and "--synth" in status["Dissection"][1]
    assert status["Class activation maps"][0] in ("not applicable", "not available")
    found = sections_of(path.read_text(encoding="utf-8"))
    assert status["Faithfulness"][0] == "not applicable"
    for title in ("Predictions", "Dissection", "Class activation maps", "Faithfulness"):
        assert 'class="note"' in found[title][1] and html.escape(status[title][1]) in found[title][1]


def test_predictions_without_labels_say_so(tmp_path):
    folder = tmp_path / "images"
    for i, img in enumerate(from_synth(5, seed=1).images):
        write_image(folder / f"{i}.png", img)
    model = Model(MODELS / "shapes-resnet-random.onnx", provider="CPUExecutionProvider", threads=1)
    only = Options(**{**vars(SMALL), "gallery": 2})
    path, _ = audit(model, from_folder(folder), tmp_path / "out", only)
    body = sections_of(path.read_text(encoding="utf-8"))["Predictions"][1]
    assert "no labels" in body and "predicted class" in body


def test_labels_file_names_or_indices(tmp_path):
    folder = tmp_path / "images"
    for name in ("a.png", "sub/b.png", "c.png", "a_color.png"):
        write_image(folder / name, np.zeros((8, 8, 3), np.uint8))
    assert from_folder(folder).names == ["a.png", "a_color.png", "c.png", "sub/b.png"]
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([["image", "label"], ["a.png", "star"], ["sub/b.png", "2"], ["c.png", "circle"]])
    data = from_folder(folder, labels, class_names=["circle", "square", "triangle", "star"])
    assert data.names == ["a.png", "sub/b.png", "c.png"]
    assert data.labels.tolist() == [3, 2, 0]
    labels.write_text("image,label\na.png,dragon\n")
    with pytest.raises(DatasetError, match="dragon"):
        from_folder(folder, labels, class_names=["circle"])
    labels.write_text("image,label\nz.png,0\n")
    with pytest.raises(DatasetError, match="z.png"):
        from_folder(folder, labels)


def test_cli_audit_on_a_synth_folder(tmp_path):
    """`onnxlens synth` output (Broden layout: label maps beside the images) with its labels.csv."""
    runner = CliRunner()
    assert runner.invoke(main, ["synth", "--out", str(tmp_path / "s"), "--n", "6", "--seed", "2"]).exit_code == 0
    model = str(MODELS / "shapes-resnet-random.onnx")
    out = tmp_path / "out"
    result = runner.invoke(main, ["audit", model, "--images", str(tmp_path / "s" / "images"), "--labels",
                                  str(tmp_path / "s" / "labels.csv"), "--out", str(out), "--gallery", "2",
                                  "--embed", "6", "--classviz-steps", "2"])
    assert result.exit_code == 0, result.output
    found = sections_of((out / "index.html").read_text())
    assert "top-1 accuracy" in found["Predictions"][1] and "on 6 images" in found["Predictions"][1]
    assert "not applicable" in result.output  # dissection: no concept masks given


def test_choose_needs_exactly_one_source(tmp_path):
    with pytest.raises(UsageError, match="--images DIR or --synth N"):
        choose()
    with pytest.raises(UsageError, match="--images DIR or --synth N"):
        choose(images=tmp_path, synth=3)
    assert choose(synth=3, seed=2).names == ["synth:2:0", "synth:2:1", "synth:2:2"]


def test_report_blocks_escape_and_embed():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    uri = report.data_uri(rgb)
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decoded[..., ::-1], rgb)
    page = report.render(EVIL, [report.section(EVIL, [report.table([[EVIL, 1.5, 3, None, True]], [EVIL] * 5),
                                                      report.image(rgb, caption=EVIL), EVIL,
                                                      report.note(EVIL)], seconds=1.25)], subtitle=EVIL)
    # title, h1, subtitle, nav, h2, 6 table cells, alt, caption, text, note
    assert "<script" not in page and page.count(html.escape(EVIL)) == 15
    assert '<span class="time">1.25 s</span>' in page
    assert '<td class="num">1.5</td><td class="num">3</td><td></td><td>yes</td>' in page


def test_cli_audit_writes_the_report(tmp_path):
    out = tmp_path / "out"
    model = str(MODELS / "shapes-resnet-random.onnx")
    result = CliRunner().invoke(main, ["audit", model, "--synth", "8", "--out", str(out), "--gallery", "2",
                                       "--embed", "8", "--dissect", "8", "--classviz-steps", "2"])
    assert result.exit_code == 0, result.output
    assert str(out / "index.html") in result.output and "Dissection" in result.output
    assert (out / "index.html").read_text().startswith("<!DOCTYPE html>")


def test_cli_audit_user_errors(tmp_path):
    model = str(MODELS / "shapes-resnet-random.onnx")
    result = CliRunner().invoke(main, ["audit", model, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--images DIR or --synth N" in result.output
    missing = str(tmp_path / "none")
    result = CliRunner().invoke(main, ["audit", model, "--images", missing, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not a folder" in result.output
    assert not (tmp_path / "o" / "index.html").exists()
