"""The op protocol: sample/apply separation, determinism across batch sizes, chunks and threads,
lists of differently sized images, float32, probabilities, composition and errors."""
import numpy as np
import pytest

from engine import augment as A
from engine.augment import batches
from engine.augment.streams import Streams
from engine.augment.bench import sample_images
from engine.errors import InputShapeError, UsageError

OPS = [A.Brightness((0.5, 1.5)), A.Contrast((0.5, 1.5)), A.Saturation((0.5, 1.5)),
       A.Hue((-0.2, 0.2)), A.Gamma((0.7, 1.4)), A.Solarize((0.3, 1.0)), A.Posterize((2, 7)),
       A.Equalize(p=0.5), A.AutoContrast(p=0.5), A.Sharpness((0.5, 2.0)), A.Grayscale(p=0.5),
       A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.Rotate90(), A.Rotate((-30, 30)),
       A.RandomCrop(20), A.CenterCrop(20), A.RandomResizedCrop(24), A.Resize((16, 20)),
       A.Shear(), A.Translate(), A.Affine(angle=(-10, 10), scale=(0.9, 1.1)), A.Perspective(),
       A.CoarseDropout(), A.Erasing(p=0.5), A.GaussianBlur(), A.GaussianNoise(),
       A.RandAugment(2, 9), A.TrivialAugment(),
       A.Compose([A.RandomResizedCrop(24), A.HorizontalFlip(p=0.5), A.Brightness((0.8, 1.2))]),
       A.OneOf([A.Rotate((-20, 20)), A.GaussianBlur(), A.Equalize()], weights=[2, 1, 1])]
IDS = [type(op).__name__ for op in OPS]


@pytest.fixture(scope="module")
def images():
    return sample_images(6, size=32, seed=3)


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_one_seed_same_output_for_any_batch_size_chunking_and_threads(images, op):
    whole = op(images, seed=42)
    chunks = [op(images[a:b], seed=42, start=a) for a, b in ((0, 1), (1, 4), (4, 6))]
    assert same(whole, [x for c in chunks for x in c])
    assert same(whole, op(images, seed=42, threads=2))
    assert same(whole, op.apply(images, op.sample_images(images, 42)))
    assert not same(whole, op(images, seed=43)) or isinstance(op, (A.CenterCrop, A.Resize))


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_threads_over_many_small_chunks_give_the_one_thread_output(images, op, monkeypatch):
    monkeypatch.setattr(batches, "CHUNK_BYTES", 1)  # one image per work item, handed out to 2 threads
    masks = (images[..., 0] > 128).astype(np.uint8)
    assert same(op(images, seed=42), op(images, seed=42, threads=2))
    for one, two in zip(op(images, seed=5, masks=masks), op(images, seed=5, masks=masks, threads=2)):
        assert same(one, two)


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_lists_of_differently_sized_images(op):
    imgs = [sample_images(1, size=s, seed=s)[0] for s in (28, 34, 40)]
    out = op(imgs, seed=9, threads=2)
    assert isinstance(out, list) and len(out) == 3
    for i, im in enumerate(imgs):  # image i alone, at its index, gives the same output
        np.testing.assert_array_equal(out[i], op([im], seed=9, start=i)[0])
        assert out[i].dtype == np.uint8


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_dtypes_are_kept(images, op):
    assert op(images, seed=1)[0].dtype == np.uint8
    out = op(images.astype(np.float32) / 255, seed=1)
    assert out[0].dtype == np.float32
    assert 0.0 <= min(o.min() for o in out) and max(o.max() for o in out) <= 1.0


def test_probability(images):
    batch = np.repeat(images[:1], 400, axis=0)
    out = A.Brightness(0.5, p=0.3)(batch, seed=0)
    changed = np.any(out != batch, axis=(1, 2, 3)).mean()
    assert 0.22 < changed < 0.38
    np.testing.assert_array_equal(A.Rotate(30, p=0.0)(images, seed=0), images)


def test_streams_are_keyed_by_image_index():
    a = Streams(5, range(10)).random((10, 3))
    b = Streams(5, range(4, 6)).random((2, 3))
    np.testing.assert_array_equal(a[4:6], b)
    u = Streams(1, range(20000)).random((20000, 2))
    assert abs(u.mean() - 0.5) < 0.01 and abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
    k = Streams(1, range(20000)).integers(0, 4, (20000, 1))
    assert set(np.unique(k)) == {0, 1, 2, 3}


def test_sample_accepts_a_numpy_generator(images):
    op = A.Rotate((-30, 30))
    params = op.sample(np.random.default_rng(0), len(images), images.shape[1:])
    assert params["angle"].shape == (6,) and np.all(np.abs(params["angle"]) <= 30)
    assert same(op.apply(images, params), op.apply(images, params))


def test_compose_with_shape_changing_steps_continues_image_by_image(images):
    rect = images[:, :, :24]
    op = A.Compose([A.Rotate90(), A.RandomCrop((20, 20)), A.HorizontalFlip(p=0.5)])
    out = op(rect, seed=2)
    assert all(o.shape == (20, 20, 3) for o in out)
    assert same(out, op(rect, seed=2, threads=2))


def test_user_errors():
    with pytest.raises(UsageError):
        A.Rotate(angle=(30, -30))
    with pytest.raises(UsageError):
        A.Brightness(p=1.5)
    with pytest.raises(UsageError):
        A.Affine(border="mirror")
    with pytest.raises(UsageError):
        A.Rotate(30)(np.zeros((1, 8, 8, 3), np.uint8), seed=-1)
    with pytest.raises(InputShapeError):
        A.Rotate(30)(np.zeros((8, 8, 3, 2, 1), np.uint8), seed=0)
    with pytest.raises(InputShapeError):
        A.Rotate(30)(np.zeros((2, 8, 8, 3), np.int32), seed=0)
