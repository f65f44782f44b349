"""Batch mixing: CutMix (Yun et al. 2019) and MixUp (Zhang et al. 2018).

Each image ``i`` is mixed with a partner from the same batch, ``(i + 1 + ⌊u·(n − 1)⌋) mod n``
(never itself), ``u`` drawn from image i's stream; labels come back soft (N × classes), mixed by
the exact pasted area (CutMix) or the blend weight (MixUp).
"""
import numpy as np

from engine.augment import kernels as K
from engine.augment.batches import check_images
from engine.augment.op import Op
from engine.augment.parameters import take
from engine.errors import InputShapeError, UsageError


def soft_labels(labels, n, num_classes=None):
    """Integer labels (N,) → one-hot float32 (N × classes); soft labels (N × K) pass through.

    >>> soft_labels(np.array([0, 2]), 2, num_classes=3)
    array([[1., 0., 0.],
           [0., 0., 1.]], dtype=float32)
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and len(labels) == n:
        return labels.astype(np.float32)
    if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f"labels must be {n} integers or an {n}×classes array, got {labels.shape}")
    k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.min() < 0 or labels.max() >= k:
        raise UsageError(f"labels must lie in [0, {k}): pass num_classes")
    return np.eye(k, dtype=np.float32)[labels]


class Mixing(Op):
    """Base of batch-mixing ops: ``op(images, labels, seed=...) -> (images, soft labels)``."""

    mixes = True

    def __init__(self, alpha=1.0, p=1.0):
        super().__init__(p)
        if not np.isscalar(alpha) or not np.isfinite(alpha) or alpha <= 0:
            raise UsageError(f"alpha must be a positive finite number, got {alpha!r}")
        self.alpha = float(alpha)

    def draw(self, rng, n, shape):
        return {"lam": rng.beta(self.alpha, self.alpha, n), "partner_u": rng.random(n),
                **self.draw_more(rng, n, shape)}

    def draw_more(self, rng, n, shape):
        return {}

    def __call__(self, images, labels, seed=None, masks=None, num_classes=None, start=0):
        check_images(images)
        params = self.sample_images(images, seed, start)
        return self.apply(images, labels, params, masks=masks, num_classes=num_classes)

    @staticmethod
    def partners(params):
        n = len(params["on"])
        if n == 1:
            return np.zeros(1, int)
        return (np.arange(n) + 1 + (params["partner_u"] * (n - 1)).astype(int)) % n

    def apply(self, images, labels, params, masks=None, num_classes=None):
        """Mix a batch with drawn ``params``; returns (images, soft labels[, masks])."""
        if not isinstance(images, np.ndarray):
            if len({np.shape(im) for im in images}) != 1:
                raise InputShapeError("mixing needs images of one size: resize or crop first")
            images = np.stack(images)
        y = soft_labels(labels, len(images), num_classes)
        j = self.partners(params)
        weight = np.where(params["on"], self.weights(params, images.shape[1:3]), 1.0)
        out = images.copy()
        mout = None if masks is None else np.array(masks, copy=True)
        for i in np.flatnonzero(params["on"]):
            self.mix(out, i, images[j[i]], params, mout, None if masks is None else masks[j[i]])
        mixed = weight[:, None] * y + (1 - weight[:, None]) * y[j]
        mixed = mixed.astype(np.float32)
        return (out, mixed) if masks is None else (out, mixed, mout)


class CutMix(Mixing):
    """Paste a box of a partner image; box side ``√(1 − λ)`` of the image, λ ~ Beta(α, α),
    centre uniform, clipped at the border; labels mixed by the exact pasted area.

    >>> images, labels = CutMix(alpha=1.0)(np.zeros((4, 32, 32, 3), np.uint8), np.arange(4), seed=0)
    """

    def draw_more(self, rng, n, shape):
        return {"centre": rng.random((n, 2))}

    @staticmethod
    def boxes(params, shape):
        """Pasted boxes (x0, y0, x1, y1) per image, following Yun et al.'s reference code."""
        h, w = shape[:2]
        cut = np.sqrt(1.0 - params["lam"])
        cw, ch = (w * cut).astype(int), (h * cut).astype(int)
        cx, cy = (params["centre"][:, 0] * w).astype(int), (params["centre"][:, 1] * h).astype(int)
        return np.stack([np.clip(cx - cw // 2, 0, w), np.clip(cy - ch // 2, 0, h),
                         np.clip(cx + cw // 2, 0, w), np.clip(cy + ch // 2, 0, h)], -1)

    def weights(self, params, shape):
        b = self.boxes(params, shape)
        return 1.0 - (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / float(shape[0] * shape[1])

    def mix(self, out, i, partner, params, mout, mpartner):
        x0, y0, x1, y1 = self.boxes(take(params, [i]), out.shape[1:3])[0]
        out[i, y0:y1, x0:x1] = partner[y0:y1, x0:x1]
        if mout is not None:
            mout[i, y0:y1, x0:x1] = mpartner[y0:y1, x0:x1]


class MixUp(Mixing):
    """Blend with a partner image: ``λ · x_i + (1 − λ) · x_j``, λ ~ Beta(α, α); masks unchanged.

    >>> images, labels = MixUp(alpha=0.2)(np.zeros((4, 32, 32, 3), np.uint8), np.arange(4), seed=0)
    """

    def weights(self, params, shape):
        return params["lam"]

    def mix(self, out, i, partner, params, mout, mpartner):
        out[i] = K.blend(out[i], partner, params["lam"][i])

