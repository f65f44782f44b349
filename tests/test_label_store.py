"""The decoded label-map store: the maps the PNGs give, written once, reused, invalidated by a
changed dataset, never half-written; dissection reads it without decoding a PNG again."""
import os

import cv2
import numpy as np
import pytest

from engine.analyze.dissection import dissect
from engine.api import Model
from engine.data import broden, synth
from engine.data.broden import encode_label_map, read_concepts
from engine.data.label_store import LabelStore, dataset_key
from engine.errors import DatasetError
from tests import tiny_models


@pytest.fixture
def concepts(tmp_path):
    broden.write_concepts(tmp_path / "concepts", synth.batches(10, seed=6, size=(24, 32), batch=4))
    return read_concepts(tmp_path / "concepts")


def _no_decoding(monkeypatch):
    def refuse(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(broden, "_read_label_map", refuse)


def _assert_same_maps(store, dataset, rows):
    for i in rows:
        expected, got = dataset.label_maps(i), store.label_maps(i)
        assert list(got) == dataset.categories
        for category in dataset.categories:
            np.testing.assert_array_equal(got[category], expected[category])


def test_store_gives_the_decoded_maps_and_later_opens_decode_nothing(concepts, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    assert LabelStore.open(concepts, folder, 2, 9) is None
    built = LabelStore.build(concepts, folder, 2, 9)
    _assert_same_maps(built, concepts, range(2, 9))
    expected = {i: concepts.label_maps(i) for i in range(2, 9)}
    _no_decoding(monkeypatch)
    reopened = LabelStore.open(concepts, folder, 2, 9)
    for i in range(2, 9):
        for category, planes in expected[i].items():
            np.testing.assert_array_equal(reopened.label_maps(i)[category], planes)
    assert reopened.label_maps(2)["shape"].dtype == np.uint8  # label.csv's numbers fit a byte
    assert not list(folder.rglob("*.part"))


def test_real_broden_cells_several_files_and_whole_image_numbers(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.full((6, 8, 3), 128, np.uint8))
    part1, part2, other = (np.zeros((3, 4), np.int64) for _ in range(3))
    part1[0, 0], part2[2, 3], other[1, 1] = 300, 1201, 65535
    for name, labels in (("p1.png", part1), ("p2.png", part2), ("o.png", other)):
        cv2.imwrite(str(images / name), encode_label_map(labels)[..., ::-1])
    (tmp_path / "index.csv").write_text(
        "image,split,ih,iw,sh,sw,part,scene,texture\n"
        "a.jpg,train,6,8,3,4,p1.png;p2.png,47,12;o.png;15\n"
        "a.jpg,train,6,8,3,4,,,o.png\n")
    (tmp_path / "category.csv").write_text("name,first,last,count,frequency\npart,1,1300,1300,1\n"
                                           "scene,1,50,50,1\ntexture,1,20,20,1\n")
    (tmp_path / "label.csv").write_text("number,name,category,frequency,coverage,syns\n0,-,,0,0.0,\n"
                                        "12,brick,texture(1),1,0.1,brick\n")
    with pytest.raises(DatasetError, match="label number 300 in p1.png exceeds label.csv"):
        LabelStore.build(read_concepts(tmp_path), tmp_path / "cache", 0, 2)  # 13 numbers: a uint8 store
    (tmp_path / "label.csv").write_text("number,name,category,frequency,coverage,syns\n0,-,,0,0.0,\n"
                                        "65535,last,texture(1),1,0.1,last\n")
    ds = read_concepts(tmp_path)
    store = LabelStore.build(ds, tmp_path / "cache", 0, 2)
    _assert_same_maps(store, ds, range(2))
    assert store.label_maps(0)["part"].dtype == np.uint16 and store.label_maps(0)["texture"].dtype == np.int32
    assert len(store.label_maps(1)["part"]) == 0


def test_a_changed_dataset_gets_a_new_key_and_its_old_store_goes(concepts, tmp_path):
    folder = tmp_path / "cache"
    key = dataset_key(concepts)
    LabelStore.build(concepts, folder, 0, 10)
    changed = concepts.root / "images" / concepts.rows[4]["color"][0]
    labels = concepts.label_maps(4)["color"][0].copy()
    labels[0, 0] = 1 if labels[0, 0] != 1 else 2
    cv2.imwrite(str(changed), encode_label_map(labels)[..., ::-1])
    os.utime(changed, ns=(1, 1))  # a new modification time, whatever the clock's resolution
    assert dataset_key(concepts) != key and key.split("-")[0] == dataset_key(concepts).split("-")[0]
    assert LabelStore.open(concepts, folder, 0, 10) is None
    store = LabelStore.build(concepts, folder, 0, 10)
    assert store.label_maps(4)["color"][0, 0, 0] == labels[0, 0]
    assert [p.name for p in folder.iterdir()] == [f"labels-{dataset_key(concepts)}"]


def test_an_interrupted_build_leaves_no_store(concepts, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    decode = broden._read_label_map
    calls = []

    def fail_late(path):
        calls.append(path)
        if len(calls) > 12:
            raise KeyboardInterrupt
        return decode(path)

    monkeypatch.setattr(broden, "_read_label_map", fail_late)
    with pytest.raises(KeyboardInterrupt):
        LabelStore.build(concepts, folder, 0, 10)
    monkeypatch.setattr(broden, "_read_label_map", decode)
    assert LabelStore.open(concepts, folder, 0, 10) is None
    assert [p for p in folder.rglob("*") if p.is_file()] == []


def test_dissection_with_the_store_equals_decoding_and_reruns_decode_nothing(concepts, tmp_path, monkeypatch):
    path = tmp_path / "tiny.onnx"
    tiny_models.save(tiny_models.classifier(shape=("N", 3, 32, 32), width=6, seed=3), path)
    model = Model(path, threads=1)
    decoded = dissect(model, concepts, layer="relu2", quantile=0.99, batch_size=3, progress=False, label_store=False)
    first = dissect(model, concepts, layer="relu2", quantile=0.99, batch_size=3, progress=False)
    _no_decoding(monkeypatch)
    again = dissect(model, concepts, layer="relu2", quantile=0.99, batch_size=3, progress=False)
    for result in (first, again):
        np.testing.assert_array_equal(result.iou, decoded.iou)
        assert result.units == decoded.units and result.summary == decoded.summary


def test_a_store_of_the_older_layout_is_rebuilt_in_place(concepts, tmp_path):
    folder = tmp_path / "cache"
    built = LabelStore.build(concepts, folder, 0, 10)
    expected = built.label_area.copy()
    (next(folder.rglob("area.npy"))).unlink()  # what stores written before label areas look like
    assert LabelStore.open(concepts, folder, 0, 10) is None
    rebuilt = LabelStore.build(concepts, folder, 0, 10)
    assert rebuilt is not None and LabelStore.open(concepts, folder, 0, 10) is not None
    np.testing.assert_array_equal(rebuilt.label_area, expected)
    counted = np.zeros_like(expected)
    for i in range(10):
        for planes in concepts.label_maps(i).values():
            counts = np.bincount(np.asarray(planes).ravel())
            counted[:len(counts)] += counts
    np.testing.assert_array_equal(expected[1:], counted[1:])  # number 0 (unlabelled) aside
