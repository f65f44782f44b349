"""A caption bar above an image."""
import cv2
import numpy as np


def titled(image, text, height=22):
    """``image`` (uint8 RGB) with a white bar holding ``text`` on top; the text shrinks to fit.

    >>> titled(np.zeros((40, 300, 3), np.uint8), "unit 7: red (color)").shape
    (62, 300, 3)
    """
    image = np.asarray(image, np.uint8)
    bar = np.full((height, image.shape[1], 3), 255, np.uint8)
    scale = fit_scale(text, image.shape[1] - 8, 0.5, 0.25)
    cv2.putText(bar, text, (4, height - 7), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, image])


def fit_scale(text, width, scale, smallest):
    """The font scale, shrunk from ``scale`` in steps of 0.05 down to ``smallest``, at which
    ``text`` fits in ``width`` pixels (Hershey simplex, thickness 1).

    >>> fit_scale("a long caption", 20, 0.5, 0.25) < 0.5
    True
    """
    while scale > smallest and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width:
        scale -= 0.05
    return scale
