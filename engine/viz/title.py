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
    scale = 0.5
    while scale > 0.25 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > image.shape[1] - 8:
        scale -= 0.05
    cv2.putText(bar, text, (4, height - 7), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, image])
