"""Faithfulness of explanation maps: deletion / insertion AUC (Petsiuk et al. 2018, RISE) and the
pointing game (Zhang et al. 2016), each comparable with a random-map and a centre-map baseline.

``score(x_batch, image_index)`` returns the explained score (e.g. the target class probability)
for a batch of perturbed inputs, ``image_index`` saying which image each row came from.

>>> x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
>>> score = lambda xb, rows: xb[:, :, :4].sum(axis=(1, 2, 3))     # only the top half matters
>>> maps = np.zeros((2, 8, 8)); maps[:, :4] = 1
>>> bool((deletion_auc(score, x, maps) < deletion_auc(score, x, 1 - maps)).all())   # lower is more faithful
True
>>> pointing_game(maps, maps > 0).tolist()                        # hits
[True, True]
"""
import cv2
import numpy as np

from engine.errors import UsageError
from engine.viz.overlay import resize_maps


def baseline_maps(kind, n, size, rng=0, first=0):
    """N×H×W reference maps: "random" (uniform noise) or "centre" (a Gaussian centred on the image).
    ``first``: the maps of images ``first .. first+n-1`` of the seed's stream (a shard's share).

    >>> baseline_maps("centre", 4, (64, 64)).shape
    (4, 64, 64)
    """
    h, w = size
    if kind == "random":
        if first:  # one draw per value: skip the maps of images 0 .. first-1
            rng = np.random.Generator(np.random.PCG64(rng).advance(first * h * w))
        return np.random.default_rng(rng).random((n, h, w)).astype(np.float32)
    if kind == "centre":
        yy, xx = np.mgrid[:h, :w]
        d2 = ((yy - (h - 1) / 2) / h) ** 2 + ((xx - (w - 1) / 2) / w) ** 2
        return np.broadcast_to(np.exp(-d2 / (2 * 0.25 ** 2)), (n, h, w)).astype(np.float32)
    raise UsageError(f"unknown baseline map '{kind}': use random or centre")


def default_tolerance(size):
    """The pointing game's tolerance in px: the paper's 15 px at 224 px, scaled to ``size=(H, W)``.

    >>> default_tolerance((96, 96))
    6
    """
    return int(round(15 / 224 * max(size)))


def pointing_game(maps, masks, tolerance=None):
    """Per-image hits: does each map's maximum fall inside the mask dilated by ``tolerance`` px?

    The default is the paper's protocol: 15 px at 224 px, scaled to the masks' size
    (6 px at 96 px). ``maps`` are resized to the masks' size (bilinear) when they differ.
    Returns a bool array N.

    >>> pointing_game(np.eye(4)[None], np.eye(4, dtype=bool)[None]).tolist()
    [True]
    """
    masks = np.asarray(masks, bool)
    n, h, w = masks.shape
    if tolerance is None:
        tolerance = default_tolerance((h, w))
    maps = resize_maps(maps, (h, w))
    hits = np.empty(n, bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
    for i in range(n):
        y, x = np.unravel_index(np.argmax(maps[i]), (h, w))
        target = masks[i] if tolerance == 0 else cv2.dilate(masks[i].astype(np.uint8), kernel).astype(bool)
        hits[i] = target[y, x]
    return hits


def deletion_curve(score, x, maps, steps=32, substrate="zero", layout="NCHW", batch=64):
    """Scores while the most salient pixels are replaced by ``substrate`` in ``steps`` equal steps.

    Returns N×(steps+1) scores, from the intact image to the fully deleted one.
    ``substrate``: "zero" (zeros in model space, RISE's deletion) or "blur".

    >>> deletion_curve(lambda xb, rows: xb.sum(axis=(1, 2, 3)), np.ones((1, 1, 4, 4)), np.eye(4)[None], steps=4)
    array([[16., 12.,  8.,  4.,  0.]])
    """
    return _curve(score, x, maps, steps, _substrate(x, substrate, layout), layout, batch, insert=False)


def insertion_curve(score, x, maps, steps=32, substrate="blur", layout="NCHW", batch=64):
    """Scores while the most salient pixels are inserted into ``substrate`` (RISE: a blurred copy).

    Returns N×(steps+1) scores, from the substrate to the intact image.

    >>> insertion_curve(lambda xb, rows: xb.sum(axis=(1, 2, 3)), np.ones((1, 1, 4, 4)), np.eye(4)[None], steps=4,
    ...                 substrate="zero")
    array([[ 0.,  4.,  8., 12., 16.]])
    """
    return _curve(score, x, maps, steps, _substrate(x, substrate, layout), layout, batch, insert=True)


def auc(curves):
    """Area under N×(steps+1) curves sampled at equal fractions of pixels in [0, 1] (trapezoid).

    >>> auc([[1.0, 0.5, 0.0]])
    array([0.5])
    """
    curves = np.asarray(curves, np.float64)
    return ((curves[:, 1:] + curves[:, :-1]) / 2).mean(axis=1)


def deletion_auc(score, x, maps, **options):
    """Deletion AUC per image (lower = the map finds the pixels the score depends on).

    >>> deletion_auc(lambda xb, rows: xb.mean(axis=(1, 2, 3)), np.ones((1, 1, 4, 4)), np.eye(4)[None], steps=4)
    array([0.5])
    """
    return auc(deletion_curve(score, x, maps, **options))


def insertion_auc(score, x, maps, **options):
    """Insertion AUC per image (higher = better).

    >>> insertion_auc(lambda xb, rows: xb.mean(axis=(1, 2, 3)), np.ones((1, 1, 4, 4)), np.eye(4)[None], steps=4,
    ...               substrate="zero")
    array([0.5])
    """
    return auc(insertion_curve(score, x, maps, **options))


def _substrate(x, kind, layout):
    if kind == "zero":
        return np.zeros_like(x)
    if kind == "blur":
        hwc = x if layout == "NHWC" else x.transpose(0, 2, 3, 1)
        blurred = np.stack([_blur(img) for img in hwc])
        return blurred if layout == "NHWC" else blurred.transpose(0, 3, 1, 2)
    raise UsageError(f"unknown substrate '{kind}': use zero or blur")


def _blur(img, ksize=11, sigma=5):
    out = cv2.GaussianBlur(np.ascontiguousarray(img, np.float32), (ksize, ksize), sigma)
    return out.reshape(img.shape)


def _curve(score, x, maps, steps, substrate, layout, batch, insert):
    n = len(x)
    h, w = (x.shape[2:4] if layout == "NCHW" else x.shape[1:3])
    n_pix = h * w
    curves = np.empty((n, steps + 1))
    counts = np.round(np.linspace(0, n_pix, steps + 1)).astype(int)
    maps = resize_maps(maps, (h, w))
    for i in range(n):
        order = np.argsort(-maps[i].ravel(), kind="stable")
        rank = np.empty(n_pix, int)
        rank[order] = np.arange(n_pix)
        # changed[s] is True where a pixel already comes from the end image at step s
        changed = rank[None, :] < counts[:, None]
        changed = changed.reshape(steps + 1, h, w)
        changed = changed[:, None] if layout == "NCHW" else changed[..., None]
        start, end = (substrate[i], x[i]) if insert else (x[i], substrate[i])
        images = np.where(changed, end[None], start[None]).astype(np.float32)
        for s in range(0, steps + 1, batch):
            part = images[s:s + batch]
            curves[i, s:s + len(part)] = score(part, np.full(len(part), i))
    return curves
