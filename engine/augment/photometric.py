"""Photometric ops: pixel values change, geometry does not (masks pass through).

uint8 images go through lookup tables where the op is a function of the level alone (one table
per image, or one for the whole batch when the parameter is shared); float32 images in [0, 1]
use the same formulas directly.
"""
import cv2
import numpy as np

from engine.augment import kernels as K
from engine.augment.op import Op
from engine.augment.parameters import as_range, fill_level, uniform
from engine.errors import UsageError


def _shared(params, key):
    """The common value of ``params[key]`` when the op is on for every image and it is shared."""
    v = params[key]
    if params["on"].all() and len(v) and np.all(v == v[0]):
        return v[0]
    return None


class Ranged(Op):
    """An op set by one parameter ``key`` (a number or a uniform range within ``bounds``),
    drawn per image."""

    key = "factor"
    bounds = (0.0, np.inf)

    def __init__(self, value, p=1.0):
        super().__init__(p)
        setattr(self, self.key, as_range(value, self.key, *self.bounds))

    def draw(self, rng, n, shape):
        return {self.key: uniform(rng, getattr(self, self.key), n)}


class LutOp(Ranged):
    """A :class:`Ranged` op whose uint8 form is a table of the level alone."""

    def apply_batch(self, images, params):
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            return None
        value = _shared(params, self.key)
        if value is not None:  # one table, one pass over the whole batch
            return K.apply_lut(images, self.table([value])[0])
        tables = self.table(params[self.key])  # all tables at once, then one pass per image
        out = np.empty_like(images)
        for i, on in enumerate(params["on"].tolist()):
            if on:
                K.apply_lut(images[i], tables[i], out=out[i])
            else:
                out[i] = images[i]
        return out

    def kernel(self, image, prm, out=None):
        if image.dtype == np.uint8:
            return K.apply_lut(image, self.table([prm[self.key]])[0], out=out)
        res = self.formula(image, prm[self.key])
        if out is not None:
            out[...] = res
            return out
        return res


class Brightness(LutOp):
    """Multiply by ``factor`` (PIL/torchvision brightness): 0 = black, 1 = unchanged.

    >>> aug = Brightness(factor=(0.6, 1.4))
    """

    def __init__(self, factor=(0.8, 1.2), p=1.0):
        super().__init__(factor, p)

    table = staticmethod(K.brightness_lut)

    def formula(self, image, f):
        return np.clip(image * np.float32(f), 0.0, 1.0)


class Gamma(LutOp):
    """``x ↦ (x / max) ** gamma · max``.

    >>> aug = Gamma(gamma=(0.8, 1.25))
    """

    key = "gamma"
    bounds = (1e-3, np.inf)

    def __init__(self, gamma=(0.8, 1.25), p=1.0):
        super().__init__(gamma, p)

    table = staticmethod(K.gamma_lut)

    def formula(self, image, g):
        return np.power(image, np.float32(g))


class Solarize(LutOp):
    """Invert levels at or above ``threshold`` (a fraction of full scale: 0 inverts everything).

    >>> aug = Solarize(threshold=(0.5, 1.0))
    """

    key = "threshold"
    bounds = (0.0, 1.0)

    def __init__(self, threshold=0.5, p=1.0):
        super().__init__(threshold, p)

    table = staticmethod(K.solarize_lut)

    def formula(self, image, t):
        return np.where(image >= t, 1.0 - image, image).astype(np.float32)


class Posterize(LutOp):
    """Keep the ``bits`` highest bits of each channel (integer range, inclusive).

    >>> aug = Posterize(bits=(4, 8))
    """

    key = "bits"
    bounds = (0, 8)

    def __init__(self, bits=(4, 8), p=1.0):
        super().__init__(bits, p)

    def draw(self, rng, n, shape):
        lo, hi = self.bits
        return {"bits": rng.integers(int(lo), int(hi) + 1, n)}

    table = staticmethod(K.posterize_lut)

    def formula(self, image, bits):
        levels = K.to_uint8(image * 255.0)
        return K.apply_lut(levels, K.posterize_lut([bits])[0]).astype(np.float32) / 255.0


class Contrast(LutOp):
    """Contrast by ``factor`` (1 = unchanged), under one of two definitions (``semantics``):

    - ``"torchvision"`` (PIL ``ImageEnhance.Contrast``, torchvision ``adjust_contrast``):
      ``f · x + (1 − f) · m`` rounded, m the mean grey level of the image itself, so each image
      needs a pass for m before its table.
    - ``"albumentations"`` (albumentations 2's ``RandomBrightnessContrast`` with no brightness
      change, ``contrast_limit`` a ↔ factor 1 + a): ``⌊f · x⌋`` saturated, levels scaled about 0
      (what its code computes; its docstring's blend with the mean is not), one table for the
      batch when the factor is shared. float32 images: ``clip(f · x, 0, 1)``.

    >>> aug = Contrast(factor=(0.8, 1.2), semantics="albumentations")
    """

    SEMANTICS = ("torchvision", "albumentations")

    def __init__(self, factor=(0.8, 1.2), p=1.0, semantics="torchvision"):
        super().__init__(factor, p)
        if semantics not in self.SEMANTICS:
            raise UsageError(f"Contrast semantics is 'torchvision' or 'albumentations', got '{semantics}'")
        self.semantics = semantics

    def apply_batch(self, images, params):
        return super().apply_batch(images, params) if self.semantics == "albumentations" else None

    table = staticmethod(K.scale_lut_truncated)

    def formula(self, image, f):
        return np.clip(image * np.float32(f), 0.0, 1.0)

    def kernel(self, image, prm, out=None):
        if self.semantics == "albumentations":
            return super().kernel(image, prm, out=out)
        f = prm["factor"]
        mean = cv2.mean(K.gray(image))[0]
        if image.dtype == np.uint8:
            return K.apply_lut(image, K.contrast_lut([f], [mean])[0], out=out)
        return K.blend(image, np.float32(mean), f, out=out)


class Saturation(Ranged):
    """Blend with the image's own luma by ``factor`` (0 = grey, 1 = unchanged), one channel
    matrix per image.

    >>> aug = Saturation(factor=(0.5, 1.5))
    """

    def __init__(self, factor=(0.8, 1.2), p=1.0):
        super().__init__(factor, p)

    def apply_batch(self, images, params):
        if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3:
            return None
        f = _shared(params, "factor")
        if f is not None:  # one matrix: the batch as one tall image
            tall = images.reshape((-1,) + images.shape[2:])
            return K.mix_channels(tall, K.saturation_matrix(f)).reshape(images.shape)
        mats = K.saturation_matrix(params["factor"][:, None, None]).astype(np.float32)
        out = np.empty_like(images)
        for i, on in enumerate(params["on"].tolist()):
            if on:
                K.mix_channels(images[i], mats[i], out=out[i])
            else:
                out[i] = images[i]
        return out

    def kernel(self, image, prm, out=None):
        if image.ndim == 2 or image.shape[-1] != 3:
            return image.copy()
        return K.mix_channels(image, K.saturation_matrix(prm["factor"]), out=out)


class Hue(Ranged):
    """Rotate the hue by ``shift`` turns of the colour circle (−0.5…0.5), through OpenCV HSV.

    >>> aug = Hue(shift=(-0.1, 0.1))
    """

    key = "shift"
    bounds = (-0.5, 0.5)

    def __init__(self, shift=(-0.05, 0.05), p=1.0):
        super().__init__(shift, p)

    def kernel(self, image, prm, out=None):  # per image: a whole-batch HSV pass is 1.7x slower (cache)
        return K.shift_hue(image, prm["shift"])


class Grayscale(Op):
    """Replace every channel by the luma ``0.299 R + 0.587 G + 0.114 B`` (to within one level;
    shape unchanged).

    >>> aug = Grayscale(p=0.2)
    """

    def apply_batch(self, images, params):  # one channel matrix over the batch as one tall image
        if not (isinstance(images, np.ndarray) and params["on"].all()):
            return None  # some images only: image by image beats gathering them (2 extra copies)
        return K.gray_like(images.reshape(-1, *images.shape[2:])).reshape(images.shape)

    def kernel(self, image, prm, out=None):
        return K.gray_like(image)


class Equalize(Op):
    """Histogram equalization of each channel (OpenCV ``equalizeHist`` formula).

    float32 images are equalized on their 8-bit levels.

    >>> aug = Equalize()
    """

    def kernel(self, image, prm, out=None):
        if image.dtype != np.uint8:
            return self.kernel(K.to_uint8(image * 255.0), prm).astype(np.float32) / 255.0
        return K.equalize(image, out=out)


class AutoContrast(Op):
    """Stretch each channel's [min, max] to the full range (identity for a flat channel).

    >>> aug = AutoContrast(p=0.5)
    """

    def kernel(self, image, prm, out=None):
        if image.dtype == np.uint8:
            return K.autocontrast(image, out=out)
        lo, hi = K.channel_range(image)
        span = np.where(hi > lo, hi - lo, 1.0)
        res = np.where(hi > lo, (image - lo) / span, image)
        return np.clip(res, 0.0, 1.0).astype(np.float32)


class Sharpness(Ranged):
    """Blend with PIL's smoothed image by ``factor`` (0 = smooth, 1 = unchanged, 2 = sharper).

    >>> aug = Sharpness(factor=(0.5, 2.0))
    """

    def __init__(self, factor=(0.5, 1.5), p=1.0):
        super().__init__(factor, p)

    def kernel(self, image, prm, out=None):
        if min(image.shape[:2]) < 3:
            return image.copy()
        return K.blend(image, K.smooth(image), prm["factor"], out=out)


class GaussianBlur(Ranged):
    """Gaussian blur with standard deviation ``sigma`` px (kernel size 2·int(3.5σ)+1 as PIL).

    >>> aug = GaussianBlur(sigma=(0.5, 2.0))
    """

    key = "sigma"
    bounds = (1e-3, 100.0)  # a 701-pixel kernel; beyond that every image is one flat colour anyway

    def __init__(self, sigma=(0.5, 2.0), p=1.0):
        super().__init__(sigma, p)

    def kernel(self, image, prm, out=None):
        return K.gaussian_blur(image, prm["sigma"], out=out)


class GaussianNoise(Ranged):
    """Add N(0, std²) noise per sample; ``std`` as a fraction of full scale.

    Image i's noise comes from OpenCV's (thread-local) generator seeded from its parameters, so
    it does not depend on the batch or on the thread that computes it.

    >>> aug = GaussianNoise(std=(0.01, 0.05))
    """

    key = "std"

    def __init__(self, std=(0.01, 0.05), p=1.0):
        super().__init__(std, p)

    def draw(self, rng, n, shape):
        return {**super().draw(rng, n, shape),
                "noise_seed": rng.integers(0, 2**31, n, dtype=np.int64)}

    def kernel(self, image, prm, out=None):
        std = prm["std"] * (255.0 if image.dtype == np.uint8 else 1.0)
        return K.gaussian_noise(image, std, prm["noise_seed"], out=out)


class CoarseDropout(Op):
    """Fill ``holes`` rectangles (count: integer range) of side ``size`` (fraction of the image
    side) with ``fill`` (0–255 levels). Masks are left unchanged.

    >>> aug = CoarseDropout(holes=(1, 4), size=(0.05, 0.2))
    """

    def __init__(self, holes=(1, 8), size=(0.05, 0.2), fill=0, p=1.0):
        super().__init__(p)
        self.holes = tuple(int(v) for v in as_range(holes, "holes", 0))
        self.size = as_range(size, "size", 0.0, 1.0)
        self.fill = fill_level(fill)

    def draw(self, rng, n, shape):
        h, w = shape[:2]
        k = self.holes[1]
        count = rng.integers(self.holes[0], self.holes[1] + 1, n)
        bh = np.maximum(1, np.rint(uniform(rng, self.size, (n, k)) * h)).astype(int)
        bw = np.maximum(1, np.rint(uniform(rng, self.size, (n, k)) * w)).astype(int)
        y0 = (rng.random((n, k)) * (h - bh + 1)).astype(int)
        x0 = (rng.random((n, k)) * (w - bw + 1)).astype(int)
        boxes = np.stack([x0, y0, x0 + bw, y0 + bh], -1)
        return {"boxes": boxes, "valid": np.arange(k)[None] < count[:, None]}

    def kernel(self, image, prm, out=None):
        if out is None:
            out = image.copy()
        else:
            out[...] = image
        fill = K.level(self.fill, image.dtype)
        for (x0, y0, x1, y1), valid in zip(prm["boxes"], prm["valid"]):
            if valid:
                out[y0:y1, x0:x1] = fill
        return out


class Erasing(CoarseDropout):
    """Random erasing (Zhong et al. 2020): one rectangle of area ``scale`` (fraction of the
    image) and aspect ``ratio`` (log-uniform), filled with ``fill``.

    >>> aug = Erasing(scale=(0.02, 0.33), ratio=(0.3, 3.3), p=0.5)
    """

    def __init__(self, scale=(0.02, 0.33), ratio=(0.3, 3.3), fill=0, p=1.0):
        Op.__init__(self, p)
        self.scale = as_range(scale, "scale", 0.0, 1.0)
        self.ratio = as_range(ratio, "ratio", 1e-3)
        self.fill = fill_level(fill)

    def draw(self, rng, n, shape):
        h, w = shape[:2]
        area = uniform(rng, self.scale, n) * h * w
        aspect = np.exp(uniform(rng, np.log(self.ratio), n))
        bh = np.clip(np.rint(np.sqrt(area / aspect)), 1, h).astype(int)
        bw = np.clip(np.rint(np.sqrt(area * aspect)), 1, w).astype(int)
        y0 = (rng.random(n) * (h - bh + 1)).astype(int)
        x0 = (rng.random(n) * (w - bw + 1)).astype(int)
        boxes = np.stack([x0, y0, x0 + bw, y0 + bh], -1)[:, None]
        return {"boxes": boxes, "valid": np.ones((n, 1), bool)}
