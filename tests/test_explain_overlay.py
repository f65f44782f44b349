"""Heatmap colouring and overlay (engine/viz/overlay.py)."""
import numpy as np

from engine.viz.overlay import colorize, overlay, resize_maps, strip, to_unit


def test_jet_endpoints_and_blend():
    c = colorize(np.array([[0.0, 1.0]]))
    assert c.dtype == np.uint8 and c.shape == (1, 2, 3)
    assert c[0, 0, 2] > 100 and c[0, 0, 0] == 0          # 0 -> dark blue (RGB)
    assert c[0, 1, 0] > 100 and c[0, 1, 2] == 0          # 1 -> dark red
    img = np.full((4, 6, 3), 200, np.uint8)
    heat = np.linspace(0, 1, 6)[None].repeat(2, 0)       # 2x6, resized to 4x6
    np.testing.assert_array_equal(overlay(img, heat, alpha=0.0), img)
    full = overlay(img, heat, alpha=1.0)
    np.testing.assert_array_equal(full, colorize(resize_maps(heat[None], (4, 6))[0]))
    half = overlay(img, heat, alpha=0.5).astype(int)
    assert np.abs(half - (img.astype(int) + full) / 2).max() <= 1


def test_to_unit_and_strip():
    m = to_unit(np.array([[[1.0, 3.0], [2.0, 5.0]]]))
    np.testing.assert_allclose(m, [[[0, 0.5], [0.25, 1]]], atol=1e-6)
    s = strip([np.zeros((3, 4, 3), np.uint8)] * 3, gap=2)
    assert s.shape == (3, 16, 3) and (s[:, 4:6] == 255).all()
