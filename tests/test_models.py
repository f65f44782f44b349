"""The shipped models: accuracy on fresh Shapes-world images, size, metadata, dynamic batch.

Preprocessing is written out here from the agreed presets (INTER_AREA resize to 64×64, then
imagenet mean/std, RGB, NCHW) so that the check does not depend on the engine's own loader.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine.data import synth

MODELS = Path(__file__).resolve().parents[1] / "models"
TEST_SEED = 2026  # never used by models/train.py (training seed 1, model-card evaluation seed 7)
ALL = ["shapes-resnet", "shapes-mobilenet", "shapes-resnet-random"]


@pytest.fixture(scope="module")
def fresh():
    scene = synth.generate(500, seed=TEST_SEED)
    small = np.stack([cv2.resize(im, (64, 64), interpolation=cv2.INTER_AREA) for im in scene.images])
    x = (small.astype(np.float32) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32), scene.labels


def _logits(name, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(MODELS / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": x})[0]


@pytest.mark.parametrize("name", ["shapes-resnet", "shapes-mobilenet"])
def test_trained_models_are_accurate_on_fresh_images(name, fresh):
    x, labels = fresh
    logits = _logits(name, x)
    assert logits.shape == (500, len(synth.CLASSES))
    assert (logits.argmax(1) == labels).mean() >= 0.95


def test_random_twin_is_near_chance_with_the_same_architecture(fresh):
    x, labels = fresh
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
    assert json.loads(meta["labels"]) == list(synth.CLASSES)
    assert meta["preprocess"] == "imagenet" and meta["channel_order"] == "RGB"
    (image,), (logits,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == "image" and logits.name == "logits"
    assert isinstance(dims[0], str) and dims[1:] == [3, 64, 64]
    assert _logits(name, np.zeros((3, 3, 64, 64), np.float32)).shape == (3, len(synth.CLASSES))
