"""Pure pixel functions: no randomness, one image (H×W×C, or H×W) or a lookup table at a time.

uint8 images stay uint8 (results rounded to nearest, saturated to 0–255); float32 images are
taken in [0, 1] and clipped to it. Geometric kernels take a 3×3 matrix that maps input pixel
coordinates (x, y), pixel centres on integers as in OpenCV, to output pixel coordinates.
"""
import math

import cv2
import numpy as np
import stringzilla as sz

INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR,
                  "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA,
                  "lanczos": cv2.INTER_LANCZOS4}
BORDERS = {"constant": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT_101,
           "replicate": cv2.BORDER_REPLICATE, "wrap": cv2.BORDER_WRAP}
_LEVELS = np.arange(256, dtype=np.float64)


def to_uint8(values):
    """Round to nearest and saturate to uint8.

    >>> to_uint8(np.array([-3.0, 127.5, 300.0]))
    array([  0, 128, 255], dtype=uint8)
    """
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# --- lookup tables (rows: one 256-entry table per image) -------------------------------------

def brightness_lut(factor):
    """Tables of ``x · factor``: one row per factor.

    >>> int(brightness_lut(np.array([0.5]))[0, 255])
    128
    """
    return to_uint8(np.asarray(factor, np.float64)[:, None] * _LEVELS)


def scale_lut_truncated(factor):
    """Tables of ``⌊x · factor⌋`` saturated, in float32 as albumentations 2 computes them.

    >>> int(scale_lut_truncated([1.2])[0, 100])
    120
    """
    f = np.asarray(factor, np.float32)[:, None]
    return np.clip(np.arange(256, dtype=np.float32) * f, 0, 255).astype(np.uint8)


def contrast_lut(factor, mean):
    """Tables of ``factor · x + (1 − factor) · mean`` (blend with the mean grey level)."""
    f = np.asarray(factor, np.float64)[:, None]
    return to_uint8(f * _LEVELS + (1 - f) * np.asarray(mean, np.float64)[:, None])


def gamma_lut(gamma):
    """Tables of ``255 · (x / 255) ** gamma``."""
    return to_uint8(255.0 * (_LEVELS / 255.0) ** np.asarray(gamma, np.float64)[:, None])


def solarize_lut(threshold):
    """Tables inverting levels ``x ≥ threshold · 255`` (threshold as a fraction of full scale)."""
    t = np.asarray(threshold, np.float64)[:, None] * 255.0
    return np.where(_LEVELS >= t, 255 - _LEVELS, _LEVELS).astype(np.uint8)


def posterize_lut(bits):
    """Tables keeping the ``bits`` highest bits of each level."""
    keep = (0xFF << (8 - np.asarray(bits, np.int64)[:, None])) & 0xFF
    return (np.arange(256)[None] & keep).astype(np.uint8)


def hue_lut(shift):
    """Tables for OpenCV's 8-bit hue (0–179): ``(h + 180 · shift) mod 180``, rounded."""
    h = np.rint(_LEVELS + 180.0 * np.asarray(shift, np.float64)[:, None]) % 180
    return h.astype(np.uint8)


def autocontrast_lut(lo, hi):
    """Tables stretching ``[lo, hi]`` to ``[0, 255]``; identity where ``hi ≤ lo``."""
    lo = np.asarray(lo, np.float64)[..., None]
    hi = np.asarray(hi, np.float64)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        stretched = to_uint8((_LEVELS - lo) * (255.0 / (hi - lo)))
    return np.where(hi > lo, stretched, np.arange(256, dtype=np.uint8))


def apply_lut(image, lut, out=None):
    """Map every uint8 sample through the 256-entry table ``lut``, in one pass.

    Tables run through stringzilla's byte translation (SIMD; about 10× OpenCV's LUT).

    >>> apply_lut(np.full((2, 2, 3), 255, np.uint8), brightness_lut([0.5])[0])[0, 0]
    array([128, 128, 128], dtype=uint8)
    """
    image = np.ascontiguousarray(image)
    out = np.empty_like(image) if out is None else out
    sz.translate(memoryview(image.reshape(-1)), memoryview(np.ascontiguousarray(lut, np.uint8)),
                 out=memoryview(out.reshape(-1)))
    return out


# --- colour ------------------------------------------------------------------------------

def gray(image):
    """Luma ``0.299 R + 0.587 G + 0.114 B`` (OpenCV) as H×W; a 1-channel image is returned as is."""
    if image.ndim == 2 or image.shape[-1] == 1:
        return image.reshape(image.shape[:2])
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def blend(image, other, factor, out=None):
    """``factor · image + (1 − factor) · other`` in the image's dtype (rounded, saturated)."""
    if image.dtype == np.uint8:
        res = cv2.addWeighted(image, float(factor), other, 1.0 - float(factor), 0.0, dst=out)
        return res.reshape(image.shape)
    res = np.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)
    if out is not None:
        out[...] = res
        return out
    return res.astype(np.float32)


LUMA = np.array([0.299, 0.587, 0.114])


def mix_channels(image, matrix, out=None):
    """Every pixel's channels times a C×C ``matrix`` in one pass, saturated (uint8) or clipped
    (float32). OpenCV quantizes the matrix for uint8: results within one level of exact."""
    res = cv2.transform(image, np.asarray(matrix, np.float32), dst=out)
    return res if image.dtype == np.uint8 else np.clip(res, 0.0, 1.0, out=res)


def saturation_matrix(factor):
    """``factor · rgb + (1 − factor) · luma`` as a channel matrix (0: grey, 1: identity).

    >>> saturation_matrix(0.0)[0].round(3)
    array([0.299, 0.587, 0.114])
    """
    return factor * np.eye(3) + (1.0 - factor) * LUMA[None, :]  # also for factors shaped N×1×1


def gray_like(image):
    """The luma of ``image`` repeated over its channels."""
    if image.ndim == 2 or image.shape[-1] == 1:
        return image.copy()
    return mix_channels(image, saturation_matrix(0.0))


def channel_range(image):
    """Per-channel (min, max) of an H×W×C (or H×W) image, as float arrays.

    >>> channel_range(np.arange(12, dtype=np.uint8).reshape(2, 2, 3))
    (array([0., 1., 2.]), array([ 9., 10., 11.]))
    """
    planes = [image] if image.ndim == 2 else cv2.split(image)
    ranges = [cv2.minMaxLoc(p)[:2] for p in planes]
    return np.array([r[0] for r in ranges]), np.array([r[1] for r in ranges])


def autocontrast(image, out=None):
    """Stretch each channel of a uint8 image from its [min, max] to [0, 255] (flat: unchanged)."""
    planes = [image.copy()] if image.ndim == 2 else cv2.split(image)
    for plane in planes:
        lo, hi = cv2.minMaxLoc(plane)[:2]
        sz.translate(memoryview(plane.reshape(-1)), memoryview(autocontrast_lut([lo], [hi])[0]),
                     inplace=True)
    if image.ndim == 2:
        return planes[0]
    return cv2.merge(planes, dst=out).reshape(image.shape)


def equalize(image, out=None):
    """OpenCV's ``equalizeHist`` on each channel of a uint8 image."""
    if image.ndim == 2:
        return cv2.equalizeHist(image, dst=out)
    planes = [cv2.equalizeHist(p) for p in cv2.split(image)]
    return cv2.merge(planes, dst=out).reshape(image.shape)


def shift_hue(image, shift):
    """Rotate the hue of an RGB image by ``shift`` turns (−0.5…0.5) through OpenCV's HSV."""
    if image.ndim == 2 or image.shape[-1] == 1:
        return image.copy()
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    if image.dtype == np.uint8:
        h = cv2.extractChannel(hsv, 0)
        sz.translate(memoryview(h.reshape(-1)), memoryview(hue_lut([shift])[0]), inplace=True)
        cv2.insertChannel(h, hsv, 0)
    else:
        hsv[..., 0] = np.mod(hsv[..., 0] + 360.0 * shift, 360.0)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0


def smooth(image):
    """PIL's SMOOTH filter (centre weight 5 of 13) inside the image, border pixels unchanged."""
    res = cv2.filter2D(image, -1, SMOOTH, borderType=cv2.BORDER_REPLICATE).reshape(image.shape)
    res[0], res[-1], res[:, 0], res[:, -1] = image[0], image[-1], image[:, 0], image[:, -1]
    return res


def gaussian_kernel(sigma):
    """PIL's normalized 1-D Gaussian: size ``2 · int(3.5 σ) + 1``."""
    half = int(sigma * 3.5)
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(image, sigma, out=None):
    """Separable Gaussian blur (reflect-101 border)."""
    k = gaussian_kernel(sigma)
    return cv2.sepFilter2D(image, -1, k, k, dst=out).reshape(image.shape)


def gaussian_noise(image, std, seed, out=None):
    """Add N(0, std²) noise (std in the image's units) from OpenCV's generator seeded ``seed``
    (thread-local, so reproducible on any thread); uint8 noise is drawn rounded to int16, which
    gives the same result as rounding the noisy sum."""
    cv2.setRNGSeed(int(seed))
    noise = np.empty(image.shape, np.int16 if image.dtype == np.uint8 else np.float32)
    cv2.randn(noise.reshape(noise.shape[0], -1), 0.0, float(std))  # one channel: all samples
    if image.dtype == np.uint8:
        return cv2.add(image, noise, dtype=cv2.CV_8U, dst=out).reshape(image.shape)
    return np.clip(image + noise, 0.0, 1.0, out=out)


# --- geometry ------------------------------------------------------------------------------

def centre(shape):
    """Pixel-centre coordinates of the image middle, ``((W − 1) / 2, (H − 1) / 2)``."""
    return (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0


def affine_matrix(shape, angle=0.0, scale=1.0, tx=0.0, ty=0.0, shear_x=0.0, shear_y=0.0):
    """3×3 matrix about the image centre: ``C · T · Shear · R · S · C⁻¹`` (angles in degrees,
    positive angle = counter-clockwise on screen, translation in pixels). Shear follows
    torchvision and albumentations: ``x' = x − tan(shear_x)·y``, ``y' = y − tan(shear_y)·x``.

    >>> affine_matrix((3, 3), angle=90).round(6)[:2] + 0.0
    array([[ 0.,  1.,  0.],
           [-1.,  0.,  2.]])
    """
    cx, cy = centre(shape)
    a = math.radians(angle)
    c, s = math.cos(a) * scale, math.sin(a) * scale
    hx, hy = -math.tan(math.radians(shear_x)), -math.tan(math.radians(shear_y))
    # Shear · R · S
    m00, m01 = c - hx * s, s + hx * c
    m10, m11 = hy * c - s, hy * s + c
    return np.array([[m00, m01, cx + tx - m00 * cx - m01 * cy],
                     [m10, m11, cy + ty - m10 * cx - m11 * cy], [0.0, 0.0, 1.0]])


def level(fill, dtype):
    """A fill given in 0–255 levels, in the units of ``dtype`` (float32: [0, 1])."""
    scale = 1.0 if dtype == np.uint8 else 1.0 / 255.0
    return fill * scale if np.isscalar(fill) else tuple(f * scale for f in fill)


def warp(image, matrix, size, interpolation="linear", border="constant", fill=0, out=None):
    """Warp by a 3×3 input→output ``matrix`` into an image of ``size`` = (H, W); ``fill`` in
    0–255 levels."""
    h, w = size
    flags = INTERPOLATIONS[interpolation]
    fill = level(fill, image.dtype)
    value = (fill,) * 4 if np.isscalar(fill) else tuple(fill)
    if matrix[2, 0] == 0 and matrix[2, 1] == 0 and matrix[2, 2] == 1:
        res = cv2.warpAffine(image, np.ascontiguousarray(matrix[:2]), (w, h), dst=out, flags=flags,
                             borderMode=BORDERS[border], borderValue=value)
    else:
        res = cv2.warpPerspective(image, matrix, (w, h), dst=out, flags=flags,
                                  borderMode=BORDERS[border], borderValue=value)
    return res.reshape((h, w) + image.shape[2:])


def affine_warper(interpolation="linear", border="constant", fill=0, dtype=np.uint8):
    """``warp(image, matrix, out)`` for affine 3×3 matrices into ``out`` of the image's size: what
    :func:`warp` does, with the flags worked out once for a batch.

    >>> warper = affine_warper()
    >>> out = np.empty((4, 4, 3), np.uint8)
    >>> warper(np.full((4, 4, 3), 9, np.uint8), np.eye(3), out)[0, 0]
    array([9, 9, 9], dtype=uint8)
    """
    flags, mode = INTERPOLATIONS[interpolation], BORDERS[border]
    fill = level(fill, dtype)
    value = (fill,) * 4 if np.isscalar(fill) else tuple(fill)

    def warp_one(image, matrix, out):
        res = cv2.warpAffine(image, np.ascontiguousarray(matrix[:2]), image.shape[1::-1], dst=out, flags=flags,
                             borderMode=mode, borderValue=value)
        if res is not out:  # OpenCV could not write into ``out`` (e.g. an H×W×1 slot)
            out[...] = res.reshape(out.shape)
        return out

    return warp_one


def unwarp(values, matrix, shape, interpolation="linear"):
    """Carry a map computed on an augmented image (e.g. a CAM) back onto the original image of
    ``shape`` (H, W), through the inverse of the op's input→output ``matrix``; regions that
    left the frame come back as 0.

    >>> unwarp(np.eye(3, dtype=np.float32), flip_matrix((3, 3), True), (3, 3))[0]
    array([0., 0., 1.], dtype=float32)
    """
    return warp(values, np.linalg.inv(matrix), shape[:2], interpolation)


def flip_matrix(shape, horizontal):
    """Matrix of a horizontal (x → W − 1 − x) or vertical (y → H − 1 − y) flip."""
    m = np.eye(3)
    axis = 0 if horizontal else 1
    m[axis, axis] = -1
    m[axis, 2] = shape[1 - axis] - 1
    return m


def rot90_matrix(shape, k):
    """Matrix of ``np.rot90(image, k)`` (k quarter turns counter-clockwise)."""
    h, w = shape[:2]
    m = np.eye(3)
    for _ in range(k % 4):
        m = np.array([[0, 1, 0], [-1, 0, w - 1], [0, 0, 1.0]]) @ m
        h, w = w, h
    return m


def crop_matrix(box, size):
    """Matrix of cropping ``box`` = (x0, y0, w, h) and resizing it to ``size`` = (H, W)."""
    x0, y0, w, h = box
    sx, sy = size[1] / w, size[0] / h
    return np.array([[sx, 0, 0.5 * sx - 0.5 - x0 * sx], [0, sy, 0.5 * sy - 0.5 - y0 * sy],
                     [0, 0, 1.0]])


def crop_resize(image, box, size, interpolation="linear", out=None):
    """Crop ``box`` = (x0, y0, w, h) and resize it to ``size`` = (H, W) (a plain copy if equal)."""
    x0, y0, w, h = (int(v) for v in box)
    roi = image[y0:y0 + h, x0:x0 + w]
    if (h, w) == tuple(size):
        if out is None:
            return roi.copy()
        out[...] = roi
        return out
    res = cv2.resize(roi, (int(size[1]), int(size[0])), dst=out,
                     interpolation=INTERPOLATIONS[interpolation])
    if out is not None and res is not out:  # OpenCV could not write into ``out`` (e.g. an H×W×1 slot)
        out[...] = res.reshape(out.shape)
        return out
    return res.reshape(tuple(size) + image.shape[2:])
