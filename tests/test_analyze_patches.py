"""Maximally activating patches: receptive fields, crops, top-k against brute force."""
import cv2
import numpy as np
import pytest

from engine.analyze.patches import crop, layer_field, mine, parse_channels, patch_sheet, patch_tiles, write_patches
from engine.analyze.sources import from_synth
from engine.api import Model
from engine.errors import UsageError
from tests import tiny_models


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """conv3×3 → pool2 → conv3×3 (stride 1) → conv3×3 stride 2, 32×32 input."""
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    tiny_models.save(tiny_models.classifier(shape=("N", 3, 32, 32), width=5, seed=1, stages=((None, 1), (6, 2))), path)
    return Model(path, threads=1)


def test_fields_match_hand_arithmetic(model):
    # conv1 k3 p1: r=3 j=1 u=-1; pool k2 s2: r=4 j=2 u=-1; conv2 k3 p1: r=8 j=2 u=-3; conv3 k3 s2 p1: r=12 j=4 u=-5
    expected = {"relu1": ((3, 3), (1, 1), (-1, -1)), "pool1": ((4, 4), (2, 2), (-1, -1)),
                "relu2": ((8, 8), (2, 2), (-3, -3)), "relu3": ((12, 12), (4, 4), (-5, -5))}
    for layer, (size, stride, offset) in expected.items():
        field = layer_field(model, layer)
        assert (field.size, field.stride, field.offset, field.whole_image) == (size, stride, offset, False)
    assert layer_field(model, "gap").whole_image


def test_top_k_equals_brute_force_and_boxes_hold_the_field(model):
    source = from_synth(40, seed=6, size=(32, 32))
    result = mine(model, source, "relu3", channels="1,4", top=5, batch_size=9, progress=False)
    images = np.concatenate([source.load(0, 40)[0]])
    acts = model.run(model.preprocess(list(images)), activations=["relu3"]).activations["relu3"]
    for channel in (1, 4):
        rows = [r for r in result.rows if r["channel"] == channel]
        peaks = acts[:, channel].reshape(40, -1).max(axis=1)
        order = sorted(range(40), key=lambda i: (-peaks[i], i))[:5]
        assert [r["index"] for r in rows] == order
        np.testing.assert_allclose([r["value"] for r in rows], peaks[order], rtol=1e-6)
        for r in rows:
            assert acts[r["index"], channel, r["y"], r["x"]] == pytest.approx(r["value"], rel=1e-6)
            assert r["box"] == [-5 + 4 * r["y"], -5 + 4 * r["x"], 7 + 4 * r["y"], 7 + 4 * r["x"]]


def test_pixels_outside_the_box_do_not_move_the_maximum(model):
    """The crop contains everything the maximum depends on: changing the outside leaves it,
    changing the inside moves it."""
    source = from_synth(6, seed=2, size=(32, 32))
    r = mine(model, source, "conv2", channels="2", top=1, progress=False).rows[0]
    x = model.preprocess(source.load(r["index"], r["index"] + 1)[0])
    y0, x0, y1, x1 = r["box"]
    inside = np.zeros(x.shape[2:], bool)
    inside[max(y0, 0):y1, max(x0, 0):x1] = True
    noise = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    value = lambda batch: model.run(batch, activations=["conv2"]).activations["conv2"][0, 2, r["y"], r["x"]]  # noqa: E731
    assert value(x) == pytest.approx(r["value"], rel=1e-6)
    assert value(np.where(inside, x, x + noise)) == pytest.approx(r["value"], rel=1e-5, abs=1e-6)
    assert value(np.where(inside, x + noise, x)) != pytest.approx(r["value"], rel=1e-3)


def test_crop_pads_at_borders():
    image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    padded = np.pad(image, ((3, 3), (3, 3), (0, 0)), constant_values=0)
    for bounds in [(-2, -3, 3, 2), (1, 1, 4, 5), (3, 4, 8, 9), (-3, -3, 8, 9)]:
        y0, x0, y1, x1 = bounds
        np.testing.assert_array_equal(crop(image, bounds), padded[y0 + 3:y1 + 3, x0 + 3:x1 + 3])


def test_channel_lists():
    assert parse_channels("all", 3) == [0, 1, 2]
    assert parse_channels("2, 0", 3) == [0, 2]
    for bad in ("3", "a", "-1", ""):
        with pytest.raises(UsageError):
            parse_channels(bad, 3)


@pytest.mark.parametrize("variant", ["vgg11bn_ts11", "vgg11bn_dynamo18"])
def test_fields_of_exported_vgg11_match_hand_arithmetic(variant):
    """VGG-11: conv3-pool2 ×2 → pool2 sees 10 px at stride 4; then conv3 ×2 + pool2 twice → pool4
    sees 70 px at stride 16 (offsets -3 and -27 from the 1-pixel paddings)."""
    from tests import zoo

    fixture = zoo.load(variant)
    model = Model(fixture.path, threads=1)
    got = {tap: layer_field(model, tap) for tap in fixture.taps}
    assert (got["tap_pool2"].size, got["tap_pool2"].stride, got["tap_pool2"].offset) == ((10, 10), (4, 4), (-3, -3))
    assert (got["tap_pool4"].size, got["tap_pool4"].stride, got["tap_pool4"].offset) == ((70, 70), (16, 16), (-27, -27))


def test_patch_tiles_are_the_clipped_scaled_crops_and_the_sheet_is_what_write_patches_writes(model, tmp_path):
    source = from_synth(12, seed=4, size=(32, 32))
    images = source.load(0, 12)[0]
    result = mine(model, source, "relu3", channels="1,4", top=3, progress=False)
    sheet = patch_sheet(result, 4, lambda i: images[i], cell=24, ncols=2, title="t")
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
    rows = [r for r in result.rows if r["channel"] == 4]
    tiles = patch_tiles(result, 4, lambda i: images[i], cell=24)
    assert [v for _, v in tiles] == [r["value"] for r in rows]
    clipped = 0
    for (tile, _), r in zip(tiles, rows):  # 12×12 receptive fields, clipped to the 32×32 image
        y0, x0, y1, x1 = r["box"]
        clipped += min(y0, x0) < 0 or max(y1, x1) > 32
        expected = images[r["index"]][max(y0, 0):min(y1, 32), max(x0, 0):min(x1, 32)]
        scale = max(1, 24 // max(expected.shape[:2]))
        np.testing.assert_array_equal(tile, expected.repeat(scale, axis=0).repeat(scale, axis=1))
        assert tile.shape[0] <= 32 * scale and tile.shape[1] <= 32 * scale
    assert clipped  # some field reaches past the image's border: its tile is smaller, not padded
    write_patches(result, lambda i: images[i], tmp_path, cell=24)
    written = cv2.cvtColor(cv2.imread(str(tmp_path / "channel_0004.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(written, patch_sheet(result, 4, lambda i: images[i], cell=24))
