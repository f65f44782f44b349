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
from engine.audit.sections import SECTIONS, shapes_mismatch
from engine.data.synth import CLASSES as SHAPES_CLASSES
from engine.data.files import write_image
from engine.errors import DatasetError, UsageError
from engine.viz import report

MODELS = Path(__file__).resolve().parents[1] / "models"
EVIL = "<script>alert(1)</script>"
SMALL = Options(gallery=3, cam_methods=("cam", "gradcam", "scorecam"), saliency_methods=("vanilla", "smoothgrad"),
                smoothgrad_samples=2, integrated_steps=2, faithfulness=6, faithfulness_steps=2, classes=2,
                classviz_steps=3, embed=24, queries=2, neighbours=3, dissect=24, channels=2, patches=3, width=48,
                robustness=6, robustness_ops="hflip,brightness:0.8")


HOSTILE = [EVIL, '"><img src=x onerror=alert(2)>', "a&b", "$x^{2$", *[f"class{i}" for i in range(4)]]


def evil_model(tmp_path, names=None):
    """shapes-resnet-random from a hostile producer; with hostile class ``names`` in its metadata
    when given (then it is no longer a Shapes model: its classes are not the Shapes classes)."""
    proto = onnx.load(str(MODELS / "shapes-resnet-random.onnx"))
    proto.producer_name = EVIL
    for prop in proto.metadata_props:
        if prop.key == "labels" and names is not None:
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
    assert "colour bar: class activation, scaled to [0, 1] per image" in found["Class activation maps"][1]
    assert "t-SNE" in found["Embeddings and neighbours"][1] and "insertion AUC" in found["Faithfulness"][1]
    for method in ("cam", "gradcam", "scorecam"):
        assert f"<th>{method}</th>" in found["Class activation maps"][1]
    assert "Pointing game" in found["Class activation maps"][1]
    assert "units detect a concept" in found["Dissection"][1] and "families found: " in found["Dissection"][1]
    assert "its 3 concepts cover far more" in found["Dissection"][1]  # the backgrounds: out of reach at 0.995
    assert "deletion AUC" in found["Faithfulness"][1] and "<td>centre</td>" in found["Faithfulness"][1]
    assert "receptive field" in found["Model"][1] and "GlobalAveragePool" in found["Model"][1]
    robust = found["Augmentation robustness"][1]
    assert "<td>hflip</td>" in robust and "<td>brightness:0.8</td>" in robust and "<th>Grad-CAM IoU</th>" in robust
    assert "_" not in "".join(re.findall(r"<th>([^<]*)</th>", page))  # snake_case headers became words
    images = pngs(page)
    assert len(images) >= 3 * 4 + 3 * 3 + 2 + 1 + 1 + 2
    assert all(im is not None and im.size > 0 for im in images)


def test_untrusted_names_are_escaped(synth_report):
    page, _ = synth_report
    assert "<script" not in page.lower()
    assert html.escape(EVIL) in page  # the producer
    assert "evil&lt;b&gt;.onnx" in page


def test_a_model_of_other_classes_on_generated_images_gets_no_shapes_accuracy(tmp_path):
    """Hostile class names: not the Shapes classes, so no accuracy or confusion matrix against
    the generated images' shapes, the section says why; the names render as text (a `$` too)."""
    model = Model(evil_model(tmp_path, HOSTILE), provider="CPUExecutionProvider", threads=1)
    path, timings = audit(model, from_synth(12, seed=3), tmp_path / "out", SMALL)
    page = path.read_text(encoding="utf-8")
    found = sections_of(page)
    assert {t.status for t in timings} == {"ok"}
    predictions = found["Predictions"][1]
    assert "accuracy" in predictions and "top-1 accuracy" not in predictions and "Confusion" not in predictions
    assert "not a Shapes model" in predictions and "are not the Shapes classes" in predictions
    assert "top-1 class explained" in found["Faithfulness"][1]
    assert "coloured by the shape in the image" in found["Embeddings and neighbours"][1]
    assert "<script" not in page.lower() and "onerror=alert(2)>" not in page
    assert "a&amp;b" in page and "$x^{2$" in page


def test_shapes_mismatch_reads_names_then_outputs():
    assert shapes_mismatch(list(SHAPES_CLASSES), 8) is None
    assert shapes_mismatch(None, 8) is None
    assert "10 unnamed classes" in shapes_mismatch(None, 10)
    assert "are not the Shapes classes" in shapes_mismatch(list(SHAPES_CLASSES[::-1]), 8)  # same names, other order


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


def test_user_images_with_masks_get_the_pointing_game_and_no_labels_say_so(tmp_path, capsys):
    """A folder of images with --masks (the generated images' object masks): the pointing game
    runs as on the generated set; without labels, no accuracy and the top-1 class is explained."""
    scene = from_synth(5, seed=1)
    for i, (img, mask) in enumerate(zip(scene.images, scene.masks)):
        write_image(tmp_path / "images" / f"sub/{i}.png", img)
        write_image(tmp_path / "masks" / f"sub/{i}.bmp" if i == 0 else tmp_path / "masks" / f"sub/{i}.png",
                    np.repeat(mask[..., None] * np.uint8(255), 3, axis=2))
    data = from_folder(tmp_path / "images", masks=tmp_path / "masks")
    np.testing.assert_array_equal(data.masks, scene.masks)
    model = Model(MODELS / "shapes-resnet-random.onnx", provider="CPUExecutionProvider", threads=1)
    only = Options(**{**vars(SMALL), "gallery": 2})
    path, timings = audit(model, data, tmp_path / "out", only, progress=True)
    started = [line for line in capsys.readouterr().err.splitlines() if line.startswith("audit [")]
    assert started == [f"audit [{k + 1}/{len(SECTIONS)}] {title} …" for k, (title, _) in enumerate(SECTIONS)]
    found = sections_of(path.read_text(encoding="utf-8"))
    assert "no labels" in found["Predictions"][1] and "predicted class" in found["Predictions"][1]
    assert "Pointing game" in found["Class activation maps"][1]
    faithful = found["Faithfulness"][1]
    assert "top-1 class explained" in faithful and "no pointing game" not in faithful
    hits = re.findall(r"<tr><td>gradcam</td><td class=\"num\">([\d.]+)</td>", faithful)
    assert len(hits) == 1 and 0 <= float(hits[0]) <= 1
    (tmp_path / "masks" / "sub" / "3.png").unlink()
    with pytest.raises(DatasetError, match="no mask for 'sub/3.png'"):
        from_folder(tmp_path / "images", masks=tmp_path / "masks")


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
    faithful = found["Faithfulness"][1]  # deletion/insertion without masks, no pointing game
    assert "no pointing game" in faithful and "true class explained" in faithful and "deletion AUC" in faithful


def test_labels_file_names_the_classes_of_an_unnamed_model(tmp_path):
    folder = tmp_path / "images"
    for name in ("a.png", "b.png"):
        write_image(folder / name, np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "labels.csv").write_text("image,label,name\na.png,3,star\nb.png,0,circle\n")
    data = from_folder(folder, tmp_path / "labels.csv")
    assert data.labels.tolist() == [3, 0] and data.class_names == {3: "star", 0: "circle"}
    model = Model(zoo.load("unet_ts13").path, provider="CPUExecutionProvider", threads=1)
    from engine.audit.sections import Context
    ctx = Context(model, data, SMALL)
    assert (ctx.class_name(3), ctx.class_name(1)) == ("star", "class 1")


def test_cli_audit_masks(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["synth", "--out", str(tmp_path / "s"), "--n", "4", "--seed", "2"]).exit_code == 0
    with open(tmp_path / "s" / "labels.csv", newline="") as f:
        names = [row["image"] for row in csv.DictReader(f)]
    for name, mask in zip(names, from_synth(4, seed=2).masks):
        write_image(tmp_path / "m" / name, np.repeat(mask[..., None] * np.uint8(255), 3, axis=2))
    out = tmp_path / "out"
    result = runner.invoke(main, ["audit", str(MODELS / "shapes-resnet-random.onnx"), "--images",
                                  str(tmp_path / "s" / "images"), "--labels", str(tmp_path / "s" / "labels.csv"),
                                  "--masks", str(tmp_path / "m"), "--out", str(out), "--gallery", "2", "--embed", "4",
                                  "--classviz-steps", "2"])
    assert result.exit_code == 0, result.output
    faithful = sections_of((out / "index.html").read_text())["Faithfulness"][1]
    assert "no pointing game" not in faithful and "pointing game" in faithful
    result = runner.invoke(main, ["audit", str(MODELS / "shapes-resnet-random.onnx"), "--synth", "4", "--masks",
                                  str(tmp_path / "m"), "--out", str(out)])
    assert result.exit_code == 2 and "--masks goes with --images" in result.output


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
    assert '<td class="num">1.5000</td><td class="num">3</td><td></td><td>yes</td>' in page


def test_table_formats_each_column_one_way_and_headers_in_words():
    page = report.table([["a", 0.008065, 0.5, 3, "x"], ["b", 5.339e-05, 12.25, 40, float("nan")]],
                        ["name", "p_value", "score", "images", "note"])
    assert re.findall(r'<td class="num">([^<]*)</td>', page) == ["8.065e-03", "0.5000", "3",
                                                                  "5.339e-05", "12.2500", "40", ""]
    assert "<th>p value</th>" in page and "<th>name</th>" in page


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


def test_a_method_whose_maps_are_not_finite_is_listed_as_failed():
    from types import SimpleNamespace

    from engine.audit.sections import Context, SectionFailed, _method_table

    ctx = Context(None, from_synth(2), Options(gallery=2))
    nan_maps = lambda images, method: SimpleNamespace(maps=np.full((len(images), 4, 4), np.nan))  # noqa: E731
    with pytest.raises(SectionFailed, match="no method ran on this model: gradcam: its maps hold NaN"):
        _method_table(ctx, nan_maps, ["gradcam"], lambda image, heat: image, "class activation")
    some = lambda images, method: SimpleNamespace(  # noqa: E731
        maps=np.full((len(images), 4, 4), np.nan if method == "a" else 1.0))
    blocks = _method_table(ctx, some, ["a", "b"], lambda image, heat: image, "class activation")
    assert any("a: its maps hold NaN" in str(block) for block in blocks)
