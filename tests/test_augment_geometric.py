"""Geometric ops: exact references for flips, turns and crops, OpenCV/NumPy references for
warps, masks aligned with pixels, and the per-image matrices that map points."""
import cv2
import numpy as np
import pytest

from engine import augment as A
from engine.augment import kernels as K
from engine.augment.bench import sample_images
from engine.augment.parameters import rows


@pytest.fixture(scope="module")
def images():
    return sample_images(4, size=36, seed=2)


def test_flips_are_exact_and_involutions(images):
    h = A.HorizontalFlip()(images, seed=0)
    v = A.VerticalFlip()(images, seed=0)
    np.testing.assert_array_equal(h, images[:, :, ::-1])
    np.testing.assert_array_equal(v, images[:, ::-1])
    np.testing.assert_array_equal(A.HorizontalFlip()(h, seed=1), images)
    np.testing.assert_array_equal(A.VerticalFlip()(v, seed=1), images)
    half = A.HorizontalFlip(p=0.5)  # the per-image path
    out = half(images, seed=4)
    on = half.sample_images(images, 4)["on"]
    for i in range(len(images)):
        np.testing.assert_array_equal(out[i], images[i, :, ::-1] if on[i] else images[i])


def test_rotate90_matches_numpy(images):
    rect = images[:, :, :30]
    op = A.Rotate90()
    out = op(rect, seed=1)
    ks = op.sample_images(rect, 1)["k"]
    assert len(set(ks.tolist())) > 1
    for i, k in enumerate(ks):
        np.testing.assert_array_equal(out[i], np.rot90(rect[i], k))


def test_rotate_quarter_turn_is_rot90(images):
    out = A.Rotate(90)(images, seed=0)
    np.testing.assert_array_equal(out, np.rot90(images, 1, axes=(1, 2)))


def test_translate_by_whole_pixels(images):
    out = A.Translate(x=4 / 36, y=-3 / 36)(images, seed=0)
    ref = np.zeros_like(images)
    ref[:, :-3, 4:] = images[:, 3:, :-4]
    np.testing.assert_array_equal(out, ref)


def bilinear_reference(image, matrix, size):
    """Pull each output pixel from the input through the inverse matrix, bilinear, zero border."""
    h, w = size
    inv = np.linalg.inv(matrix)
    ys, xs = np.mgrid[0:h, 0:w]
    src = inv @ np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)])
    sx, sy = src[0] / src[2], src[1] / src[2]
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, sy - y0
    img = np.pad(image.astype(float), ((1, 2), (1, 2), (0, 0)))
    out = 0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy = np.clip(y0 + dy + 1, 0, img.shape[0] - 1)
            xx = np.clip(x0 + dx + 1, 0, img.shape[1] - 1)
            out = out + (wy * wx)[:, None] * img[yy, xx]
    return out.reshape(h, w, -1)


@pytest.mark.parametrize("op", [A.Rotate((-40, 40)), A.Shear(x=(-20, 20), y=(-10, 10)),
                                A.Affine(angle=(-20, 20), scale=(0.8, 1.2), translate_x=0.1,
                                         translate_y=(-0.1, 0.1), shear_x=(-10, 10)),
                                A.Perspective((0.05, 0.2))], ids=lambda op: type(op).__name__)
def test_warps_match_a_numpy_bilinear_reference(images, op):
    params = op.sample_images(images, 3)
    out = op.apply(images, params)
    for i, m in enumerate(op.matrices(params, images.shape[1:3])):
        ref = bilinear_reference(images[i], m, images.shape[1:3])
        err = np.abs(out[i].astype(float) - ref)[2:-2, 2:-2]  # away from the zero border
        assert np.percentile(err, 99) <= 2.0 and err.mean() < 0.5


def test_affine_matrix_is_the_documented_composition():
    shape = (30, 50)
    cx, cy = 24.5, 14.5
    a, s, tx, ty, shx, shy = np.deg2rad(25), 1.3, 4.0, -2.0, 10.0, -5.0
    c = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]])
    t = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    sh = np.array([[1, -np.tan(np.deg2rad(shx)), 0], [-np.tan(np.deg2rad(shy)), 1, 0], [0, 0, 1]])
    r = np.array([[np.cos(a), np.sin(a), 0], [-np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ref = c @ t @ sh @ r @ np.diag([s, s, 1]) @ np.linalg.inv(c)
    np.testing.assert_allclose(K.affine_matrix(shape, 25, s, tx, ty, shx, shy), ref, atol=1e-12)


def test_crops_are_slices_and_resizes_match_opencv(images):
    op = A.RandomCrop((20, 24))
    params = op.sample_images(images, 0)
    out = op.apply(images, params)
    for i, (x0, y0, w, h) in enumerate(params["box"]):
        np.testing.assert_array_equal(out[i], images[i, y0:y0 + h, x0:x0 + w])
    np.testing.assert_array_equal(A.CenterCrop(20)(images, seed=0), images[:, 8:28, 8:28])
    resized = A.Resize((18, 50))(images, seed=0)
    for i in range(len(images)):
        np.testing.assert_array_equal(resized[i], cv2.resize(images[i], (50, 18)))
    rrc = A.RandomResizedCrop(16, scale=(0.2, 0.6), ratio=(0.5, 2.0))
    params = rrc.sample_images(images, 0)
    out = rrc.apply(images, params)
    for i, (x0, y0, w, h) in enumerate(params["box"]):
        assert 0.15 < w * h / 36**2 < 0.65 and 0.4 < w / h < 2.5
        np.testing.assert_array_equal(out[i], cv2.resize(images[i, y0:y0 + h, x0:x0 + w], (16, 16)))


def test_crop_larger_than_image_is_a_clear_error(images):
    from engine.errors import InputShapeError
    with pytest.raises(InputShapeError):
        A.RandomCrop(64)(images, seed=0)


GEOMETRIC = [A.HorizontalFlip(), A.VerticalFlip(), A.Rotate90(), A.Rotate((-30, 30)),
             A.RandomCrop(24), A.CenterCrop(20), A.RandomResizedCrop(28), A.Resize((20, 30)),
             A.Shear(x=(-15, 15), y=(-15, 15)), A.Translate(), A.Affine(angle=(-20, 20), scale=(0.8, 1.2)),
             A.Perspective(), A.Compose([A.Rotate90(), A.RandomCrop(24), A.HorizontalFlip(p=0.5)]),
             A.OneOf([A.Rotate((-30, 30)), A.VerticalFlip()]), A.RandAugment(3, 9),
             A.TrivialAugment()]


def blocky(n=4, size=36, seed=0):
    """Label masks of 6×6 blocks and images painting each label its own colour."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 5, (n, size // 6, size // 6))
    masks = np.kron(labels, np.ones((6, 6), int)).astype(np.uint8)
    return (masks[..., None] * np.array([60, 30, 20], np.uint8)), masks


POLICY_GEOMETRIC = [3, 10, 11, 12, 13]  # Rotate, ShearX, ShearY, TranslateX, TranslateY


def _nearest(op):
    """The same op drawing images with nearest-neighbour sampling and a zero fill."""
    targets = [op] + list(getattr(op, "ops", [])) + list(getattr(op, "_ops", {}).values())
    for target in targets:
        if target is not None and "interpolation" in vars(target):
            target.interpolation = "nearest"
        if target is not None and "fill" in vars(target):
            target.fill = 0
    return op


def _params(op, imgs, seed):
    """Drawn parameters; policies are held to their geometric ops so pixels keep their values."""
    params = op.sample_images(imgs, seed)
    if "ops" in params:
        params["ops"] = np.array(POLICY_GEOMETRIC)[params["ops"] % len(POLICY_GEOMETRIC)]
    return params


@pytest.mark.parametrize("op", GEOMETRIC, ids=lambda op: type(op).__name__)
def test_masks_stay_aligned_with_pixels(op):
    imgs, masks = blocky()
    op = _nearest(op)
    out, mout = op.apply(imgs, _params(op, imgs, 7), masks=masks)
    for img, m in zip(out, mout):
        np.testing.assert_array_equal(img[..., 0], m.astype(np.uint8) * 60)


@pytest.mark.parametrize("op", GEOMETRIC, ids=lambda op: type(op).__name__)
def test_matrices_map_points_to_where_the_pixels_went(op):
    """A bright 3×3 dot lands (within a pixel) where the op's matrix sends its centre."""
    n, size = 8, 36
    imgs = np.zeros((n, size, size, 3), np.uint8)
    pts = np.array([[12, 9], [20, 15], [16, 22], [11, 14], [23, 19], [15, 11], [18, 18], [9, 25]])
    for i, (x, y) in enumerate(pts):
        imgs[i, y - 1:y + 2, x - 1:x + 2] = 255
    op = _nearest(op)
    params = _params(op, imgs, 11)
    out = op.apply(imgs, params)
    mats = op.matrices(params, (size, size))
    checked = 0
    for i, (x, y) in enumerate(pts):
        img = np.asarray(out[i])[..., 0].astype(float)
        corners = mats[i] @ np.array([[x - 2, y - 2, 1], [x + 2, y - 2, 1], [x - 2, y + 2, 1],
                                      [x + 2, y + 2, 1]], float).T
        cx, cy = corners[0] / corners[2], corners[1] / corners[2]
        if cx.min() < 0 or cy.min() < 0 or cx.max() > img.shape[1] - 1 or cy.max() > img.shape[0] - 1:
            continue  # the dot left the frame
        q = mats[i] @ [x, y, 1.0]
        yy, xx = np.nonzero(img > 0)
        wts = img[yy, xx]
        assert abs((wts * xx).sum() / wts.sum() - q[0] / q[2]) < 1.0
        assert abs((wts * yy).sum() / wts.sum() - q[1] / q[2]) < 1.0
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("op", GEOMETRIC, ids=lambda op: type(op).__name__)
def test_unwarp_carries_maps_back_onto_the_original(op):
    """What a robustness check needs: a map of the augmented image, warped back through the
    op's matrix, lines up with the original wherever the content stayed in frame."""
    imgs, masks = blocky()
    op = _nearest(op)
    params = _params(op, imgs, 5)
    _, mout = op.apply(imgs, params, masks=masks)
    seen = np.ones((4, 36, 36), np.uint8)
    _, visible = op.apply(imgs, params, masks=seen)
    box = np.ones((5, 5), np.uint8)
    for i, m in enumerate(op.matrices(params, (36, 36))):
        back = K.unwarp(np.asarray(mout[i]), m, (36, 36), "nearest")
        kept = K.unwarp(np.asarray(visible[i]), m, (36, 36), "nearest") > 0
        # away from block edges (2 px), where resampling twice cannot flip a label
        kept &= cv2.erode(masks[i], box) == cv2.dilate(masks[i], box)
        assert kept.mean() > 0.05
        np.testing.assert_array_equal(back[kept], masks[i][kept])


@pytest.mark.parametrize("op", [A.RandAugment(3, 9), A.OneOf([A.Rotate((-30, 30)), A.VerticalFlip()])],
                         ids=lambda op: type(op).__name__)
def test_masks_stay_aligned_for_lists_of_differently_sized_images(op):
    """Choice ops pick images and masks out of lists (not arrays) when sizes differ."""
    big_imgs, big_masks = blocky(n=2, size=36, seed=1)
    small_imgs, small_masks = blocky(n=2, size=24, seed=2)
    imgs, masks = [*big_imgs, *small_imgs], [*big_masks, *small_masks]
    op = _nearest(op)
    out, mout = op.apply(imgs, _params(op, imgs, 3), masks=masks)
    assert isinstance(mout, list) and [m.shape for m in mout] == [m.shape for m in masks]
    for img, m in zip(out, mout):
        np.testing.assert_array_equal(img[..., 0], m.astype(np.uint8) * 60)


@pytest.mark.parametrize("op", [A.Rotate((-30, 30)), A.Affine(angle=(-10, 10), scale=(0.9, 1.1), shear_x=(-5, 5)),
                                A.Rotate(20, border="reflect", fill=7), A.RandomResizedCrop(24), A.Resize(20),
                                A.CenterCrop(16)], ids=repr)
@pytest.mark.parametrize("form", ["rgb", "grey N×H×W×1", "grey N×H×W", "float32"])
def test_batch_paths_give_the_per_image_pixels(images, op, form):
    batch = images[:6, :32, :40]
    batch = {"rgb": batch, "grey N×H×W×1": batch[..., :1], "grey N×H×W": batch[..., 0],
             "float32": batch.astype(np.float32) / 255}[form]
    batch = np.ascontiguousarray(batch)
    params = op.sample_images(batch, seed=3)
    per_image = [op.kernel(im, prm) for im, prm in zip(batch, rows(params))]
    np.testing.assert_array_equal(op.apply_batch(batch, params), np.stack(per_image).reshape(-1, *per_image[0].shape))
