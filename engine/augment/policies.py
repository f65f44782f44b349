"""Automatic policies: RandAugment (Cubuk et al. 2020) and TrivialAugment (Müller & Hutter 2021).

Both pick from the same 14 operations; a magnitude ``level`` in [0, 1] scales each op's strength
up to its maximum, with a random sign for the symmetric ones. Maxima follow torchvision's
implementations (RandAugment: 30° rotation, 0.3 shear, 150/331 of the side translation,
enhancement factors 1 ± 0.9, posterize 8 → 4 bits, solarize threshold 1 → 0; TrivialAugment
"wide": 135°, 0.99, 32 px, 1 ± 0.99, 8 → 2 bits). Geometric ops fill uncovered pixels with
``fill`` (128: the grey of Cubuk et al.'s code).
"""
import math

import numpy as np

from engine.augment import geometric as G
from engine.augment import photometric as P
from engine.augment.batches import parallel_apply, select
from engine.augment.composition import Choice
from engine.augment.parameters import as_range, count, fill_level, per_image_shapes, row, shape_of
from engine.errors import UsageError

NAMES = ("Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Posterize",
         "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY")
SIGNED = {"Rotate", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
          "TranslateX", "TranslateY"}
RANDAUGMENT_MAX = {"Rotate": 30.0, "Shear": 0.3, "Translate": 150 / 331, "Enhance": 0.9,
                   "Posterize": 4, "translate_px": False}
TRIVIAL_MAX = {"Rotate": 135.0, "Shear": 0.99, "Translate": 32.0, "Enhance": 0.99,
               "Posterize": 6, "translate_px": True}


def op_values(name, v, shape, maxima):
    """The parameters of op ``name`` at signed level ``v`` ∈ [−1, 1] for an image of ``shape``.

    >>> op_values("Rotate", 0.5, (32, 32), RANDAUGMENT_MAX)
    {'angle': 15.0}
    """
    h, w = shape[:2]
    if name == "Rotate":
        return {"angle": v * maxima["Rotate"]}
    if name in ("ShearX", "ShearY"):
        return {"shear_" + name[-1].lower(): math.degrees(math.atan(v * maxima["Shear"]))}
    if name in ("TranslateX", "TranslateY"):
        t = v * maxima["Translate"]
        if maxima["translate_px"]:
            t /= w if name == "TranslateX" else h
        return {"translate_" + name[-1].lower(): t}
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return {"factor": 1.0 + v * maxima["Enhance"]}
    if name == "Posterize":
        return {"bits": int(8 - round(abs(v) * maxima["Posterize"]))}
    if name == "Solarize":
        return {"threshold": 1.0 - abs(v)}
    return {}


def signed_level(name, level, sign):
    """The level ``v`` ∈ [−1, 1] of op ``name``: ``level`` with ``sign`` for the symmetric ops.

    >>> signed_level("Rotate", 0.9, -1.0), signed_level("Solarize", 0.9, -1.0)
    (-0.9, 0.9)
    """
    return level * (sign if name in SIGNED else 1.0)


class Policy(Choice):
    """Shared machinery: ``steps`` ops per image from the 14, each at a drawn level."""

    maxima = RANDAUGMENT_MAX

    def __init__(self, steps, fill=128, p=1.0):
        super().__init__(p)
        self.fill = fill_level(fill)
        affine = G.Affine(fill=fill)
        self._ops = {"Identity": None, "AutoContrast": P.AutoContrast(), "Equalize": P.Equalize(),
                     "Rotate": affine, "Solarize": P.Solarize(), "Color": P.Saturation(),
                     "Posterize": P.Posterize(), "Contrast": P.Contrast(),
                     "Brightness": P.Brightness(), "Sharpness": P.Sharpness(),
                     "ShearX": affine, "ShearY": affine, "TranslateX": affine,
                     "TranslateY": affine}
        self._steps = steps
        self.geometric = True

    def draw(self, rng, n, shape):
        ops = rng.integers(0, len(NAMES), (n, self._steps))
        sign = np.where(rng.random((n, self._steps)) < 0.5, -1.0, 1.0)
        return {"ops": ops, "level": self.levels(rng, (n, self._steps)), "sign": sign}

    def describe(self, params, shape):
        """Per image, the list of (op name, its parameters) applied in order.

        >>> RandAugment(2, 9).describe(RandAugment(2, 9).sample(np.random.default_rng(0), 1, (8, 8)), (8, 8))[0][0][0] in NAMES
        True
        """
        out = []
        for i in range(count(params)):
            steps = []
            if params["on"][i]:
                for k, lv, sg in zip(params["ops"][i], params["level"][i], params["sign"][i]):
                    name = NAMES[k]
                    steps.append((name, op_values(name, signed_level(name, lv, sg), shape,
                                                  self.maxima)))
            out.append(steps)
        return out

    def _child(self, name, params, idx, s, shapes):
        """Parameters of op ``name`` at step ``s`` for images ``idx``."""
        op = self._ops[name]
        sub = {"on": np.ones(len(idx), bool)}
        if isinstance(op, G.Affine):
            sub.update({k: np.zeros(len(idx)) for k in ("angle", "translate_x", "translate_y",
                                                         "shear_x", "shear_y")})
            sub["scale"] = np.ones(len(idx))
        rows = [op_values(name, signed_level(name, params["level"][i, s], params["sign"][i, s]),
                          shapes[i], self.maxima) for i in idx]
        for key in rows[0] if rows else ():
            sub[key] = np.array([r[key] for r in rows])
        return op, sub

    def apply(self, images, params, masks=None, threads=1):
        if threads > 1:
            return parallel_apply(self, images, params, masks, threads)
        out = images.copy() if isinstance(images, np.ndarray) else [im.copy() for im in images]
        mout = None
        if masks is not None:
            mout = np.array(masks) if isinstance(masks, np.ndarray) else [np.asarray(m) for m in masks]
        shapes = [shape_of(im) for im in images]
        for s in range(params["ops"].shape[1]):
            for k, name in enumerate(NAMES):
                idx = np.flatnonzero(params["on"] & (params["ops"][:, s] == k))
                if len(idx) == 0 or self._ops[name] is None:
                    continue
                op, sub = self._child(name, params, idx, s, shapes)
                res = op.apply_images(select(out, idx), sub)
                for j, i in enumerate(idx):
                    out[i] = res[j]
                if mout is not None and op.geometric:
                    moved = op.apply_masks(select(mout, idx), sub)
                    for j, i in enumerate(idx):
                        mout[i] = moved[j]
        return out if masks is None else (out, mout)

    def matrices(self, params, shapes):
        n = count(params)
        shapes = per_image_shapes(shapes, n)
        total = np.tile(np.eye(3), (n, 1, 1))
        for s in range(params["ops"].shape[1]):
            for k, name in enumerate(NAMES):
                idx = np.flatnonzero(params["on"] & (params["ops"][:, s] == k))
                if len(idx) and isinstance(self._ops[name], G.Affine):
                    op, sub = self._child(name, params, idx, s, shapes)
                    for j, i in enumerate(idx):
                        total[i] = op.matrix(row(sub, j), shapes[i]) @ total[i]
        return total


class RandAugment(Policy):
    """``n`` ops per image drawn uniformly (with replacement) from the 14, all at magnitude
    ``m`` on Cubuk et al.'s 0–10 scale (a range draws m uniformly per op).

    >>> aug = RandAugment(n=2, m=9)
    """

    def __init__(self, n=2, m=9, fill=128, p=1.0):
        if int(n) != n or n < 0:
            raise UsageError(f"RandAugment n must be a non-negative integer, got {n!r}")
        super().__init__(int(n), fill, p)
        self.n = int(n)
        self.m = as_range(m, "m", 0.0, 10.0)

    def levels(self, rng, size):
        return (self.m[0] + (self.m[1] - self.m[0]) * rng.random(size)) / 10.0


class TrivialAugment(Policy):
    """One op per image from the 14 at a uniform magnitude bin 0–30 ("wide" ranges).

    >>> aug = TrivialAugment()
    """

    maxima = TRIVIAL_MAX
    bins = 31

    def __init__(self, fill=128, p=1.0):
        super().__init__(1, fill, p)

    def levels(self, rng, size):
        return rng.integers(0, self.bins, size) / (self.bins - 1)
