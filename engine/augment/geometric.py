"""Geometric ops: pixels move; masks move with them (nearest neighbour, border 0).

Each op exposes, per image, the 3×3 matrix mapping input pixel coordinates to output pixel
coordinates (``Op.matrices``): exact for flips, quarter turns and crops, the warp itself for the
others. Pixel centres sit on integer coordinates, as in OpenCV.
"""
import cv2
import numpy as np

from engine.augment import kernels as K
from engine.augment.op import Op
from engine.augment.parameters import as_range, fill_level, rows, uniform
from engine.errors import InputShapeError, UsageError


def _size(size, name="size"):
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    if int(h) < 1 or int(w) < 1:
        raise UsageError(f"{name} must be positive (H, W), got {size!r}")
    return int(h), int(w)


def _choice(value, options, name):
    if value not in options:
        raise UsageError(f"{name} must be one of {sorted(options)}, got {value!r}")
    return value


class Geometric(Op):
    geometric = True

    def mask_kernel(self, mask, prm):
        return self.warp_kernel(mask, prm, "nearest", "constant", 0)

    def kernel(self, image, prm, out=None):
        return self.warp_kernel(image, prm, self.interpolation, self.border, self.fill, out)

    def warp_kernel(self, image, prm, interpolation, border, fill, out=None):
        shape = image.shape[:2]
        return K.warp(image, self.matrix(prm, shape), self.out_shape(prm, shape),
                      interpolation, border, fill, out)


class HorizontalFlip(Geometric):
    """Mirror left–right.

    >>> aug = HorizontalFlip(p=0.5)
    """

    code = 1

    def matrix(self, prm, shape):
        return K.flip_matrix(shape, horizontal=self.code == 1)

    def apply_batch(self, images, params):
        if not (isinstance(images, np.ndarray) and params["on"].all()):
            return None
        if self.code == 0:  # rows reversed: one strided NumPy copy of the batch
            return np.ascontiguousarray(images[:, ::-1])
        tall = images.reshape((-1,) + images.shape[2:])  # every row of every image at once
        return cv2.flip(tall, 1).reshape(images.shape)

    def kernel(self, image, prm, out=None):
        return cv2.flip(image, self.code, dst=out).reshape(image.shape)

    def mask_kernel(self, mask, prm):
        return self.kernel(mask, prm)


class VerticalFlip(HorizontalFlip):
    """Mirror top–bottom.

    >>> aug = VerticalFlip(p=0.5)
    """

    code = 0


class Rotate90(Geometric):
    """Rotate by ``k`` quarter turns counter-clockwise (integer range; default any of 0–3).

    >>> aug = Rotate90(k=(0, 3))
    """

    shape_from_params = True

    def __init__(self, k=(0, 3), p=1.0):
        super().__init__(p)
        self.k = tuple(int(v) for v in as_range(k, "k", 0, 3))

    def draw(self, rng, n, shape):
        return {"k": rng.integers(self.k[0], self.k[1] + 1, n)}

    def out_shape(self, prm, shape):
        return tuple(shape[:2]) if prm["k"] % 2 == 0 else (shape[1], shape[0])

    def matrix(self, prm, shape):
        return K.rot90_matrix(shape, prm["k"])

    def kernel(self, image, prm, out=None):
        k = int(prm["k"]) % 4
        if k == 0:
            return image.copy()
        code = (cv2.ROTATE_90_COUNTERCLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_CLOCKWISE)[k - 1]
        res = cv2.rotate(image, code, dst=out)
        return res.reshape(self.out_shape(prm, image.shape) + image.shape[2:])

    def mask_kernel(self, mask, prm):
        return self.kernel(mask, prm)


class Affine(Geometric):
    """Rotate, scale, translate and shear about the image centre in one warp.

    ``angle`` and ``shear_x``/``shear_y`` in degrees (positive angle = counter-clockwise),
    ``scale`` a factor, ``translate_x``/``translate_y`` fractions of the width/height.
    ``border``: constant (``fill``, in 0–255 levels), reflect, replicate or wrap.

    >>> aug = Affine(angle=(-15, 15), scale=(0.9, 1.1), translate_x=(-0.1, 0.1))
    """

    def __init__(self, angle=0.0, scale=1.0, translate_x=0.0, translate_y=0.0, shear_x=0.0,
                 shear_y=0.0, interpolation="linear", border="constant", fill=0, p=1.0):
        super().__init__(p)
        self.angle = as_range(angle, "angle")
        self.scale = as_range(scale, "scale", 1e-3)
        self.translate_x = as_range(translate_x, "translate_x")
        self.translate_y = as_range(translate_y, "translate_y")
        self.shear_x = as_range(shear_x, "shear_x", -89.0, 89.0)
        self.shear_y = as_range(shear_y, "shear_y", -89.0, 89.0)
        self.interpolation = _choice(interpolation, K.INTERPOLATIONS, "interpolation")
        self.border = _choice(border, K.BORDERS, "border")
        self.fill = fill_level(fill)

    def draw(self, rng, n, shape):
        return {k: uniform(rng, getattr(self, k), n) for k in
                ("angle", "scale", "translate_x", "translate_y", "shear_x", "shear_y")}

    def matrix(self, prm, shape):
        h, w = shape[:2]
        return K.affine_matrix(shape, prm["angle"], prm["scale"], prm["translate_x"] * w,
                               prm["translate_y"] * h, prm["shear_x"], prm["shear_y"])

    def apply_batch(self, images, params):
        """An array batch: each image warped straight into its slot of the output (the per-image
        path's pixels, with less Python per image: the GIL-held share that limits threads)."""
        if not isinstance(images, np.ndarray):
            return None
        shape = images.shape[1:3]
        out = np.empty_like(images)
        warp = K.affine_warper(self.interpolation, self.border, self.fill, images.dtype)
        for i, prm in enumerate(rows(params)):
            if prm["on"]:
                warp(images[i], self.matrix(prm, shape), out[i])
            else:
                out[i] = images[i]
        return out


class Rotate(Affine):
    """Rotate by ``angle`` degrees (counter-clockwise) about the centre; size unchanged.

    >>> aug = Rotate(angle=(-30, 30), border="reflect")
    """

    def __init__(self, angle=(-30, 30), interpolation="linear", border="constant", fill=0, p=1.0):
        super().__init__(angle=angle, interpolation=interpolation, border=border, fill=fill, p=p)


class Shear(Affine):
    """Shear by ``x`` and ``y`` degrees about the centre.

    >>> aug = Shear(x=(-15, 15), y=0)
    """

    def __init__(self, x=(-15, 15), y=0.0, interpolation="linear", border="constant", fill=0,
                 p=1.0):
        super().__init__(shear_x=x, shear_y=y, interpolation=interpolation, border=border,
                         fill=fill, p=p)


class Translate(Affine):
    """Shift by ``x``/``y`` fractions of the width/height.

    >>> aug = Translate(x=(-0.1, 0.1), y=(-0.1, 0.1))
    """

    def __init__(self, x=(-0.1, 0.1), y=(-0.1, 0.1), interpolation="linear", border="constant",
                 fill=0, p=1.0):
        super().__init__(translate_x=x, translate_y=y, interpolation=interpolation,
                         border=border, fill=fill, p=p)


class Perspective(Geometric):
    """Map a random quadrilateral of the input onto the whole output: each corner moves inward
    by ``scale`` (fraction of the side, drawn per corner and axis); size unchanged.

    >>> aug = Perspective(scale=(0.05, 0.1))
    """

    def __init__(self, scale=(0.05, 0.1), interpolation="linear", border="constant", fill=0,
                 p=1.0):
        super().__init__(p)
        self.scale = as_range(scale, "scale", 0.0, 0.5)
        self.interpolation = _choice(interpolation, K.INTERPOLATIONS, "interpolation")
        self.border = _choice(border, K.BORDERS, "border")
        self.fill = fill_level(fill)

    def draw(self, rng, n, shape):
        return {"offsets": uniform(rng, self.scale, (n, 4, 2))}

    def matrix(self, prm, shape):
        h, w = shape[:2]
        corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
        inward = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * prm["offsets"] * [w - 1, h - 1]
        return cv2.getPerspectiveTransform((corners + inward).astype(np.float32),
                                           corners.astype(np.float32)).astype(np.float64)


class Crop(Geometric):
    """Base of crops: a box (x0, y0, w, h) per image, resized to the output size if they differ."""

    interpolation, border, fill = "linear", "constant", 0

    def __init__(self, size, p=1.0):
        super().__init__(p)
        self.size = _size(size)

    def out_shape(self, prm, shape):
        return self.size

    def matrix(self, prm, shape):
        return K.crop_matrix(prm["box"], self.out_shape(prm, shape))

    def warp_kernel(self, image, prm, interpolation, border, fill, out=None):
        return K.crop_resize(image, prm["box"], self.out_shape(prm, image.shape), interpolation,
                             out)

    def apply_batch(self, images, params):
        """An array batch with every crop on: each crop resized (or, at the output size, copied)
        straight into its slot of the output, with little Python per image."""
        if not (isinstance(images, np.ndarray) and params["on"].all()):
            return None
        h, w = self.size
        out = np.empty((len(images), h, w) + images.shape[3:], images.dtype)
        for i, box in enumerate(params["box"].tolist()):
            K.crop_resize(images[i], box, self.size, self.interpolation, out[i])
        return out

    def _fits(self, shape):
        if shape[0] < self.size[0] or shape[1] < self.size[1]:
            raise InputShapeError(f"cannot crop {self.size} out of an image of {shape[:2]}: "
                                  f"resize first or crop smaller")


class RandomCrop(Crop):
    """Crop ``size`` = (H, W) at a uniform random position.

    >>> aug = RandomCrop(size=(224, 224))
    """

    def draw(self, rng, n, shape):
        self._fits(shape)
        h, w = self.size
        y0 = rng.integers(0, shape[0] - h + 1, n)
        x0 = rng.integers(0, shape[1] - w + 1, n)
        return {"box": np.stack([x0, y0, np.full(n, w), np.full(n, h)], -1)}


class CenterCrop(Crop):
    """Crop ``size`` = (H, W) from the centre.

    >>> aug = CenterCrop(size=224)
    """

    def draw(self, rng, n, shape):
        self._fits(shape)
        h, w = self.size
        box = [(shape[1] - w) // 2, (shape[0] - h) // 2, w, h]
        return {"box": np.tile(box, (n, 1))}


class Resize(Crop):
    """Resize to ``size`` = (H, W).

    >>> aug = Resize(size=(128, 128), interpolation="area")
    """

    def __init__(self, size, interpolation="linear", p=1.0):
        super().__init__(size, p)
        self.interpolation = _choice(interpolation, K.INTERPOLATIONS, "interpolation")

    def draw(self, rng, n, shape):
        return {"box": np.tile([0, 0, shape[1], shape[0]], (n, 1))}


class RandomResizedCrop(Crop):
    """Crop a box of area ``scale`` (fraction) and aspect ``ratio`` (log-uniform), resized to
    ``size``; torchvision's rule: 10 tries, then a centre crop clamped to ``ratio``.

    >>> aug = RandomResizedCrop(size=224, scale=(0.08, 1.0))
    """

    tries = 10

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="linear",
                 p=1.0):
        super().__init__(size, p)
        self.scale = as_range(scale, "scale", 0.0, 1.0)
        self.ratio = as_range(ratio, "ratio", 1e-3)
        self.interpolation = _choice(interpolation, K.INTERPOLATIONS, "interpolation")

    def draw(self, rng, n, shape):
        h, w = shape[:2]
        t = self.tries
        area = uniform(rng, self.scale, (n, t)) * h * w
        aspect = np.exp(uniform(rng, np.log(self.ratio), (n, t)))
        cw = np.rint(np.sqrt(area * aspect)).astype(int)
        ch = np.rint(np.sqrt(area / aspect)).astype(int)
        u = rng.random((n, t, 2))
        ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        j = np.argmax(ok, axis=1)
        pick = np.arange(n), j
        bw, bh = cw[pick], ch[pick]
        x0 = (u[pick][:, 0] * (w - bw + 1)).astype(int)
        y0 = (u[pick][:, 1] * (h - bh + 1)).astype(int)
        # fallback: the whole image clamped to the ratio range, centred
        r = w / h
        fw, fh = ((w, int(round(w / self.ratio[0]))) if r < self.ratio[0] else
                  (int(round(h * self.ratio[1])), h) if r > self.ratio[1] else (w, h))
        found = ok[pick]
        boxes = np.where(found[:, None], np.stack([x0, y0, bw, bh], -1),
                         [(w - fw) // 2, (h - fh) // 2, fw, fh])
        return {"box": boxes}
