"""One option vocabulary (issue 13, item 1): image sets, preprocessing options and their
provenance, resize policies, `onnxlens tag`, CLI spellings in errors, the Shapes layout."""
import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import cli
from engine import Model
from engine.data.images import image_files, mask_files, resize, visible_part
from engine.data.preprocess import Preprocess, resolve
from engine.data.tags import tag
from engine.errors import InputShapeError, UsageError
from tests.tiny_models import classifier, save

LABELS = ["circle", "square", "star", "ring"]


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def write_png(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv2.imencode(".png", rgb[..., ::-1])[1].tobytes())
    return path


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(5)
    for name in ("b.png", "a.jpg", "sub/c.png", "notes.txt"):
        if name.endswith(".txt"):
            (tmp_path / name).write_text("not an image")
        else:
            write_png(tmp_path / name, rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    return tmp_path


# --- choosing the image set -----------------------------------------------------------------
def test_image_files_take_files_folders_and_globs_alike(folder):
    assert image_files([folder]) == [folder / "a.jpg", folder / "b.png"]
    assert image_files([folder], recursive=True) == [folder / "a.jpg", folder / "b.png", folder / "sub" / "c.png"]
    assert image_files([str(folder / "*.png")]) == [folder / "b.png"]
    assert image_files([str(folder / "**" / "*.png")]) == [folder / "b.png", folder / "sub" / "c.png"]
    # order as given, a plain file kept as named (twice if named twice)
    assert image_files([folder / "b.png", folder]) == [folder / "b.png", folder / "a.jpg", folder / "b.png"]
    with pytest.raises(UsageError, match="no image file matches"):
        image_files([str(folder / "*.gif")])
    (folder / "empty").mkdir()
    with pytest.raises(UsageError, match="recursive=True"):
        image_files([folder / "empty"])


def test_masks_pair_by_name_then_by_order(tmp_path):
    images = [tmp_path / "img" / "cat.jpg", tmp_path / "img" / "dog.jpg"]
    blank = np.zeros((4, 4, 3), np.uint8)
    write_png(tmp_path / "masks" / "dog_mask.png", blank)
    write_png(tmp_path / "masks" / "cat.png", blank)
    assert mask_files(images, [tmp_path / "masks"]) == [tmp_path / "masks" / "cat.png",
                                                        tmp_path / "masks" / "dog_mask.png"]
    write_png(tmp_path / "other" / "m1.png", blank)
    write_png(tmp_path / "other" / "m2.png", blank)
    assert mask_files(images, [tmp_path / "other"]) == [tmp_path / "other" / "m1.png", tmp_path / "other" / "m2.png"]
    with pytest.raises(UsageError, match="one mask per image"):
        mask_files(images + [tmp_path / "img" / "owl.jpg"], [tmp_path / "other"])


# --- preprocessing ---------------------------------------------------------------------------
def test_mean_and_std_replace_the_preset_statistics():
    pixels = np.array([[[[255, 0, 128]]]], np.uint8)
    out = Preprocess("imagenet", mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))(pixels)
    # (1 − 0.5)/0.5, (0 − 0.25)/0.25, (128/255 − 0)/2 worked out by hand
    np.testing.assert_allclose(out[0, 0, 0], [1.0, -1.0, 128 / 255 / 2], atol=1e-6)
    bgr = Preprocess("imagenet", "BGR", mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))(pixels)
    np.testing.assert_allclose(bgr[0, 0, 0], out[0, 0, 0, ::-1], atol=1e-6)  # statistics follow the channels
    one = Preprocess("unit", mean="0.5", std="0.5")(pixels)
    np.testing.assert_allclose(one[0, 0, 0], [1.0, -1.0, 128 / 127.5 - 1], atol=1e-6)
    for bad in ({"mean": "1,2"}, {"std": "0,1,1"}, {"mean": "a"}):
        with pytest.raises(UsageError):
            Preprocess(**bad)


def test_each_setting_says_where_it_came_from():
    chosen = resolve({"channel_order": "bgr"}, {"preprocess": "unit", "mean": "0.1,0.2,0.3"})
    assert (chosen.preset, chosen.channel_order, chosen.mean) == ("unit", "BGR", (0.1, 0.2, 0.3))
    assert chosen.sources == {"preset": "metadata", "mean": "metadata", "channel_order": "option",
                              "resize": "default guess"}
    assert resolve().guessed() == ["preset", "channel_order"]
    raw = resolve(None, {}, inferred=({"preset": "raw"}, "uint8 input"))
    assert raw.preset == "raw" and raw.sources["preset"] == "uint8 input" and "preset" not in raw.guessed()
    with pytest.raises(UsageError, match="model metadata"):
        resolve(None, {"resize": "stretch"})


def test_shorter_side_center_crop_keeps_the_centre_at_one_scale():
    image = np.random.default_rng(0).integers(0, 256, (60, 100, 3), dtype=np.uint8)
    assert visible_part(image, (30, 30)).shape == (60, 60, 3)
    np.testing.assert_array_equal(visible_part(image, (30, 30)), image[:, 20:80])
    np.testing.assert_array_equal(resize(image, (30, 30), "shorter-side+center-crop"),
                                  cv2.resize(image[:, 20:80], (30, 30), interpolation=cv2.INTER_AREA))
    assert visible_part(image, (30, 30), "squash") is image
    with pytest.raises(UsageError, match="resize policy"):
        resize(image, (30, 30), "stretch")


@pytest.fixture()
def nhwc_unit_model(tmp_path):
    """An NHWC model whose metadata says nothing: the issue's model that takes 0–1 input."""
    return save(classifier(layout="NHWC", shape=("N", 8, 8, 3), seed=4), tmp_path / "nhwc.onnx")


def reference_scores(path, images):
    """Scores of the bare ORT session on rgb/255 (the unit preset, written out)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": np.stack(images).astype(np.float32) / 255})[0]


def test_predict_takes_the_preprocessing_from_the_cli(nhwc_unit_model, tmp_path):
    rng = np.random.default_rng(9)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    paths = [write_png(tmp_path / "pics" / f"{i}.png", im) for i, im in enumerate(images)]
    result = invoke("predict", nhwc_unit_model, tmp_path / "pics", "--preprocess", "unit", "--json", "--top", "4")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["image"] for r in rows] == [str(p) for p in paths]  # a folder, sorted
    scores = reference_scores(nhwc_unit_model, images)
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs = exp / exp.sum(axis=1, keepdims=True)
    for row, p in zip(rows, probs):
        assert [t["index"] for t in row["top"]] == list(np.argsort(-p, kind="stable"))
        np.testing.assert_allclose([t["score"] for t in row["top"]], np.sort(p)[::-1], rtol=1e-4)
    # the default guess (imagenet) gives other scores: the option changed what ran
    guessed = json.loads(invoke("predict", nhwc_unit_model, str(tmp_path / "pics" / "*.png"), "--json", "--top", "4").output)
    assert not np.allclose([t["score"] for t in guessed[0]["top"]], [t["score"] for t in rows[0]["top"]], atol=1e-4)


def test_inspect_says_where_preprocessing_came_from_and_warns_on_a_guess(nhwc_unit_model):
    guessed = invoke("inspect", nhwc_unit_model)
    assert guessed.exit_code == 0, guessed.output
    assert "preset imagenet (default guess)" in guessed.output and "warning:" in guessed.output
    given = invoke("inspect", nhwc_unit_model, "--preprocess", "unit", "--channel-order", "RGB")
    assert "preset unit (option)" in given.output and "channel order RGB (option)" in given.output
    assert "warning:" not in given.output
    info = json.loads(invoke("inspect", nhwc_unit_model, "--preprocess", "unit", "--json").output)
    assert info["preprocess"]["sources"]["preset"] == "option" and info["preprocess"]["guessed"] == ["channel_order"]


# --- onnxlens tag ----------------------------------------------------------------------------
def test_tag_in_place_keeps_the_previous_file_and_model_reads_the_tags(nhwc_unit_model, tmp_path):
    before = nhwc_unit_model.read_bytes()
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    result = invoke("tag", nhwc_unit_model, "--preprocess", "unit", "--mean", "0.1,0.2,0.3", "--labels", labels)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "nhwc.onnx.bak").read_bytes() == before  # nothing the user had is lost
    model = Model(nhwc_unit_model)
    assert model.labels == LABELS and model.preprocessing.preset == "unit"
    assert model.preprocessing.mean == (0.1, 0.2, 0.3) and model.preprocessing.sources["preset"] == "metadata"
    again = invoke("tag", nhwc_unit_model, "--channel-order", "BGR")
    assert again.exit_code == 0 and (tmp_path / "nhwc.onnx.bak1").is_file()
    model = Model(nhwc_unit_model)
    assert (model.preprocessing.preset, model.preprocessing.channel_order, model.labels) == ("unit", "BGR", LABELS)
    # the graph and the weights are unchanged
    old, new = onnx.load(str(tmp_path / "nhwc.onnx.bak")), onnx.load(str(nhwc_unit_model))
    assert old.graph.SerializeToString() == new.graph.SerializeToString()


def test_tag_to_a_new_file_and_refusals(nhwc_unit_model, tmp_path):
    out = tmp_path / "tagged.onnx"
    assert invoke("tag", nhwc_unit_model, "--preprocess", "raw", "--out", out).exit_code == 0
    assert Model(out).preprocessing.preset == "raw" and Model(nhwc_unit_model).preprocessing.preset == "imagenet"
    assert not (tmp_path / "nhwc.onnx.bak").exists()
    refused = invoke("tag", nhwc_unit_model, "--preprocess", "raw", "--out", out)
    assert refused.exit_code == 2 and "exists" in refused.output
    wrong = tmp_path / "three.txt"
    wrong.write_text("a\nb\nc\n")
    assert "4 classes" in invoke("tag", nhwc_unit_model, "--labels", wrong).output
    assert invoke("tag", nhwc_unit_model).exit_code == 2


def test_tag_keeps_external_weights_where_they_are(tmp_path):
    proto = classifier(shape=("N", 3, 8, 8), seed=2)
    path = tmp_path / "ext.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    tag(path, preprocess="unit")
    assert (tmp_path / "ext.data").is_file() and path.stat().st_size < 10_000
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    np.testing.assert_array_equal(before, after)
    assert Model(path).preprocessing.preset == "unit"
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UsageError, match="same folder"):
        tag(path, out=tmp_path / "elsewhere" / "x.onnx", preprocess="raw")


# --- the CLI spells options, the API spells arguments ------------------------------------------
def test_size_errors_name_the_cli_option_or_the_api_argument(tmp_path):
    from tests.onnx_build import Builder

    b = Builder()
    features = b.op("Relu", [b.op("Conv", ["image", b.weight(4, 3, 3, 3)], pads=[1] * 4)])
    flat = b.op("Reshape", [features, b.const(np.array([0, 256], np.int64))])  # 4 × 8 × 8 only
    b.op("Gemm", [flat, b.weight(4, 256)], transB=1, name="logits")
    path = save(b.model([("image", ["N", 3, "H", "W"])], [("logits", None)], 17), tmp_path / "m.onnx")
    image = write_png(tmp_path / "big.png", np.zeros((12, 12, 3), np.uint8))
    model = Model(path)
    with pytest.raises(InputShapeError, match=r"input_size=\(H, W\)") as err:
        model.run(model.preprocess([image]))
    assert "--size" not in str(err.value)
    result = invoke("predict", path, image)
    assert result.exit_code == 2 and "--size HxW" in result.output and "input_size" not in result.output


def test_batch_is_a_hidden_alias_of_batch_size(nhwc_unit_model, tmp_path):
    paths = [write_png(tmp_path / f"{i}.png", np.full((8, 8, 3), 40 * i, np.uint8)) for i in range(3)]
    new = invoke("cam", nhwc_unit_model, *paths, "--out", tmp_path / "a", "--batch-size", "2", "--json")
    old = invoke("cam", nhwc_unit_model, *paths, "--out", tmp_path / "b", "--batch", "2", "--json")
    assert new.exit_code == 0 and old.exit_code == 0, old.output
    np.testing.assert_allclose(np.load(tmp_path / "a" / "cams.npz")["maps"], np.load(tmp_path / "b" / "cams.npz")["maps"])
    assert "--batch " not in invoke("cam", "--help").output and "--batch-size" in invoke("cam", "--help").output


@pytest.mark.parametrize("command", ["predict", "cam", "saliency", "classviz", "evaluate", "embed", "neighbors",
                                     "filters", "activations", "dissect", "patches", "robustness", "inspect",
                                     "audit", "compare"])
def test_every_model_command_speaks_the_vocabulary(command):
    text = invoke(command, "--help").output
    for option in ("--size", "--provider", "--threads", "--preprocess", "--mean", "--std", "--channel-order",
                   "--resize", "--input"):
        assert option in text, (command, option)
    if command not in ("audit", "compare"):  # there --labels is the CSV of true labels
        assert "Class names" in text, command


def test_evaluate_takes_an_image_folder_and_a_mask_folder(nhwc_unit_model, tmp_path):
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        write_png(tmp_path / "img" / f"{name}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        mask = np.zeros((8, 8, 3), np.uint8)
        mask[2:6, 2:6] = 255
        write_png(tmp_path / "masks" / f"{name}_mask.png", mask)
    result = invoke("evaluate", nhwc_unit_model, tmp_path / "img", "--masks", tmp_path / "masks", "--json",
                    "--steps", "4", "--preprocess", "unit")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["images"] == 2
    older = invoke("evaluate", nhwc_unit_model, "--images", tmp_path / "img", "--masks", tmp_path / "masks", "--json",
                   "--steps", "4", "--preprocess", "unit")
    assert older.exit_code == 0 and json.loads(older.output) == json.loads(result.output)


# --- synth: label maps apart from the images ---------------------------------------------------
def test_synth_keeps_label_maps_out_of_the_image_folder(tmp_path):
    from engine.data.broden import read_concepts

    assert invoke("synth", "--out", tmp_path / "s", "--n", "3", "--size", "32x32").exit_code == 0
    shown = image_files([tmp_path / "s" / "images" / "shapes"])
    assert [p.name for p in shown] == ["000000.png", "000001.png", "000002.png"]
    dataset = read_concepts(tmp_path / "s")
    assert len(dataset) == 3 and dataset.image(0).shape == (32, 32, 3)
    assert dataset.rows[0]["shape"] == ["shapes-labels/000000_shape.png"]
    maps = dataset.label_maps(0)
    assert set(maps) == {"shape", "color", "texture", "background"} and maps["shape"][0].shape == (32, 32)


def test_center_crop_explains_the_part_the_model_sees(tmp_path):
    from engine.explain import cam, evaluate

    path = save(classifier(shape=("N", 3, 8, 8), seed=6), tmp_path / "m.onnx")
    cropping = Model(path, preprocess={"resize": "shorter-side+center-crop"})
    wide = np.random.default_rng(3).integers(0, 256, (16, 40, 3), dtype=np.uint8)
    centre = wide[:, 12:28]
    np.testing.assert_array_equal(cropping.preprocess(wide), Model(path).preprocess(centre))
    exp = cam(cropping, [wide])
    assert exp.maps.shape == (1, 16, 16)
    np.testing.assert_allclose(exp.maps, cam(Model(path), [centre]).maps, atol=1e-6)
    mask = np.zeros((16, 40), bool)
    mask[4:12, 14:26] = True
    report = evaluate(cropping, [wide], mask[None], steps=4)
    assert report == evaluate(Model(path), [centre], mask[None, :, 12:28], steps=4)


def test_audit_images_take_a_glob_too(folder):
    from engine.audit import from_folder

    data = from_folder(str(folder / "**" / "*.png"))
    assert data.names == [(folder / "b.png").as_posix(), (folder / "sub" / "c.png").as_posix()]
    assert data.images[1].shape == (12, 10, 3)
