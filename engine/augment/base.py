"""The op protocol, per-image random streams, batch plumbing, Compose and OneOf.

An op separates randomness from pixels::

    params = op.sample(rng, n, shape)      # dict of arrays, one row per image
    out = op.apply(images, params)         # pure: same params → same pixels

``op(images, seed=s)`` draws image ``i``'s parameters from its own counter-based stream keyed by
``(s, start + i)`` (:class:`Streams`), so a seed gives the same output for any batch size,
chunking or thread count. Every op also reports, per image, the 3×3 matrix that maps input pixel
coordinates to output pixel coordinates (:meth:`Op.matrices`; identity for photometric ops), so
a map computed on an augmented image can be warped back onto the original.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from engine.errors import InputShapeError, UsageError

_POOLS = {}
_CPUS = os.cpu_count() or 1
CHUNK_BYTES = 1 << 20  # images per work item of a threaded batch: about this many bytes


def check_images(images):
    """Validate a batch (N×H×W×C or N×H×W array, or a list of H×W[×C] arrays) of uint8/float32.

    >>> check_images(np.zeros((2, 8, 8, 3), np.uint8)).shape
    (2, 8, 8, 3)
    """
    items = images if isinstance(images, (list, tuple)) else None
    if items is None:
        if not isinstance(images, np.ndarray) or images.ndim not in (3, 4):
            raise InputShapeError("images must be an N×H×W×C array or a list of H×W×C arrays")
        items = images
    for im in items:
        im = np.asarray(im)
        if im.dtype not in (np.uint8, np.float32) or im.ndim not in (2, 3):
            raise InputShapeError(f"each image must be H×W×C uint8 or float32, got "
                                  f"{im.dtype} {im.shape}: convert with .astype(np.uint8)")
    return images


def as_batch(images):
    """``(batch, single)``: one image (H×W×C with C in 1, 3, 4, or a 2-D H×W grey image) becomes
    a batch of one (``single`` True); batches (N×H×W×C, N×H×W grey, a list) pass through.
    Raises InputShapeError on a 3-D array that may be a C×H×W image or a batch of grey images.

    >>> as_batch(np.zeros((8, 8, 3), np.uint8))[0].shape
    (1, 8, 8, 3)
    """
    if not isinstance(images, np.ndarray) or images.ndim not in (2, 3):
        return images, False
    if images.ndim == 2 or images.shape[2] in (1, 3, 4):
        return images[None], True
    if images.shape[0] in (1, 3, 4):
        shown = "×".join(map(str, images.shape))
        raise InputShapeError(f"an array of shape {shown} is ambiguous: a channels-first image or a batch of "
                              f"{images.shape[0]} grey images; pass one image as H×W×C (a C×H×W one "
                              "transposed: a.transpose(1, 2, 0)) or grey images as N×H×W×1")
    return images, False


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


def select(items, idx):
    """Items ``idx`` of a batch: a fancy-indexed array, or a list of the chosen items.

    >>> select([np.zeros(1), np.ones(1), np.ones(2)], [0, 2])[1].shape
    (2,)
    """
    return items[idx] if isinstance(items, np.ndarray) else [items[i] for i in idx]


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


def _mix(x):
    """SplitMix64's finalizer on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class Streams:
    """Per-image random streams, drawn for a whole batch at once.

    Every draw is a hash (SplitMix64) of (seed, image index, draw number, element), so image
    ``i``'s parameters depend only on ``seed`` and ``start + i``: not on the batch size, the
    chunking or the thread. Offers the part of ``numpy.random.Generator`` that ops use, with the
    image axis first in every ``size``.

    >>> Streams(seed=7, indices=range(4)).random((4, 2)).shape
    (4, 2)
    """

    def __init__(self, seed=None, indices=(0,)):
        if seed is None:
            seed = int(np.random.SeedSequence().entropy) & (2**64 - 1)
        if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
            raise UsageError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        self.seed = int(seed)
        self.indices = np.asarray(indices, np.uint64)
        self._draw = 0
        with np.errstate(over="ignore"):
            self._keys = _mix(_mix(np.uint64(self.seed) ^ np.uint64(0x9E3779B97F4A7C15))
                              ^ self.indices)

    def split(self):
        """One single-image stream per image, each continuing from this stream's position."""
        parts = []
        for i in self.indices:
            one = Streams(self.seed, [int(i)])
            one._draw = self._draw
            parts.append(one)
        return parts

    def _bits(self, size):
        size = (len(self.indices),) if size is None else tuple(np.atleast_1d(size))
        if size[0] != len(self.indices):
            raise ValueError(f"draws must have one row per image ({len(self.indices)}), got {size}")
        per = int(np.prod(size[1:], dtype=np.int64))
        self._draw += 1
        with np.errstate(over="ignore"):
            ctr = (np.uint64(self._draw) << np.uint64(32)) + np.arange(per, dtype=np.uint64)
            bits = _mix(_mix(self._keys[:, None] ^ ctr[None, :]) + np.uint64(0x632BE59BD9B4E019))
        return bits.reshape(size)

    def random(self, size=None):
        """Uniform floats in [0, 1)."""
        return (self._bits(size) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)

    def integers(self, low, high, size=None, dtype=np.int64):
        """Uniform integers in [low, high)."""
        span = np.asarray(high, np.float64) - low
        return (low + np.floor(self.random(size) * span)).astype(dtype)

    def generators(self, size=None):
        """One ``numpy.random.Generator`` per image, for distributions hashing does not offer."""
        return [np.random.default_rng(int(b)) for b in self._bits(size).ravel()]

    def beta(self, a, b, size=None):
        """Beta(a, b) draws, one generator per image."""
        size = (len(self.indices),) if size is None else size
        return np.array([g.beta(a, b) for g in self.generators(size)]).reshape(size)


def parallel_apply(op, images, params, masks, threads):
    """``op.apply`` on contiguous chunks of the batch, ``threads`` at once (OpenCV and NumPy
    release the GIL), joined in order: the same result as one thread.

    Chunks hold about ``CHUNK_BYTES`` of images, several per thread, handed out as threads free
    up: a thread slowed by other processes takes fewer, and each chunk's arrays stay small
    (cache-resident, reused by the allocator instead of faulted in). Array outputs are copied
    into the joined batch by the thread that made them, so the join runs in parallel too."""
    n = len(images)
    threads = max(1, min(int(threads), n, _CPUS))
    per_image = max(1, np.asarray(images[0]).nbytes)
    chunks = min(n, max(threads, -(-n * per_image // CHUNK_BYTES)))
    bounds = np.linspace(0, n, chunks + 1).astype(int)
    pool = _POOLS.get(threads) or _POOLS.setdefault(threads, ThreadPoolExecutor(threads))
    joined, lock = [], threading.Lock()

    def chunk(k):
        sl = slice(bounds[k], bounds[k + 1])
        idx = np.arange(bounds[k], bounds[k + 1])
        part = op.apply(images[sl], take(params, idx), None if masks is None else masks[sl])
        if masks is None and isinstance(images, np.ndarray) and isinstance(part, np.ndarray):
            with lock:  # the first part to finish allocates the batch
                if not joined:
                    joined.append(np.empty((n,) + part.shape[1:], part.dtype))
            if joined[0].shape[1:] == part.shape[1:] and joined[0].dtype == part.dtype:
                joined[0][sl] = part
                return None
        return part

    parts = list(pool.map(chunk, range(chunks)))
    if masks is None:
        if all(p is None for p in parts):
            return joined[0]
        return _join([joined[0][bounds[k]:bounds[k + 1]] if p is None else p for k, p in enumerate(parts)], images)
    return _join([p[0] for p in parts], images), _join([p[1] for p in parts], masks)


def _join(parts, like):
    if isinstance(like, np.ndarray) and all(isinstance(p, np.ndarray) for p in parts) and \
            len({p.shape[1:] for p in parts}) == 1:
        return np.concatenate(parts)
    return [x for p in parts for x in p]


def assemble(shapes, dtype, like_array):
    """Preallocate the output: one array when the input was an array and shapes agree, else a list."""
    if like_array and len(set(shapes)) == 1:
        return np.empty((len(shapes),) + shapes[0], dtype)
    return [None] * len(shapes)


def store(out, i, result):
    """Put ``result`` into slot ``i`` unless the kernel already wrote it there."""
    if isinstance(out, list):
        out[i] = result
    elif not np.may_share_memory(out[i], result):
        out[i] = result.reshape(out[i].shape)


class Op:
    """Base of every augmentation op: ``sample`` draws parameters, ``apply`` is pure.

    Subclasses implement ``draw(rng, n, shape) -> dict`` and ``kernel(image, prm, out)``;
    geometric ops also ``matrix(prm, shape)``, ``out_shape(prm, shape)`` and ``mask_kernel``.

    >>> from engine.augment import HorizontalFlip
    >>> out = HorizontalFlip()(np.zeros((2, 8, 8, 3), np.uint8), seed=0)
    """

    geometric = False
    mixes = False  # batch-mixing ops (CutMix, MixUp) take labels and run outside Compose

    def __init__(self, p=1.0):
        self.p = as_range(p, "p", 0.0, 1.0)[0]

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"

    # --- randomness -----------------------------------------------------------------------
    def sample(self, rng, n, shape):
        """Draw parameters for ``n`` images of ``shape`` (H, W[, C]) from generator ``rng``."""
        on = rng.random(n) < self.p
        params = self.draw(rng, n, tuple(shape))
        params["on"] = on
        return params

    def draw(self, rng, n, shape):
        """The op's own parameters (``sample`` adds ``on``): a dict of arrays, one row per image."""
        return {}

    def sample_images(self, images, seed=None, start=0):
        """Parameters for a batch, image ``i`` drawn from the stream of ``(seed, start + i)``."""
        shapes = {np.shape(im) for im in images}
        streams = Streams(seed, np.arange(start, start + len(images)))
        if len(shapes) == 1:
            return self.sample(streams, len(images), shapes.pop())
        return concat([self.sample(s, 1, np.shape(im)) for s, im in zip(streams.split(), images)])

    # --- pixels -----------------------------------------------------------------------------
    def __call__(self, images, seed=None, masks=None, threads=1, start=0):
        """Augment a batch, or one H×W×C image (returned as one, with its H×W mask); returns the
        images, or (images, masks) when masks are given."""
        images, single = as_batch(images)
        check_images(images)
        if single and masks is not None:
            masks = np.asarray(masks)[None]
        params = self.sample_images(images, seed, start)
        out = self.apply(images, params, masks=masks, threads=threads)
        if not single:
            return out
        return (out[0][0], out[1][0]) if masks is not None else out[0]

    def apply(self, images, params, masks=None, threads=1):
        """Apply drawn ``params`` to a batch (and its masks); pure and thread-safe."""
        if threads > 1:
            return parallel_apply(self, images, params, masks, threads)
        out = self.apply_images(images, params)
        if masks is None:
            return out
        return out, self.apply_masks(masks, params)

    def apply_images(self, images, params):
        """The images alone under ``params``: the whole-batch fast path, else image by image."""
        fast = self.apply_batch(images, params)
        if fast is not None:
            return fast
        prms = rows(params)
        n = len(images)
        shapes = [self.out_shape(prm, shape_of(im)) + im.shape[2:] if prm["on"] else im.shape
                  for prm, im in zip(prms, images)]
        out = assemble(shapes, images[0].dtype, isinstance(images, np.ndarray))

        for i in range(n):
            if not prms[i]["on"]:
                store(out, i, images[i] if isinstance(out, np.ndarray) else images[i].copy())
                continue
            slot = out[i] if isinstance(out, np.ndarray) else None
            store(out, i, self.kernel(images[i], prms[i], slot))
        return out

    def apply_batch(self, images, params):
        """Optional whole-batch fast path; return None to fall back to the per-image loop."""
        return None

    def apply_masks(self, masks, params):
        """Move masks with the pixels (nearest neighbour); photometric ops leave them alone."""
        if not self.geometric:
            return masks
        outs = []
        for prm, m in zip(rows(params), masks):
            m = np.asarray(m)
            outs.append(_mask_call(self.mask_kernel, m, prm) if prm["on"] else m.copy())
        return _restack(outs, masks)

    def kernel(self, image, prm, out=None):
        """One image under one row of parameters ``prm``, written into ``out`` when given."""
        raise NotImplementedError

    # --- geometry ---------------------------------------------------------------------------
    def out_shape(self, prm, shape):
        """Output (H, W) of one image with parameters ``prm``."""
        return tuple(shape[:2])

    def matrix(self, prm, shape):
        """3×3 input→output pixel-coordinate matrix of one image (identity: pixels stay put)."""
        return np.eye(3)

    def matrices(self, params, shapes):
        """N×3×3 matrices mapping each input's pixel coordinates to its output's (identity when
        the op was not applied). ``shapes``: one (H, W) for all images, or one per image.

        A robustness check warps a map ``m`` of an augmented image back with
        ``cv2.warpPerspective(m, np.linalg.inv(M), (W_in, H_in))``.
        """
        n = count(params)
        shapes = _per_image(shapes, n)
        on = params["on"]
        return np.stack([self.matrix(row(params, i), shapes[i]) if on[i] else np.eye(3)
                         for i in range(n)])

    def out_shapes(self, params, shapes):
        """Output (H, W) per image."""
        n = count(params)
        shapes = _per_image(shapes, n)
        on = params["on"]
        return [self.out_shape(row(params, i), shapes[i]) if on[i] else tuple(shapes[i][:2])
                for i in range(n)]


def _per_image_ops(ops, owner):
    ops = list(ops)
    if any(op.mixes for op in ops):
        raise UsageError(f"{owner} takes per-image ops; run CutMix/MixUp after it, with labels")
    return ops


def _per_image(shapes, n):
    if len(shapes) and np.isscalar(shapes[0]):
        return [tuple(shapes)] * n
    return [tuple(s) for s in shapes]


_MASK_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def _mask_call(fn, mask, prm):
    """Run a geometric kernel on a label mask in a dtype OpenCV can warp, and back."""
    if mask.dtype == bool:
        return fn(mask.view(np.uint8), prm).view(bool)
    if mask.dtype in _MASK_DTYPES:
        return fn(mask, prm)
    return fn(mask.astype(np.float64), prm).astype(mask.dtype)


class Compose(Op):
    """Apply ``ops`` in order (each with its own probability), as one op.

    >>> from engine.augment import HorizontalFlip, Rotate
    >>> aug = Compose([HorizontalFlip(p=0.5), Rotate(angle=(-30, 30))])
    """

    def __init__(self, ops, p=1.0):
        super().__init__(p)
        self.ops = _per_image_ops(ops, "Compose")
        self.geometric = any(op.geometric for op in self.ops)

    def sample(self, rng, n, shape):
        params = {"on": rng.random(n) < self.p}
        shape = tuple(shape)
        for k, op in enumerate(self.ops):
            params[str(k)] = op.sample(rng, n, shape)
            shapes = set(op.out_shapes(params[str(k)], shape))
            if len(shapes) > 1:  # later ops see per-image shapes: continue image by image
                return self._sample_rest(rng, n, params, k + 1, shape)
            shape = shapes.pop() + shape[2:]
        return params

    def _sample_rest(self, rng, n, params, first, shape):
        singles = rng.split() if isinstance(rng, Streams) else [rng] * n
        parts = []
        for i, r in enumerate(singles):
            part = take(params, [i])
            s = shape
            for k in range(first, len(self.ops)):
                s = self.ops[k - 1].out_shapes(part[str(k - 1)], s)[0] + shape[2:]
                part[str(k)] = self.ops[k].sample(r, 1, s)
            parts.append(part)
        return concat(parts)

    def _children(self, params):
        on = params["on"]
        for k, op in enumerate(self.ops):
            child = dict(params[str(k)])
            child["on"] = child["on"] & on
            yield op, child

    def apply(self, images, params, masks=None, threads=1):
        if threads > 1:
            return parallel_apply(self, images, params, masks, threads)
        for op, child in self._children(params):
            res = op.apply(images, child, masks=masks)
            images, masks = res if masks is not None else (res, None)
        return images if masks is None else (images, masks)

    def apply_images(self, images, params):
        return self.apply(images, params)

    def apply_masks(self, masks, params):
        for op, child in self._children(params):
            masks = op.apply_masks(masks, child)
        return masks

    def matrices(self, params, shapes):
        n = count(params)
        shapes = _per_image(shapes, n)
        total = np.tile(np.eye(3), (n, 1, 1))
        for op, child in self._children(params):
            total = op.matrices(child, shapes) @ total
            shapes = op.out_shapes(child, shapes)
        return total

    def out_shapes(self, params, shapes):
        shapes = _per_image(shapes, count(params))
        for op, child in self._children(params):
            shapes = op.out_shapes(child, shapes)
        return shapes


class Choice(Op):
    """Base of ops that choose other ops per image (OneOf, the policies): their ``apply`` moves
    images and masks together, so masks alone run through it beside blank images."""

    def apply_images(self, images, params):
        return self.apply(images, params)

    def apply_masks(self, masks, params):
        images = [np.zeros(np.shape(m)[:2] + (1,), np.uint8) for m in masks]
        return self.apply(images, params, masks=masks)[1]


class OneOf(Choice):
    """Apply one of ``ops`` per image, chosen with probabilities ``weights`` (default equal).

    >>> from engine.augment import Brightness, Contrast
    >>> aug = OneOf([Brightness(factor=(0.8, 1.2)), Contrast(factor=(0.8, 1.2))])
    """

    def __init__(self, ops, weights=None, p=1.0):
        super().__init__(p)
        self.ops = _per_image_ops(ops, "OneOf")
        w = np.ones(len(self.ops)) if weights is None else np.asarray(weights, np.float64)
        if len(w) != len(self.ops) or np.any(w < 0) or w.sum() <= 0:
            raise UsageError("OneOf weights must be one non-negative number per op, not all zero")
        self.weights = w / w.sum()
        self.geometric = any(op.geometric for op in self.ops)

    def sample(self, rng, n, shape):
        params = {"on": rng.random(n) < self.p,
                  "choice": np.searchsorted(np.cumsum(self.weights), rng.random(n), side="right")}
        params["choice"] = np.minimum(params["choice"], len(self.ops) - 1)
        for k, op in enumerate(self.ops):
            params[str(k)] = op.sample(rng, n, shape)
        return params

    def _children(self, params):
        for k, op in enumerate(self.ops):
            child = dict(params[str(k)])
            child["on"] = child["on"] & params["on"] & (params["choice"] == k)
            yield op, child

    def apply(self, images, params, masks=None, threads=1):
        if threads > 1:
            return parallel_apply(self, images, params, masks, threads)
        n = len(images)
        outs, mouts = [None] * n, [None] * n
        passthrough = np.ones(n, bool)
        for op, child in self._children(params):
            idx = np.flatnonzero(child["on"])
            if len(idx) == 0:
                continue
            passthrough[idx] = False
            subm = None if masks is None else select(masks, idx)
            res = op.apply(select(images, idx), take(child, idx), masks=subm)
            res_img, res_mask = res if masks is not None else (res, None)
            for j, i in enumerate(idx):
                outs[i] = res_img[j]
                if masks is not None:
                    mouts[i] = res_mask[j]
        for i in np.flatnonzero(passthrough):
            outs[i] = images[i].copy()
            if masks is not None:
                mouts[i] = np.asarray(masks[i]).copy()
        images_out = _restack(outs, images)
        return images_out if masks is None else (images_out, _restack(mouts, masks))

    def matrices(self, params, shapes):
        n = count(params)
        total = np.tile(np.eye(3), (n, 1, 1))
        for op, child in self._children(params):
            sel = child["on"]
            total[sel] = op.matrices(child, shapes)[sel]
        return total

    def out_shapes(self, params, shapes):
        shapes = _per_image(shapes, count(params))
        res = list(shapes)
        for op, child in self._children(params):
            for i, s in enumerate(op.out_shapes(child, shapes)):
                if child["on"][i]:
                    res[i] = s
        return [tuple(s[:2]) for s in res]


def _restack(items, like):
    if isinstance(like, np.ndarray) and len({np.shape(x) for x in items}) == 1:
        return np.stack(items)
    return items
