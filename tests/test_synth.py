import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.data import synth
from engine.data.synth import BACKGROUNDS, CLASSES, COLORS, CONCEPTS, TEXTURES
from engine.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scene():
    return synth.generate(400, seed=11)


def _digest(scene):
    h = hashlib.sha256()
    for a in (scene.images, scene.labels, scene.masks, *scene.concepts.values()):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_same_seed_same_images_in_any_chunking():
    whole = synth.generate(10, seed=5, size=(48, 64))
    parts = [synth.generate(4, seed=5, size=(48, 64)), synth.generate(6, seed=5, size=(48, 64), start=4)]
    for name in ("images", "labels", "masks"):
        np.testing.assert_array_equal(getattr(whole, name), np.concatenate([getattr(p, name) for p in parts]))
    for family in CONCEPTS:
        np.testing.assert_array_equal(whole.concepts[family], np.concatenate([p.concepts[family] for p in parts]))
    batched = list(synth.batches(10, seed=5, size=(48, 64), batch=3))
    assert [len(b) for b in batched] == [3, 3, 3, 1]
    np.testing.assert_array_equal(whole.images, np.concatenate([b.images for b in batched]))
    assert not np.array_equal(whole.images, synth.generate(10, seed=6, size=(48, 64)).images)


def test_same_images_in_a_fresh_process():
    code = ("from engine.data import synth; from tests.test_synth import _digest; "
            "print(_digest(synth.generate(7, seed=3, size=(40, 40), start=5)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _digest(synth.generate(7, seed=3, size=(40, 40), start=5))


def test_shapes_and_dtypes():
    s = synth.generate(3, seed=0, size=(40, 72))
    assert s.images.shape == (3, 40, 72, 3) and s.images.dtype == np.uint8
    assert s.masks.shape == (3, 40, 72) and s.masks.dtype == bool
    assert s.labels.shape == (3,) and len(s) == 3
    assert set(s.concepts) == {"shape", "color", "texture", "background"}
    assert all(m.shape == (3, 40, 72) for m in s.concepts.values())


def test_object_lies_inside_the_image(scene):
    border = np.concatenate([scene.masks[:, 0], scene.masks[:, -1], scene.masks[:, :, 0], scene.masks[:, :, -1]], 1)
    assert not border.any()
    assert scene.masks.sum((1, 2)).min() > 0.02 * 96 * 96


def test_mask_pixels_have_the_object_colour(scene):
    for k in range(len(scene)):
        mask = scene.masks[k]
        color_ids = np.unique(scene.concepts["color"][k][mask])
        assert len(color_ids) == 1
        rgb = np.array(COLORS[CONCEPTS["color"][color_ids[0] - 1]], np.uint8)
        is_color = (scene.images[k] == rgb).all(-1)
        grain = scene.concepts["background"][k] == BACKGROUNDS.index("grain") + 1
        assert not (is_color & ~mask & ~grain).any()  # nowhere outside the mask, save by chance in grain
        texture = TEXTURES[np.unique(scene.concepts["texture"][k][mask]).item() - 1]
        tones = np.unique(scene.images[k][mask], axis=0)
        if texture == "solid":
            assert is_color[mask].all()
        else:
            assert len(tones) <= 2 and is_color[mask].any()


def test_label_maps_agree_with_mask_and_pixels(scene):
    shape, color, texture, background = (scene.concepts[f] for f in CONCEPTS)
    clutter = len(CLASSES) + 1
    for k in range(len(scene)):
        mask = scene.masks[k]
        assert (shape[k][mask] == scene.labels[k] + 1).all()
        assert np.isin(shape[k][~mask], [0, clutter]).all()
        assert (background[k][mask] == 0).all()
        assert ((background[k] == 0) == (shape[k] > 0)).all()
        assert (color[k] > 0).all() and (texture[k] > 0).all()
        # Flat-coloured pixels (solid objects and clutter) carry exactly their map's colour.
        flat = (texture[k] == TEXTURES.index("solid") + 1) & (shape[k] > 0)
        rgb = np.array(list(COLORS.values()), np.uint8)[color[k][flat] - 1]
        np.testing.assert_array_equal(scene.images[k][flat], rgb)
    assert (shape == clutter).any()


def test_every_class_colour_texture_and_background_is_reachable(scene):
    assert set(scene.labels) == set(range(len(CLASSES)))
    masks, shape = scene.masks, scene.concepts["shape"]
    assert set(np.unique(scene.concepts["color"][masks])) == set(range(1, len(COLORS) + 1))
    assert set(np.unique(scene.concepts["texture"][masks])) == set(range(1, len(TEXTURES) + 1))
    on_background = shape == 0
    assert set(np.unique(scene.concepts["texture"][on_background])) == set(range(1, len(TEXTURES) + 1))
    assert set(np.unique(scene.concepts["background"][on_background])) == set(range(1, len(BACKGROUNDS) + 1))


def test_colour_and_texture_vary_within_each_class(scene):
    for c in range(len(CLASSES)):
        picks = np.flatnonzero(scene.labels == c)
        colours = {scene.concepts["color"][k][scene.masks[k]][0] for k in picks}
        textures = {scene.concepts["texture"][k][scene.masks[k]][0] for k in picks}
        areas = scene.masks[picks].sum((1, 2))
        assert len(colours) >= 6 and len(textures) == len(TEXTURES)
        assert areas.max() > 1.8 * areas.min()


def _outline(mask):
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    outer = max(contours, key=cv2.contourArea)
    corners = len(cv2.approxPolyDP(outer, 0.015 * cv2.arcLength(outer, True), True))
    solidity = cv2.contourArea(outer) / cv2.contourArea(cv2.convexHull(outer))
    return len(contours), corners, solidity


def test_class_label_matches_the_drawn_shape():
    """Checked on large images with OpenCV's contour analysis, independently of the generator."""
    s = synth.generate(120, seed=2, size=(256, 256))
    for label, mask in zip(s.labels, s.masks):
        n_contours, corners, solidity = _outline(mask)
        name = CLASSES[label]
        assert (n_contours == 2) == (name == "ring"), name
        if name in ("triangle", "square", "hexagon"):
            assert corners == {"triangle": 3, "square": 4, "hexagon": 6}[name] and solidity > 0.95
        elif name in ("star", "cross"):
            assert corners == {"star": 10, "cross": 12}[name] and solidity < 0.8
        elif name in ("circle", "ring"):
            assert corners > 6 and solidity > 0.95
        else:  # heart: one concave notch
            assert 0.85 < solidity < 0.97


@pytest.mark.parametrize("kwargs", [{"size": (8, 96)}, {"n": -1}, {"seed": -3}, {"start": -1}])
def test_bad_arguments_raise_usage_error(kwargs):
    with pytest.raises(UsageError):
        synth.generate(**{"n": 2, **kwargs})
