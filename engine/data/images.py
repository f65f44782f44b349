"""Reading images into uint8 H×W×3 RGB arrays, and resizing them as every part of onnxlens does."""
from pathlib import Path

import cv2
import numpy as np

from engine.errors import ImageError, InputShapeError


def read_image(path):
    """Read an image file (any format OpenCV decodes, any path, unicode included) as uint8 RGB.

    Gray images come back with three equal channels and alpha is dropped.

    >>> read_image("cat.png").shape
    (224, 224, 3)
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ImageError(f"cannot read image '{path}': {err.strerror or err}; check the path") from err
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ImageError(f"'{path}' is not an image OpenCV can decode: pass PNG, JPEG, BMP, TIFF or WebP files")
    return np.ascontiguousarray(bgr[..., ::-1])


def image_list(images):
    """A path, an H×W×3 array, an N×H×W×3 array or a sequence of paths and arrays, as a list.

    >>> len(image_list(np.zeros((4, 8, 8, 3), np.uint8)))
    4
    """
    if isinstance(images, (str, Path)):
        return [images]
    if isinstance(images, np.ndarray):
        return [images] if images.ndim == 3 else list(images)
    return list(images)


def as_rgb(image):
    """Return ``image`` as a uint8 H×W×3 RGB array: a path is read, an array is checked.

    >>> as_rgb(np.zeros((8, 8, 3), np.uint8)).shape
    (8, 8, 3)
    """
    if isinstance(image, (str, Path)):
        return read_image(image)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InputShapeError(
            f"images are uint8 H×W×3 RGB arrays or file paths, got a {array.dtype} array of shape {array.shape}"
        )
    return array


def resize(image, size):
    """Resize an H×W×C image to ``size=(H, W)``: INTER_AREA when shrinking, else INTER_LINEAR.

    >>> resize(np.zeros((96, 96, 3), np.uint8), (64, 64)).shape
    (64, 64, 3)
    """
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrinking = height <= image.shape[0] and width <= image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)
