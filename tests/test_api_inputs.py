"""An API that meets its neighbours (issue 13, item 4): one image or a batch in augmentation ops,
targets by label name, torch-like tensors, CHW arrays and PIL images, grey arrays reported."""
import numpy as np
import pytest

from engine import Model
from engine.augment import Compose, HorizontalFlip, Rotate
from engine.data.images import as_rgb, image_list
from engine.errors import InputShapeError, UsageError
from engine.explain import cam
from tests.tiny_models import classifier, save

LABELS = ["circle", "square", "star", "ring"]
RNG = np.random.default_rng(11)
IMAGES = RNG.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)


class FakeTensor:
    """Duck-typed like a torch tensor: ``.detach().cpu().numpy()`` and nothing else."""

    def __init__(self, array):
        self.array = array

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.array


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.onnx"
    return Model(save(classifier(shape=("N", 3, 8, 8), metadata={"labels": LABELS}, seed=3), path))


# --- augmentation: one image or a batch --------------------------------------------------------
@pytest.mark.parametrize("op", [HorizontalFlip(), Rotate(25), Compose([Rotate((-20, 20)), HorizontalFlip(p=0.5)])])
def test_one_image_gives_one_image_equal_to_a_batch_of_one(op):
    image = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    one = op(image, seed=4)
    assert one.shape == image.shape
    np.testing.assert_array_equal(one, op(image[None], seed=4)[0])


def test_one_image_with_its_mask_and_a_grey_image():
    image = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[:, :5] = 1
    out, moved = HorizontalFlip()(image, seed=0, masks=mask)
    np.testing.assert_array_equal(out, image[:, ::-1])
    np.testing.assert_array_equal(moved, mask[:, ::-1])
    grey = image[..., 0]
    np.testing.assert_array_equal(HorizontalFlip()(grey, seed=0), grey[:, ::-1])


def test_ambiguous_arrays_are_refused_with_a_way_out():
    with pytest.raises(InputShapeError, match="ambiguous.*transpose"):
        HorizontalFlip()(np.zeros((3, 20, 30), np.uint8), seed=0)
    batch = np.zeros((5, 20, 30), np.uint8)  # five grey images, as before
    assert HorizontalFlip()(batch, seed=0).shape == (5, 20, 30)


# --- images as the neighbours hold them --------------------------------------------------------
def test_tensors_chw_arrays_and_pil_images_preprocess_like_hwc_arrays(model):
    expected = model.preprocess(list(IMAGES))
    chw = IMAGES.transpose(0, 3, 1, 2).copy()
    np.testing.assert_array_equal(model.preprocess(FakeTensor(chw), layout="CHW"), expected)
    np.testing.assert_array_equal(model.preprocess(list(chw), layout="CHW"), expected)
    np.testing.assert_array_equal(model.preprocess([FakeTensor(c) for c in chw], layout="CHW"), expected)
    np.testing.assert_array_equal(model.preprocess(FakeTensor(IMAGES)), expected)
    pil = pytest.importorskip("PIL.Image")
    np.testing.assert_array_equal(model.preprocess([pil.fromarray(im) for im in IMAGES]), expected)
    grey = pil.fromarray(IMAGES[0, ..., 0])  # a mode-L image becomes three equal channels
    np.testing.assert_array_equal(image_list([grey])[0], np.repeat(IMAGES[0, ..., :1], 3, axis=2))
    top = [p.top[0].index for p in model.predict(FakeTensor(chw), layout="CHW")]
    assert top == [p.top[0].index for p in model.predict(IMAGES)]


def test_grey_and_channels_first_arrays_are_reported_as_they_are(model):
    with pytest.raises(InputShapeError, match=r"shape 96×96: a 2-D array is a grey image"):
        model.preprocess(np.zeros((96, 96), np.uint8))
    with pytest.raises(InputShapeError, match='layout="CHW"'):
        as_rgb(np.zeros((3, 16, 16), np.uint8))
    with pytest.raises(InputShapeError, match="float images"):
        as_rgb(np.zeros((16, 16, 3), np.float32))


# --- targets by label name ---------------------------------------------------------------------
def test_targets_by_label_name_equal_targets_by_index(model):
    by_index = cam(model, list(IMAGES), targets=[2, 0, 3])
    by_name = cam(model, list(IMAGES), targets=["star", "circle", "ring"])
    np.testing.assert_array_equal(by_name.targets, [2, 0, 3])
    np.testing.assert_allclose(by_name.maps, by_index.maps)
    several = cam(model, list(IMAGES[:1]), targets=[["star", 1]])
    np.testing.assert_array_equal(several.targets, [2, 1])
    one = cam(model, list(IMAGES[:2]), targets="star")
    np.testing.assert_array_equal(one.targets, [2, 2])
    with pytest.raises(UsageError, match="neither a class index nor one of the model's labels"):
        cam(model, list(IMAGES[:1]), targets=["owl"])
