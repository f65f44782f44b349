"""Batch plumbing: checking and shaping input batches, output slots, and running an op's
``apply`` over chunks of a batch (or a function over its images) on a thread pool.

>>> from engine.augment import HorizontalFlip
>>> parallel_apply(HorizontalFlip(), images, HorizontalFlip().sample_images(images, seed=0), None, 2).shape
(4, 96, 96, 3)
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from engine.augment.parameters import take
from engine.errors import InputShapeError

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


def select(items, idx):
    """Items ``idx`` of a batch: a fancy-indexed array, or a list of the chosen items.

    >>> select([np.zeros(1), np.ones(1), np.ones(2)], [0, 2])[1].shape
    (2,)
    """
    return items[idx] if isinstance(items, np.ndarray) else [items[i] for i in idx]


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


def restack(items, like):
    """Per-image results as one array when ``like`` was an array and their shapes agree, else a list.

    >>> restack([np.zeros((2, 2)), np.ones((2, 2))], np.zeros((2, 2, 2))).shape
    (2, 2, 2)
    """
    if isinstance(like, np.ndarray) and len({np.shape(x) for x in items}) == 1:
        return np.stack(items)
    return items


def for_each(fn, n, threads):
    """``fn(i)`` for ``i`` in ``range(n)``, ``threads`` at once: each thread takes the next index
    as it frees up (a thread slowed by other processes takes fewer; no thread idles while
    another still has a queue).

    >>> seen = []; for_each(seen.append, 5, 2); sorted(seen)
    [0, 1, 2, 3, 4]
    """
    threads = max(1, min(int(threads), n, _CPUS))
    indices = iter(range(n))  # shared: taking the next index is atomic under the GIL

    def run(_):
        for i in indices:
            fn(i)

    if threads == 1:
        run(0)
    else:
        list(_pool(threads).map(run, range(threads)))


def _pool(threads):
    return _POOLS.get(threads) or _POOLS.setdefault(threads, ThreadPoolExecutor(threads))


def parallel_apply(op, images, params, masks, threads):
    """``op.apply`` on contiguous chunks of the batch, ``threads`` at once (OpenCV and NumPy
    release the GIL), joined in order: the same result as one thread (see :func:`in_chunks`)."""
    def work(part, masks_part):
        return op.apply(images[part], take(params, np.arange(part.start, part.stop)), masks_part)

    return in_chunks(work, images, masks, threads)


def in_chunks(work, images, masks, threads):
    """``work(slice, masks of the slice)`` on contiguous chunks of the batch, ``threads`` at once,
    joined in order.

    Chunks hold about ``CHUNK_BYTES`` of images, several per thread, handed out as threads free
    up: a thread slowed by other processes takes fewer, and each chunk's arrays stay small
    (cache-resident, reused by the allocator instead of faulted in). Array outputs are copied
    into the joined batch by the thread that made them, so the join runs in parallel too."""
    n = len(images)
    threads = max(1, min(int(threads), n, _CPUS))
    per_image = max(1, np.asarray(images[0]).nbytes)
    chunks = min(n, max(threads, -(-n * per_image // CHUNK_BYTES)))
    bounds = np.linspace(0, n, chunks + 1).astype(int)
    pool = _pool(threads)
    joined, lock = [], threading.Lock()

    def chunk(k):
        sl = slice(int(bounds[k]), int(bounds[k + 1]))
        part = work(sl, None if masks is None else masks[sl])
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
