"""Network dissection end to end on a tiny model against a brute-force numpy implementation."""
import csv
import json

import numpy as np
import pytest

from engine.analyze.dissection import dissect, primary_categories, mask_pixels, write_dissection
from engine.api import Model
from engine.data import broden, synth
from engine.data.broden import read_concepts
from engine.errors import LayerError, UsageError
from tests import tiny_models


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    tiny_models.save(tiny_models.classifier(shape=("N", 3, 32, 32), width=6, seed=3), path)
    return Model(path, threads=1)


@pytest.fixture(scope="module")
def concepts(tmp_path_factory):
    """20 Shapes images at 40×40 in the Broden layout; some rows leave a category unlabelled."""
    root = tmp_path_factory.mktemp("broden")
    broden.write_concepts(root, synth.batches(20, seed=4, size=(40, 40)))
    with open(root / "index.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    for i, row in enumerate(rows):
        if i % 2 == 0:
            row["texture"] = ""
        if i % 3 == 0:
            row["color"] = ""
    with open(root / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return read_concepts(root)


def _bilinear(plane, size):
    """Half-pixel-centre bilinear resize with edge clamping, in plain numpy."""
    h, w = plane.shape
    out_h, out_w = size
    ys = np.clip((np.arange(out_h) + 0.5) * h / out_h - 0.5, 0, h - 1)
    xs = np.clip((np.arange(out_w) + 0.5) * w / out_w - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = plane[y0][:, x0] * (1 - fx) + plane[y0][:, x1] * fx
    bottom = plane[y1][:, x0] * (1 - fx) + plane[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _reference(model, dataset, layer, q):
    images = [dataset.image(i) for i in range(len(dataset))]
    acts = model.run(model.preprocess(images), activations=[layer]).activations[layer].astype(np.float64)
    units = acts.shape[1]
    thresholds = np.quantile(acts.transpose(1, 0, 2, 3).reshape(units, -1), q, axis=1)
    category_of = primary_categories(dataset)
    concepts = len(dataset.labels)
    inter, union = np.zeros((units, concepts)), np.zeros((units, concepts))
    for i in range(len(dataset)):
        maps = dataset.label_maps(i)
        for u in range(units):
            mask = _bilinear(acts[i, u], maps["shape"].shape[1:]) > thresholds[u]
            for c in range(1, concepts):
                planes = maps[dataset.categories[category_of[c]]]
                if len(planes) == 0:
                    continue
                label = (planes == c).any(axis=0)
                inter[u, c] += (mask & label).sum()
                union[u, c] += (mask | label).sum()
    return thresholds, np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def test_iou_equals_brute_force_with_mixed_categories(model, concepts):
    assert len(concepts.label_maps(0)["texture"]) == 0 and len(concepts.label_maps(1)["texture"]) == 1
    result = dissect(model, concepts, layer="relu2", quantile=0.99, batch_size=7, progress=False)
    thresholds, iou = _reference(model, concepts, "relu2", 0.99)
    np.testing.assert_allclose([u["threshold"] for u in result.units], thresholds, rtol=1e-5)
    np.testing.assert_allclose(result.iou, iou, atol=2e-3)  # a pixel sitting on a threshold may flip
    assert np.abs(result.iou - iou).mean() < 1e-4
    uncached = dissect(model, concepts, layer="relu2", quantile=0.99, batch_size=5, cache=False, progress=False)
    np.testing.assert_array_equal(uncached.iou, result.iou)
    best = iou.argmax(axis=1)
    for unit, c in zip(result.units, best):
        if iou[unit["unit"], c] > 0.01:
            assert unit["concept"] == concepts.labels[c]["name"]
        assert unit["detector"] == (unit["iou"] > 0.04)


def test_masks_skip_units_below_threshold_without_changing_them():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 5, 4, 4)).astype(np.float32)
    thresholds = np.array([0.5, 2.0, 0.9, 0.99, -1.0], np.float32)  # unit 1 never fires, unit 4 always
    masks = np.zeros((3, 5, 10 * 12), bool)
    image, unit, pixel = mask_pixels(maps, thresholds, (10, 12))
    masks[image, unit, pixel] = True
    masks = masks.reshape(3, 5, 10, 12)
    for i in range(3):
        for u in range(5):
            np.testing.assert_array_equal(masks[i, u], _bilinear(maps[i, u].astype(np.float64), (10, 12)) > thresholds[u])
    assert not masks[:, 1].any() and masks[:, 4].all()


def test_outputs_and_errors(model, concepts, tmp_path):
    result = dissect(model, concepts, layer="relu2", iou=0.0, progress=False)
    write_dissection(result, tmp_path, model, concepts, images_per_unit=4)
    with open(tmp_path / "units.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["unit"]) for r in rows] == list(range(6))
    assert set(rows[0]) == {"unit", "concept", "category", "iou", "threshold", "detector"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["detectors"] == sum(u["detector"] for u in result.units)
    assert sum(c["detectors"] for c in summary["categories"].values()) == summary["detectors"]
    assert len(list(tmp_path.glob("unit_*.png"))) == summary["detectors"] > 0
    with pytest.raises(LayerError):
        dissect(model, concepts, layer="nope")
    with pytest.raises(UsageError):
        dissect(model, concepts, quantile=1.5)


def test_mask_pixels_in_chunks_match_dense_masks():
    rng = np.random.default_rng(1)
    maps = rng.random((2, 150, 3, 3)).astype(np.float32)  # 300 maps: more than one resize chunk
    thresholds = rng.uniform(0.3, 0.9, 150).astype(np.float32)
    image, unit, pixel = mask_pixels(maps, thresholds, (7, 5))
    got = np.zeros((2, 150, 35), bool)
    got[image, unit, pixel] = True
    for i in range(2):
        for u in range(150):
            expected = _bilinear(maps[i, u].astype(np.float64), (7, 5)) > thresholds[u]
            np.testing.assert_array_equal(got[i, u].reshape(7, 5), expected)
