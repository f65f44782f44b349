import json
import os

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import cli
from engine import Model
from engine.errors import ImageError, InputShapeError, LayerError, ModelLoadError, UsageError
from tests.tiny_models import classifier, save

LABELS = ["circle", "square", "star", "ring"]


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(3)
    images = []
    for i, shape in enumerate([(8, 8, 3), (24, 16, 3)]):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(cv2.imencode(".png", rng.integers(0, 256, shape, dtype=np.uint8))[1].tobytes())
        images.append(str(path))
    static = save(classifier(shape=("N", 3, 8, 8), metadata={"labels": LABELS}), tmp_path / "static.onnx")
    dynamic = save(classifier(layout="NHWC", shape=("N", "H", "W", 3)), tmp_path / "dynamic.onnx")
    return {"static": str(static), "dynamic": str(dynamic), "images": images, "tmp": tmp_path}


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_inspect_table_lists_io_ops_and_layers(files):
    result = invoke("inspect", files["static"])
    assert result.exit_code == 0, result.output
    for text in ["tiny_models", "opset ai.onnx 17", "NCHW float32 N×3×8×8", "logits", "Conv 2",
                 "pool1", "MaxPool", "N×4×4×4", "labels: 4"]:
        assert text in result.output, text


def test_inspect_json_at_a_chosen_size(files):
    result = invoke("inspect", files["dynamic"], "--size", "12x10", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["image_input"]["layout"] == "NHWC" and info["image_input"]["size"] == [12, 10]
    layers = {layer["name"]: layer for layer in info["layers"]}
    assert {k: layers["pool1"][k] for k in ("name", "op", "shape")} == {"name": "pool1", "op": "MaxPool", "shape": ["N", 4, 6, 5]}
    assert info["inputs"][0]["shape"] == ["N", 12, 10, 3]
    one = json.loads(invoke("inspect", files["dynamic"], "--size", "12x10", "--layer", "conv2", "--json").stdout)
    assert [(layer["name"], layer["op"], layer["shape"]) for layer in one["layers"]] == [("conv2", "Conv", ["N", 4, 6, 5])]


def test_predict_json_matches_the_api(files):
    result = invoke("predict", files["static"], *files["images"], "--top", "3", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    expected = Model(files["static"], threads=1).predict(files["images"], top=3)
    assert [item["image"] for item in listed] == files["images"]
    for item, prediction in zip(listed, expected):
        assert [t["index"] for t in item["top"]] == [t.index for t in prediction.top]
        assert [t["label"] for t in item["top"]] == [LABELS[t.index] for t in prediction.top]
        np.testing.assert_allclose([t["score"] for t in item["top"]], [t.score for t in prediction.top], rtol=1e-6)


def test_predict_table_with_labels_file_and_size(files):
    labels = files["tmp"] / "names.json"
    labels.write_text(json.dumps(["north", "east", "south", "west"]))
    result = invoke("predict", files["dynamic"], *files["images"], "--labels", labels, "--size", "16x16", "--top", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == files["images"][0] and lines[3] == files["images"][1] and len(lines) == 6
    assert all(line.split()[1] in {"north", "east", "south", "west"} for line in lines[1:3] + lines[4:6])


def _outside(tmp):
    folder = tmp / "inner"
    folder.mkdir()
    path = save(classifier(), folder / "m.onnx", external="w.bin")
    os.replace(folder / "w.bin", tmp / "w.bin")
    proto = onnx.load(str(path), load_external_data=False)
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../w.bin"
    onnx.save(proto, str(path))
    return path


ERROR_CASES = {
    "missing model": (lambda f: ["inspect", f["tmp"] / "nope.onnx"], ModelLoadError, "does not exist"),
    "corrupt model": (lambda f: ["predict", f["images"][0], f["images"][0]], ModelLoadError, "not a readable ONNX"),
    "external data outside": (lambda f: ["inspect", _outside(f["tmp"])], ModelLoadError, "outside the model's folder"),
    "non-image file": (lambda f: ["predict", f["static"], f["images"][0], f["static"]], ImageError, "static.onnx"),
    "missing image": (lambda f: ["predict", f["static"], f["tmp"] / "gone.jpg"], ImageError, "gone.jpg"),
    "wrong size": (lambda f: ["predict", f["static"], f["images"][0], "--size", "32x32"], InputShapeError, "8×8"),
    "unknown layer": (lambda f: ["inspect", f["static"], "--layer", "conv9"], LayerError, "conv9"),
    "unknown provider": (lambda f: ["predict", f["static"], f["images"][0], "--provider", "NopeEP"], UsageError,
                         "NopeEP"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_user_errors_are_one_line_exit_2_and_print_nothing_else(files, case):
    make_args, error, text = ERROR_CASES[case]
    args = make_args(files)
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr
    assert "Traceback" not in result.output
    debug = invoke("--debug", *args)
    assert isinstance(debug.exception, error)
