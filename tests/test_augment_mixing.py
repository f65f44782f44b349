"""CutMix, MixUp, RandAugment and TrivialAugment."""
import math

import numpy as np
import pytest

from engine import augment as A
from engine.augment.bench import sample_images
from engine.augment.mixing import soft_labels
from engine.augment.policies import NAMES, RANDAUGMENT_MAX
from engine.errors import InputShapeError, UsageError


def flat_images(n=8, size=(30, 40)):
    """Image i is filled with the level 10·i + 5, so every pixel tells where it came from."""
    return (np.arange(n, dtype=np.uint8)[:, None, None, None] * 10 + 5) * np.ones(
        (1,) + size + (3,), np.uint8)


def test_cutmix_label_weights_equal_the_pasted_area_exactly():
    x = flat_images()
    op = A.CutMix(alpha=1.0)
    params = op.sample_images(x, 3)
    out, y = op.apply(x, np.arange(8), params)
    partners = op.partners(params)
    for i in range(8):
        own = (out[i, ..., 0] == x[i, 0, 0, 0]).mean()
        pasted = (out[i, ..., 0] == x[partners[i], 0, 0, 0]).mean()
        assert own + pasted == 1.0
        assert y[i, i] == pytest.approx(own, abs=1e-6)
        assert y[i, partners[i]] == pytest.approx(pasted, abs=1e-6)
        assert partners[i] != i
    np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-6)


def test_cutmix_moves_masks_with_the_box_and_draws_beta():
    x = flat_images(24, (20, 20))
    masks = np.arange(24, dtype=np.uint8)[:, None, None] * np.ones((1, 20, 20), np.uint8)
    out, y, mout = A.CutMix(alpha=1.0)(x, np.arange(24), seed=0, masks=masks)
    np.testing.assert_array_equal((out[..., 0] - 5) // 10, mout)
    assert (mout != masks).any()
    lam = A.CutMix(alpha=1.0).sample_images(np.zeros((4000, 4, 4, 3), np.uint8), 0)["lam"]
    assert abs(lam.mean() - 0.5) < 0.02 and abs(lam.var() - 1 / 12) < 0.01  # Beta(1, 1)


def test_mixup_blends_images_and_labels():
    x = sample_images(6, size=24, seed=4)
    op = A.MixUp(alpha=0.4)
    params = op.sample_images(x, 1)
    out, y = op.apply(x, np.array([0, 1, 2, 0, 1, 2]), params, num_classes=4)
    j = op.partners(params)
    for i, lam in enumerate(params["lam"]):
        ref = lam * x[i].astype(float) + (1 - lam) * x[j[i]]
        assert np.abs(out[i] - np.round(ref)).max() <= 1
    assert y.shape == (6, 4)
    ref_labels = params["lam"][:, None] * soft_labels([0, 1, 2, 0, 1, 2], 6, 4) + (
        1 - params["lam"][:, None]) * soft_labels(np.array([0, 1, 2, 0, 1, 2])[j], 6, 4)
    np.testing.assert_allclose(y, ref_labels, atol=1e-6)


def test_mixing_errors():
    with pytest.raises(UsageError):
        A.CutMix(alpha=0)
    with pytest.raises(UsageError):
        A.CutMix()(flat_images(4), np.arange(3), seed=0)
    with pytest.raises(UsageError):
        A.Compose([A.HorizontalFlip(), A.CutMix()])
    with pytest.raises(InputShapeError):
        A.MixUp()([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], [0, 1], seed=0)


def test_randaugment_picks_n_ops_with_the_paper_magnitudes():
    x = sample_images(200, size=16, seed=5)
    m = 7
    op = A.RandAugment(n=3, m=m)
    params = op.sample_images(x, 0)
    assert params["ops"].shape == (200, 3)
    counts = np.bincount(params["ops"].ravel(), minlength=14)
    assert len(counts) == 14 and counts.min() > 20  # uniform over the 14 ops
    seen = set()
    for steps in op.describe(params, (16, 16)):
        assert len(steps) == 3
        for name, values in steps:
            seen.add(name)
            if name == "Rotate":
                assert abs(values["angle"]) == pytest.approx(30 * m / 10)
            elif name in ("ShearX", "ShearY"):
                shear = next(iter(values.values()))
                assert abs(shear) == pytest.approx(math.degrees(math.atan(0.3 * m / 10)))
            elif name in ("TranslateX", "TranslateY"):
                assert abs(next(iter(values.values()))) == pytest.approx(150 / 331 * m / 10)
            elif name in ("Color", "Contrast", "Brightness", "Sharpness"):
                assert abs(values["factor"] - 1) == pytest.approx(0.9 * m / 10)
            elif name == "Posterize":
                assert values["bits"] == 8 - round(4 * m / 10)
            elif name == "Solarize":
                assert values["threshold"] == pytest.approx(1 - m / 10)
            else:
                assert values == {}
    assert seen == set(NAMES)
    assert RANDAUGMENT_MAX["Rotate"] == 30.0


def test_randaugment_output_is_its_described_ops_in_order():
    x = sample_images(6, size=24, seed=6)
    op = A.RandAugment(n=2, m=9)
    params = op.sample_images(x, 2)
    out = op.apply(x, params)
    single = {"AutoContrast": A.AutoContrast(), "Equalize": A.Equalize(),
              "Solarize": A.Solarize(0.5), "Posterize": A.Posterize(4),
              "Color": A.Saturation(1.0), "Contrast": A.Contrast(1.0),
              "Brightness": A.Brightness(1.0), "Sharpness": A.Sharpness(1.0)}
    for i, steps in enumerate(op.describe(params, (24, 24))):
        img = x[i:i + 1]
        for name, values in steps:
            if name == "Identity":
                continue
            if name in single:
                ref_op = single[name]
                p = ref_op.sample_images(img, 0)
                p.update({k: np.array([v]) for k, v in values.items()})
            else:
                ref_op = A.Affine(fill=128)
                p = ref_op.sample_images(img, 0)
                p.update({k: np.array([v]) for k, v in values.items()})
            img = ref_op.apply(img, p)
        np.testing.assert_array_equal(out[i], img[0])


def test_randaugment_zero_ops_is_identity_and_trivialaugment_uses_one_op():
    x = sample_images(4, size=16, seed=7)
    np.testing.assert_array_equal(A.RandAugment(n=0)(x, seed=0), x)
    params = A.TrivialAugment().sample_images(sample_images(300, size=16), 0)
    assert params["ops"].shape == (300, 1)
    levels = params["level"].ravel() * 30
    np.testing.assert_allclose(levels, np.round(levels))
    assert levels.min() == 0 and levels.max() == 30
