"""Parameter utilities: argument ranges and fills, uniform draws, and the per-image parameter
dicts that ``Op.sample`` returns (one row per image, nested for Compose/OneOf).

>>> rows(take({"on": np.array([True, False]), "k": np.array([1, 2])}, [1]))
[{'on': False, 'k': 2}]
"""
import numpy as np

from engine.errors import UsageError


def as_range(value, name, low=-np.inf, high=np.inf):
    """A number means fixed, ``(lo, hi)`` a uniform range; checks the bounds.

    >>> as_range(0.5, "p", 0.0, 1.0)
    (0.5, 0.5)
    """
    try:
        lo, hi = (float(value),) * 2 if np.isscalar(value) else (float(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number or a (lo, hi) pair, got {value!r}") from None
    if not (low <= lo <= hi <= high) or not np.isfinite([lo, hi]).all():
        raise UsageError(f"{name} must be finite and lie within [{low}, {high}] with lo ≤ hi, got {value!r}")
    return float(lo), float(hi)


def fill_level(value, name="fill"):
    """A constant fill colour as a 0–255 level; raises UsageError for anything else.

    >>> fill_level(128)
    128
    """
    try:
        level = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number from 0 to 255, got {value!r}") from None
    if not 0 <= level <= 255:
        raise UsageError(f"{name} must be a number from 0 to 255, got {value!r}")
    return int(level) if level.is_integer() else level


def uniform(rng, bounds, n):
    """``n`` draws from ``bounds`` = (lo, hi) (one draw is consumed even when lo == hi).

    >>> uniform(np.random.default_rng(0), (2.0, 2.0), 3)
    array([2., 2., 2.])
    """
    return bounds[0] + (bounds[1] - bounds[0]) * rng.random(n)


def shape_of(image):
    """(H, W) of one image.

    >>> shape_of(np.zeros((4, 6, 3)))
    (4, 6)
    """
    return tuple(image.shape[:2])


def concat(parts):
    """Stack per-image parameter dicts (nested for Compose/OneOf) along the image axis.

    >>> concat([{"k": np.array([1])}, {"k": np.array([2])}])["k"]
    array([1, 2])
    """
    first = parts[0]
    if isinstance(first, dict):
        return {k: concat([p[k] for p in parts]) for k in first}
    return np.concatenate(parts)


def take(params, idx):
    """Rows ``idx`` of a (nested) parameter dict.

    >>> take({"on": np.array([True, False]), "0": {"k": np.array([1, 2])}}, [1])["0"]["k"]
    array([2])
    """
    if isinstance(params, dict):
        return {k: take(v, idx) for k, v in params.items()}
    return params[idx]


def row(params, i):
    """The parameters of image ``i`` as a flat dict of Python scalars / lists.

    >>> row({"on": np.array([True, False])}, 1)
    {'on': False}
    """
    return {k: v[i].tolist() for k, v in params.items()}


def rows(params):
    """The parameters of every image as flat dicts of Python scalars / lists.

    >>> rows({"k": np.array([1, 2])})
    [{'k': 1}, {'k': 2}]
    """
    cols = {k: v.tolist() for k, v in params.items()}
    return [dict(zip(cols, vals)) for vals in zip(*cols.values())]


def count(params):
    """The number of images a parameter dict describes.

    >>> count({"on": np.ones(3, bool)})
    3
    """
    return len(params["on"])


def per_image_shapes(shapes, n):
    """One (H, W[, C]) tuple per image: ``shapes`` is one shape for all ``n`` images, or one each.

    >>> per_image_shapes((4, 6), 2)
    [(4, 6), (4, 6)]
    """
    if len(shapes) and np.isscalar(shapes[0]):
        return [tuple(shapes)] * n
    return [tuple(s) for s in shapes]
