"""Photometric ops against reference formulas in plain NumPy (and OpenCV where it defines the op)."""
import colorsys

import cv2
import numpy as np
import pytest

from engine import augment as A
from engine.augment.bench import sample_images
from engine.augment.pipeline import parse_ops
from engine.errors import UsageError


@pytest.fixture(scope="module")
def images():
    return sample_images(4, size=40, seed=1)


def per_image(op, images, seed=0):
    """Output plus each image's drawn parameters (as Python scalars)."""
    params = op.sample_images(images, seed)
    out = op.apply(images, params)
    return out, params


def rounded(x):
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("factor", [(0.5, 1.5), 1.3])  # per-image tables, then one shared table
def test_brightness_multiplies(images, factor):
    out, params = per_image(A.Brightness(factor), images)
    for i, f in enumerate(params["factor"]):
        np.testing.assert_array_equal(out[i], rounded(images[i].astype(float) * f))


def test_contrast_blends_with_mean_gray(images):
    out, params = per_image(A.Contrast((0.3, 1.8)), images)
    for i, f in enumerate(params["factor"]):
        mean = cv2.cvtColor(images[i], cv2.COLOR_RGB2GRAY).astype(float).mean()
        np.testing.assert_array_equal(out[i], rounded(f * images[i].astype(float) + (1 - f) * mean))


@pytest.mark.parametrize("factor", [(0.3, 1.8), 1.3])  # per-image tables, then one shared table
def test_contrast_with_albumentations_semantics_scales_levels_truncated(images, factor):
    op = A.Contrast(factor, semantics="albumentations")
    out, params = per_image(op, images)
    for i, f in enumerate(params["factor"]):
        scaled = np.float32(f) * images[i].astype(np.float32)  # float32, as albumentations computes
        np.testing.assert_array_equal(out[i], np.clip(np.floor(scaled), 0, 255).astype(np.uint8))
        as_float = op.apply(images[i:i + 1].astype(np.float32) / 255, {"factor": np.array([f]), "on": np.ones(1, bool)})
        np.testing.assert_allclose(as_float[0], np.clip(f * images[i] / 255.0, 0, 1), atol=1e-6)
    with pytest.raises(UsageError, match="'torchvision' or 'albumentations'"):
        A.Contrast(1.2, semantics="pil")
    assert parse_ops("contrast:1.3:semantics=albumentations")[0].semantics == "albumentations"


def test_contrast_with_albumentations_semantics_equals_random_brightness_contrast():
    alb = pytest.importorskip("albumentations")
    images = sample_images(8, size=64, seed=2)
    for factor in (0.55, 1.2, 1.7):
        theirs = alb.RandomBrightnessContrast(brightness_limit=(0, 0), contrast_limit=(factor - 1, factor - 1), p=1)
        expected = np.stack([theirs(image=im)["image"] for im in images])
        np.testing.assert_array_equal(A.Contrast(factor, semantics="albumentations")(images, seed=0), expected)


@pytest.mark.parametrize("factor", [(0.0, 2.0), 1.4])
def test_saturation_blends_with_luma(images, factor):
    out, params = per_image(A.Saturation(factor), images)
    errors = []
    for i, f in enumerate(params["factor"]):
        x = images[i].astype(float)
        ref = f * x + (1 - f) * (x @ [0.299, 0.587, 0.114])[..., None]
        inside = (ref > 0) & (ref < 255)
        errors.append((out[i] - ref)[inside])
        np.testing.assert_array_equal(out[i][ref <= 0], 0)
        np.testing.assert_array_equal(out[i][ref >= 255], 255)
    err = np.concatenate(errors)  # OpenCV quantizes the matrix: within a level, bias < 0.2
    assert np.abs(err).max() < 1.0 and abs(err.mean()) < 0.2


def test_hue_turns_primaries():
    red = np.zeros((1, 4, 4, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_array_equal(A.Hue(1 / 3)(red, seed=0)[0, 0, 0], [0, 255, 0])
    np.testing.assert_array_equal(A.Hue(-1 / 3)(red, seed=0)[0, 0, 0], [0, 0, 255])


def test_hue_float_matches_colorsys():
    rng = np.random.default_rng(0)
    x = rng.random((1, 5, 5, 3)).astype(np.float32)
    out = A.Hue(0.15)(x, seed=0)
    for (r, g, b), got in zip(x.reshape(-1, 3), out.reshape(-1, 3)):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        np.testing.assert_allclose(got, colorsys.hsv_to_rgb((h + 0.15) % 1.0, s, v), atol=1e-4)


def test_gamma(images):
    out, params = per_image(A.Gamma((0.5, 2.0)), images)
    for i, g in enumerate(params["gamma"]):
        np.testing.assert_array_equal(out[i], rounded(255 * (images[i] / 255.0) ** g))


def test_solarize(images):
    out, params = per_image(A.Solarize((0.2, 0.8)), images)
    for i, t in enumerate(params["threshold"]):
        x = images[i].astype(int)
        np.testing.assert_array_equal(out[i], np.where(x >= t * 255, 255 - x, x))


def test_posterize(images):
    out, params = per_image(A.Posterize((1, 8)), images)
    for i, b in enumerate(params["bits"]):
        shift = 8 - int(b)
        np.testing.assert_array_equal(out[i], (images[i] >> shift) << shift)


def test_equalize_is_the_rescaled_cumulative_histogram(images):
    out = A.Equalize()(images, seed=0)
    for i in range(len(images)):
        for c in range(3):
            x = images[i][..., c]
            hist = np.bincount(x.ravel(), minlength=256)
            cdf = np.cumsum(hist)
            first = hist[np.flatnonzero(hist)[0]]
            lut = rounded((cdf - first) * 255.0 / (x.size - first))
            np.testing.assert_array_equal(out[i][..., c], lut[x])
    flat = np.full((1, 4, 4, 3), 77, np.uint8)
    np.testing.assert_array_equal(A.Equalize()(flat, seed=0), flat)


def test_autocontrast_stretches_each_channel(images):
    low = (images // 2 + 40).astype(np.uint8)
    out = A.AutoContrast()(low, seed=0)
    for i in range(len(low)):
        x = low[i].astype(float)
        lo, hi = x.min((0, 1)), x.max((0, 1))
        np.testing.assert_array_equal(out[i], rounded((x - lo) * 255.0 / (hi - lo)))
    flat = np.full((1, 4, 4, 3), 77, np.uint8)
    np.testing.assert_array_equal(A.AutoContrast()(flat, seed=0), flat)


def test_sharpness_blends_with_pil_smooth(images):
    out, params = per_image(A.Sharpness((0.0, 2.0)), images)
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13.0
    for i, f in enumerate(params["factor"]):
        x = images[i].astype(float)
        smooth = x.copy()
        h, w = x.shape[:2]
        smooth[1:-1, 1:-1] = sum(kernel[dy, dx] * x[dy:h - 2 + dy, dx:w - 2 + dx]
                                 for dy in range(3) for dx in range(3))
        ref = f * x + (1 - f) * np.round(smooth)
        assert np.abs(out[i].astype(int) - rounded(ref)).max() <= 1


def test_grayscale_is_luma(images):
    out = A.Grayscale()(images, seed=0)
    err = out - (images.astype(float) @ [0.299, 0.587, 0.114])[..., None]
    assert np.abs(err).max() < 1.0 and abs(err.mean()) < 0.15
    assert (out[..., 0] == out[..., 2]).all()
    some, params = per_image(A.Grayscale(p=0.5), images, seed=3)  # the drawn images only, one pass
    on = np.array(params["on"], bool)
    assert 0 < on.sum() < len(images)
    np.testing.assert_array_equal(some[on], out[on])
    np.testing.assert_array_equal(some[~on], images[~on])


def test_gaussian_blur_matches_separable_reference(images):
    out, params = per_image(A.GaussianBlur((0.6, 2.0)), images)
    for i, s in enumerate(params["sigma"]):
        half = int(3.5 * s)
        t = np.arange(-half, half + 1)
        k = np.exp(-t ** 2 / (2 * s * s))
        k /= k.sum()
        x = np.pad(images[i].astype(float), ((half, half), (half, half), (0, 0)), mode="reflect")
        rows = sum(k[j] * x[:, j:j + images.shape[2]] for j in range(len(k)))
        ref = sum(k[j] * rows[j:j + images.shape[1]] for j in range(len(k)))
        assert np.abs(out[i].astype(int) - rounded(ref)).max() <= 1


def test_gaussian_noise_statistics():
    gray = np.full((2, 64, 64, 3), 128, np.uint8)
    out = A.GaussianNoise(0.04)(gray, seed=0)
    diff = out.astype(float) - 128
    assert abs(diff.mean()) < 0.2
    assert abs(diff.std() / (0.04 * 255) - 1) < 0.03
    assert not np.array_equal(out[0], out[1])


def test_coarse_dropout_fills_exactly_the_boxes(images):
    op = A.CoarseDropout(holes=(1, 5), size=(0.1, 0.3), fill=7)
    out, params = per_image(op, images)
    for i in range(len(images)):
        inside = np.zeros(images.shape[1:3], bool)
        for (x0, y0, x1, y1), valid in zip(params["boxes"][i], params["valid"][i]):
            if valid:
                inside[y0:y1, x0:x1] = True
        assert 1 <= params["valid"][i].sum() <= 5
        assert (out[i][inside] == 7).all()
        np.testing.assert_array_equal(out[i][~inside], images[i][~inside])


def test_erasing_area_and_ratio():
    x = np.full((64, 50, 60, 3), 200, np.uint8)
    out = A.Erasing(scale=(0.05, 0.2), ratio=(0.5, 2.0))(x, seed=3)
    area = (out[..., 0] == 0).mean((1, 2))
    assert (area > 0.04).all() and (area < 0.22).all()


@pytest.mark.parametrize("op", [A.Brightness((0.5, 1.5)), A.Contrast((0.5, 1.5)),
                                A.Saturation((0.5, 1.5)), A.Gamma((0.7, 1.4)),
                                A.Solarize((0.3, 0.7)), A.AutoContrast(), A.Sharpness((0.5, 2.0)),
                                A.Grayscale(), A.GaussianBlur(1.0), A.Hue((-0.2, 0.2))],
                         ids=lambda op: type(op).__name__)
def test_float_images_follow_the_uint8_formula(images, op):
    ref = op(images, seed=5).astype(float) / 255
    out = op(images.astype(np.float32) / 255, seed=5)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert np.abs(out - ref).mean() < 0.01
