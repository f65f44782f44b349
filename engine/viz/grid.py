"""Tile images into one RGB picture, with an optional caption above each cell."""
import cv2
import numpy as np

from engine.viz.title import fit_scale

_CAPTION_H = 18


def _rgb(image):
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(np.asarray(image, np.float64) * 255.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image[..., :3]


def grid(images, ncols, labels=None, pad=2, background=255):
    """Tile ``images`` (uint8 0–255 or float 0–1, gray or RGB, any sizes) row by row into
    ``ncols`` columns; each cell is as large as the largest image, images sit top-left.

    >>> grid([np.zeros((8, 8, 3), np.uint8)] * 3, ncols=2, labels=["a", "b", "c"]).shape
    (58, 22, 3)
    """
    cells = [_rgb(im) for im in images]
    if not cells:
        raise ValueError("grid needs at least one image")
    ncols = max(1, min(int(ncols), len(cells)))
    nrows = -(-len(cells) // ncols)
    ch = max(c.shape[0] for c in cells) + (_CAPTION_H if labels is not None else 0)
    cw = max(c.shape[1] for c in cells)
    out = np.full((nrows * (ch + pad) + pad, ncols * (cw + pad) + pad, 3), background, np.uint8)
    for k, cell in enumerate(cells):
        y = pad + (k // ncols) * (ch + pad)
        x = pad + (k % ncols) * (cw + pad)
        if labels is not None:
            text = str(labels[k])
            scale = fit_scale(text, cw, 0.4, 0.2)
            cv2.putText(out, text, (x, y + _CAPTION_H - 5), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        (0, 0, 0), 1, cv2.LINE_AA)
            y += _CAPTION_H
        out[y:y + cell.shape[0], x:x + cell.shape[1]] = cell
    return out
