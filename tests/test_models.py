"""The shipped models: accuracy on fresh Shapes-world images, size, metadata, dynamic batch.

Preprocessing is written out here from the agreed presets (INTER_AREA resize to 64×64, then
imagenet mean/std, RGB, NCHW) so that the check does not depend on the engine's own loader.
"""
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine.data import synth

MODELS = Path(__file__).resolve().parents[1] / "models"
TEST_SEED = 2026  # never used by models/train.py (training seed 1, model-card evaluation seed 7)
ALL = ["shapes-resnet", "shapes-mobilenet", "shapes-resnet-random", "shapes-color", "shapes-color-random"]
CLASS_NAMES = {name: list(synth.COLORS) if name.startswith("shapes-color") else list(synth.CLASSES) for name in ALL}


@pytest.fixture(scope="module")
def fresh():
    scene = synth.generate(500, seed=TEST_SEED)
    small = np.stack([cv2.resize(im, (64, 64), interpolation=cv2.INTER_AREA) for im in scene.images])
    x = (small.astype(np.float32) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    colors = np.array([scene.concepts["color"][i][scene.masks[i]][0] - 1 for i in range(len(scene))])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32), scene.labels, colors


def _logits(name, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(MODELS / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": x})[0]


@pytest.mark.parametrize("name", ["shapes-resnet", "shapes-mobilenet"])
def test_trained_models_are_accurate_on_fresh_images(name, fresh):
    x, labels, _ = fresh
    logits = _logits(name, x)
    assert logits.shape == (500, len(synth.CLASSES))
    assert (logits.argmax(1) == labels).mean() >= 0.95


@pytest.mark.parametrize("name", ["shapes-resnet", "shapes-mobilenet"])
def test_engine_predict_matches_the_hand_written_pipeline(name, fresh):
    from engine import Model

    x, labels, _ = fresh
    scene = synth.generate(500, seed=TEST_SEED)
    model = Model(MODELS / f"{name}.onnx", provider="CPUExecutionProvider", threads=1)
    top1 = np.array([p.top[0].index for p in model.predict(scene.images, top=1)])
    np.testing.assert_array_equal(top1, _logits(name, x).argmax(1))
    assert (top1 == labels).mean() >= 0.95


def test_colour_model_names_the_object_colour_and_its_twin_does_not(fresh):
    x, _, colors = fresh
    assert (_logits("shapes-color", x).argmax(1) == colors).mean() >= 0.95
    assert (_logits("shapes-color-random", x).argmax(1) == colors).mean() < 0.3  # chance is 1/11
    assert _layers("shapes-color") == _layers("shapes-color-random")


def test_dissection_sees_colour_where_training_kept_it():
    """Last block at quantile 0.98 (0.995 leaves colour, 7–12 % of the pixels each, barely in reach):
    the colour model has colour detectors, the shape model (trained to ignore colour) none, and the
    random twin's linear colour responses are nearly all 'colour detectors' but no shape ones."""
    from engine import Model
    from engine.analyze.dissection import dissect
    from engine.data import broden
    from engine.data.broden import read_concepts

    with tempfile.TemporaryDirectory() as folder:
        broden.write_concepts(folder, synth.batches(120, seed=TEST_SEED))
        dataset = read_concepts(folder)
        found = {name: dissect(Model(MODELS / f"{name}.onnx", threads=1), dataset, layer="/layer3/relu_1/Relu_output_0",
                               quantile=0.98, progress=False).summary["categories"]
                 for name in ("shapes-color", "shapes-resnet", "shapes-color-random")}
    color, shape = ({name: c[family]["detectors"] for name, c in found.items()} for family in ("color", "shape"))
    assert color["shapes-color"] >= 10 and color["shapes-resnet"] <= 2 and color["shapes-color-random"] >= 40
    assert shape["shapes-color"] >= 20 and shape["shapes-resnet"] >= 50 and shape["shapes-color-random"] <= 5


def test_random_twin_is_near_chance_with_the_same_architecture(fresh):
    x, labels, _ = fresh
    accuracy = (_logits("shapes-resnet-random", x).argmax(1) == labels).mean()
    assert accuracy < 0.3  # chance is 1/8
    trained, random = (_layers(f"shapes-resnet{s}") for s in ("", "-random"))
    assert trained == random


def _layers(name):
    """(op type, input shapes) of each node; the exporter shares equal initializers via Identity."""
    graph = onnx.load(str(MODELS / f"{name}.onnx")).graph
    source = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    dims = {t.name: list(t.dims) for t in graph.initializer}
    return [(n.op_type, [dims.get(source.get(i, i)) for i in n.input]) for n in graph.node if n.op_type != "Identity"]


@pytest.mark.parametrize("name", ALL)
def test_files_are_small_with_metadata_and_dynamic_batch(name):
    path = MODELS / f"{name}.onnx"
    assert path.stat().st_size < 5_000_000
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["labels"]) == CLASS_NAMES[name]
    assert meta["preprocess"] == "imagenet" and meta["channel_order"] == "RGB"
    (image,), (logits,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == "image" and logits.name == "logits"
    assert isinstance(dims[0], str) and dims[1:] == [3, 64, 64]
    assert _logits(name, np.zeros((3, 3, 64, 64), np.float32)).shape == (3, len(CLASS_NAMES[name]))
