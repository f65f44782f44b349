"""Heatmap colouring (OpenCV's JET colormap) and blending over the image.

>>> overlay(images[0], np.eye(6), alpha=0.5).shape  # image H×W×3 uint8, map h×w in [0, 1]
(96, 96, 3)
"""
import cv2
import numpy as np


def colorize(heat, colormap=cv2.COLORMAP_JET):
    """Colour an H×W map in [0, 1] as an H×W×3 RGB uint8 image (blue = 0, red = 1).

    >>> colorize(np.linspace(0, 1, 64).reshape(8, 8))[[0, -1], [0, -1]]  # blue, red
    array([[  0,   0, 128],
           [128,   0,   0]], dtype=uint8)
    """
    u8 = np.uint8(np.round(255 * np.clip(heat, 0, 1)))
    return cv2.applyColorMap(u8, colormap)[..., ::-1].copy()


def overlay(image, heat, alpha=0.5, colormap=cv2.COLORMAP_JET):
    """Blend the coloured map over an RGB uint8 image: (1 − alpha)·image + alpha·colour.

    The map is resized (bilinear) to the image's size when they differ.

    >>> overlay(np.zeros((4, 4, 3), np.uint8), np.ones((2, 2)), alpha=0.5)[0, 0]
    array([64,  0,  0], dtype=uint8)
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    heat = resize_maps(np.asarray(heat)[None], image.shape[:2])[0]
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colorize(heat, colormap)
    return np.uint8(np.clip(np.round(blend), 0, 255))


def to_unit(maps):
    """Scale each map of N×H×W to [0, 1] (min-max per map, as pytorch-grad-cam's scale_cam_image).

    >>> to_unit(np.array([[[2., 4.], [6., 10.]]]))
    array([[[0.  , 0.25],
            [0.5 , 1.  ]]], dtype=float32)
    """
    maps = np.asarray(maps, np.float32)
    lo = maps.min(axis=(1, 2), keepdims=True)
    shifted = maps - lo
    return shifted / (shifted.max(axis=(1, 2), keepdims=True) + 1e-7)


def resize_maps(maps, size):
    """Resize N×h×w maps to N×H×W with ``size=(H, W)`` (bilinear, cv2.resize).

    >>> resize_maps(np.zeros((2, 6, 6), np.float32), (96, 96)).shape
    (2, 96, 96)
    """
    h, w = size
    maps = np.asarray(maps, np.float32)
    if maps.shape[1:] == (h, w):
        return maps
    if len(maps) == 1:  # one map (batch 1): no stack
        return cv2.resize(maps[0], (w, h), interpolation=cv2.INTER_LINEAR)[None]
    return np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in maps])


def unit_resized(maps, size):
    """``to_unit(resize_maps(to_unit(maps), size))`` in one pass per map: each map of N×h×w scaled
    to [0, 1], resized to ``size=(H, W)`` (bilinear) and stretched to [0, 1] again, as bilinear
    samples miss the peaks. The stretch is cv2.normalize's, without to_unit's ε: the same to ~1e-6
    for maps whose range exceeds ~1e-8; flatter ones reach 1 here (to_unit's ε kept them lower).

    >>> unit_resized(np.array([[[2., 4.], [6., 10.]]]), (3, 3))[0, [0, -1], [0, -1]]
    array([0., 1.], dtype=float32)
    """
    units = to_unit(maps)
    h, w = size
    out = np.empty((len(units), h, w), np.float32)
    for unit, resized in zip(units, out):
        cv2.resize(unit, (w, h), dst=resized, interpolation=cv2.INTER_LINEAR)
        cv2.normalize(resized, resized, 0, 1, cv2.NORM_MINMAX)
    return out


def strip(images, gap=2):
    """Lay RGB uint8 images of one size side by side with a white gap: a strip of steps.

    >>> strip(list(images[:3])).shape
    (96, 292, 3)
    """
    h = images[0].shape[0]
    parts = []
    for img in images:
        parts += [img, np.full((h, gap, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], axis=1)


def draw_box(image, box, text=None, color=(255, 255, 255)):
    """Draw an xyxy ``box`` (image pixels) with an optional caption on a copy of an RGB uint8 image.

    >>> draw_box(images[0], (12, 8, 40, 30), "dog 0.91").shape
    (96, 96, 3)
    """
    out = np.ascontiguousarray(image).copy()
    h, w = out.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, x2 = np.clip([x1, x2], 0, w - 1)
    y1, y2 = np.clip([y1, y2], 0, h - 1)
    thickness = max(1, round(min(h, w) / 200))
    cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), (0, 0, 0), thickness + 2)
    cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), color, thickness)
    if text:
        scale = max(0.3, min(h, w) / 500)
        cv2.putText(out, text, (int(x1) + 2, max(int(y1) - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1,
                    cv2.LINE_AA)
    return out
