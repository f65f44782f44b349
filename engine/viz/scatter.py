"""A scatter plot drawn with OpenCV: points coloured by label with a legend, optional thumbnails."""
import cv2
import numpy as np

# Tableau-10 then a second set of distinct hues; labels beyond these cycle.
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 128), (128, 128, 0),
    (0, 128, 128), (128, 0, 0), (255, 215, 0), (0, 0, 0),
], np.uint8)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def scatter(points, labels=None, size=800, thumbnails=None, thumb=40, radius=4, title=None):
    """Plot N×2 ``points`` on a ``size``×``size`` canvas; returns uint8 H×W×3 RGB.

    Colours follow the sorted distinct ``labels`` (listed in a legend at the right).
    ``thumbnails``: N images (or None entries) drawn at their points where they do not overlap
    one already drawn, in order.

    >>> scatter(np.random.rand(100, 2), ["a", "b"] * 50).shape
    (800, 859, 3)
    """
    points = np.asarray(points, np.float64)
    labels = ["" if label is None else str(label) for label in (labels if labels is not None else [""] * len(points))]
    names = sorted(set(labels))
    color = {name: tuple(int(v) for v in PALETTE[i % len(PALETTE)]) for i, name in enumerate(names)}
    legend_w = 0 if names == [""] else 20 + max(cv2.getTextSize(n, _FONT, 0.45, 1)[0][0] for n in names) + 30
    top = 30 if title else 0
    canvas = np.full((size + top, size + legend_w, 3), 255, np.uint8)
    margin = thumb // 2 + 10 if thumbnails is not None else 12
    lo, hi = points.min(axis=0), points.max(axis=0)
    scale = (size - 2 * margin) / np.maximum(hi - lo, 1e-12)
    xy = np.rint((points - lo) * scale + margin).astype(int)
    xy[:, 1] = size - xy[:, 1] + top  # y grows upwards
    for (x, y), label in zip(xy, labels):
        cv2.circle(canvas, (x, y), radius, color[label], -1, cv2.LINE_AA)
    if thumbnails is not None:
        _place_thumbnails(canvas, xy, thumbnails, labels, color, thumb)
    if title:
        cv2.putText(canvas, title, (10, 20), _FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    if legend_w:
        for i, name in enumerate(names):
            y = top + 20 + 20 * i
            cv2.circle(canvas, (size + 16, y - 4), 6, color[name], -1, cv2.LINE_AA)
            cv2.putText(canvas, name, (size + 28, y), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def _place_thumbnails(canvas, xy, thumbnails, labels, color, thumb):
    taken = np.zeros(canvas.shape[:2], bool)
    half = thumb // 2
    for (x, y), image, label in zip(xy, thumbnails, labels):
        if image is None:
            continue
        y0, x0 = y - half, x - half
        if y0 < 0 or x0 < 0 or y0 + thumb > canvas.shape[0] or x0 + thumb > canvas.shape[1]:
            continue
        if taken[y0:y0 + thumb, x0:x0 + thumb].any():
            continue
        small = cv2.resize(np.asarray(image, np.uint8), (thumb, thumb), interpolation=cv2.INTER_AREA)
        canvas[y0:y0 + thumb, x0:x0 + thumb] = small
        cv2.rectangle(canvas, (x0, y0), (x0 + thumb - 1, y0 + thumb - 1), color[label], 2)
        taken[y0:y0 + thumb, x0:x0 + thumb] = True
