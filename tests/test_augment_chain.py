"""Compose's per-image chain (each image through every op while it sits in cache) gives the
pixels of the op-by-op batch path, for every op with a per-image kernel, any dtype, channel
count and thread count."""
import numpy as np
import pytest

from engine import augment as A
from engine.augment.bench import sample_images

STEPS = [A.RandomResizedCrop(24), A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.Rotate90(k=(0, 2)),
         A.Rotate((-30, 30)), A.Shear(), A.Translate(), A.Affine(angle=(-10, 10), scale=(0.9, 1.1)),
         A.Perspective(p=0.5), A.RandomCrop(20), A.CenterCrop(18), A.Resize((16, 16)),
         A.Brightness((0.5, 1.5)), A.Contrast((0.5, 1.5)), A.Contrast(1.2, semantics="albumentations"),
         A.Saturation((0.5, 1.5)), A.Hue((-0.2, 0.2)), A.Gamma((0.7, 1.4)), A.Solarize((0.3, 1.0)),
         A.Posterize((2, 7)), A.Equalize(p=0.5), A.AutoContrast(p=0.5), A.Sharpness((0.5, 2.0)),
         A.Grayscale(p=0.5), A.CoarseDropout(), A.Erasing(p=0.5), A.GaussianBlur(), A.GaussianNoise()]


def op_by_op(compose, images, params):
    """The reference: each op over the whole batch in turn (its batch fast path where it has one)."""
    for op, child in compose._children(params):
        images = op.apply(images, child)
    return images


def batches():
    rgb = sample_images(7, size=32, seed=5)
    return {"uint8": rgb, "float32": rgb.astype(np.float32) / 255, "grey": rgb[..., :1].copy(),
            "grey 2-D": rgb[..., 0].copy()}


@pytest.mark.parametrize("kind", ["uint8", "float32", "grey", "grey 2-D"])
@pytest.mark.parametrize("start", range(0, len(STEPS), 4))
def test_chain_gives_the_op_by_op_pixels(kind, start):
    images = batches()[kind]
    steps = STEPS[start:start + 4] + STEPS[:start][-2:]  # neighbours in both orders across runs
    keeps_shape = not any(isinstance(op, A.geometric.Crop) for op in steps)
    compose = A.Compose(steps, p=0.7 if keeps_shape else 1.0)  # else off images keep their size
    for seed in range(3):
        params = compose.sample_images(images, seed)
        chained = compose.apply_chained(images, params)
        assert chained is not None, "every step has a per-image kernel: the chain must run"
        expected = op_by_op(compose, images, params)
        assert chained.dtype == expected.dtype and chained.shape == expected.shape
        np.testing.assert_array_equal(chained, expected)
        np.testing.assert_array_equal(compose.apply_chained(images, params, threads=2), expected)


def test_chain_declines_what_it_cannot_run():
    images = sample_images(4, size=32, seed=1)
    choice = A.Compose([A.OneOf([A.Rotate(), A.Equalize()]), A.Brightness()])
    assert choice.apply_chained(images, choice.sample_images(images, 0)) is None
    as_list = A.Compose([A.Brightness()])
    assert as_list.apply_chained(list(images), as_list.sample_images(images, 0)) is None
    rect = sample_images(4, size=32, seed=1)[:, :, :20]
    turns = A.Compose([A.Rotate90(k=(0, 1)), A.Brightness()])  # mixed output shapes
    params = turns.sample_images(rect, 3)
    assert len(set(map(tuple, params["0"]["k"][:, None] % 2))) == 2
    assert turns.apply_chained(rect, params) is None
