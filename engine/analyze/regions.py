"""The top region of a saliency map and the agreement (IoU) of two maps' top regions: one
definition for the audit's model comparison and the robustness check.

Tie rule: the top ``fraction`` of a map is every valid pixel at or above the k-th largest valid
value, k = ⌈fraction · valid pixels⌉. Ties are included, so the region never depends on pixel
order (a flat map's region is all of it) and may hold more than k pixels.

>>> region_iou(np.array([[5., 4., 3., 2., 1.]]), np.array([[1., 4., 3., 2., 5.]]), fraction=0.4)
0.3333333333333333
"""
import numpy as np

TOP_FRACTION = 0.2


def top_region(maps, valid=None, fraction=TOP_FRACTION):
    """Boolean mask of the top ``fraction`` of each map's ``valid`` pixels (tie rule above).

    ``maps``: one H×W map or a stack (…×H×W), one region per map; ``valid``: a bool mask of the
    same shape (default: every pixel). A map without valid pixels has an empty region.

    >>> top_region(np.array([[3., 1.], [2., 2.]]), fraction=0.5)
    array([[ True, False],
           [ True,  True]])
    """
    maps = np.asarray(maps)
    valid = np.ones(maps.shape, bool) if valid is None else np.broadcast_to(valid, maps.shape)
    flat = maps.reshape(-1, maps.shape[-2] * maps.shape[-1]).astype(np.float64)
    inside = valid.reshape(flat.shape)
    count = inside.sum(axis=1)
    k = np.maximum(1, np.ceil(fraction * count)).astype(np.int64)
    ranked = -np.sort(np.where(inside, -flat, np.inf), axis=1)  # valid values, largest first
    threshold = ranked[np.arange(len(flat)), np.minimum(k, flat.shape[1]) - 1]
    region = inside & (flat >= threshold[:, None]) & (count > 0)[:, None]
    return region.reshape(maps.shape)


def region_iou(a, b, valid=None, fraction=TOP_FRACTION):
    """IoU of the top-``fraction`` regions of maps ``a`` and ``b`` over the ``valid`` pixels:
    a float for one pair of H×W maps, an array for stacks; NaN where no pixel is valid.

    >>> m = np.arange(12.0).reshape(3, 4)
    >>> region_iou(m, m), region_iou(np.stack([m, m]), np.stack([m, -m]))
    (1.0, array([1., 0.]))
    """
    ra, rb = top_region(a, valid, fraction), top_region(b, valid, fraction)
    inter = (ra & rb).reshape(-1, ra.shape[-2] * ra.shape[-1]).sum(axis=1)
    union = (ra | rb).reshape(inter.shape[0], -1).sum(axis=1)
    iou = np.divide(inter, union, out=np.full(inter.shape, np.nan), where=union > 0)
    return float(iou[0]) if ra.ndim == 2 else iou.reshape(ra.shape[:-2])
