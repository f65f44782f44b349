"""The batch a model takes: any (a symbolic batch dim), any after freeing (a static batch made
symbolic by :func:`engine.graph.normalize.free_batch` and checked here by running it), or only its
own (a static batch the graph does not let go of: run in chunks of that size, see :func:`in_chunks`).

>>> static = onnx.load("model.onnx"); static.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
>>> plan = batch_plan(static)
>>> plan.chunk is None, plan.freed      # the static batch 1 was freed and verified
(True, True)
"""
from dataclasses import dataclass

import numpy as np
import onnx

from engine.errors import OnnxlensError
from engine.graph.normalize import free_batch
from engine.graph.shapes import image_input
from engine.runtime.session import LOAD_ERRORS, create_session

CHECK_BATCHES = (3, 1)  # the freed model must match the original, run in chunks, at these batches
DEFAULT_CHECK_SIZE = 224  # spatial size of the check when the input's is dynamic and none is given


@dataclass(frozen=True)
class BatchPlan:
    """``proto``: the model to run (the freed one, or the original); ``chunk``: the fixed batch
    to run it in chunks of, or None for any batch; ``freed``: whether the batch was freed."""

    proto: onnx.ModelProto
    chunk: int | None = None
    freed: bool = False


def batch_plan(proto, size=None, provider="auto", threads=None):
    """How to run ``proto`` at any batch. A static batch is freed when the freed model gives the
    original's outputs (run in chunks of its batch) at batches 3 and 1 on random inputs at
    ``size`` (H, W; the declared size, else 224); otherwise the plan runs it in chunks.

    >>> plan = batch_plan(onnx.load("model.onnx"))     # a symbolic batch already
    >>> plan.chunk is None, plan.freed
    (True, False)
    """
    image = image_input(proto)
    if image.batch is None or image.batch < 1:
        return BatchPlan(proto)
    if _other_inputs(proto, image.name):  # the check cannot feed them: keep the batch, run in chunks
        return BatchPlan(proto, chunk=image.batch)
    freed = free_batch(proto)
    try:
        if _agrees(proto, freed, image, size, provider, threads):
            return BatchPlan(freed, freed=True)
    except (OnnxlensError, *LOAD_ERRORS, ValueError, RuntimeError):
        pass  # the freed graph does not even run at another batch
    return BatchPlan(proto, chunk=image.batch)


def in_chunks(fn, size, *arrays, axes=None):
    """``fn(*arrays)`` computed on consecutive blocks of ``size`` rows (the last one padded with
    zero rows), results joined along their batch axis and trimmed to the rows given. ``axes``:
    each array's batch axis (default 0). ``fn`` returns an array or a list of arrays. A result's
    batch axis is axis 0 when its length there is ``size``, else the first axis of that length
    (T×N×C sequence outputs); a result with none is joined along axis 0 untrimmed.

    >>> in_chunks(lambda x: x * 2, 2, np.arange(5)).tolist()
    [0, 2, 4, 6, 8]
    """
    axes = axes or [0] * len(arrays)
    total = arrays[0].shape[axes[0]]
    parts, single = [], False
    for start in range(0, max(total, 1), size):  # no rows: one padded block, trimmed to none
        block = [_rows(np.asarray(a), axis, start, size) for a, axis in zip(arrays, axes)]
        rows = min(size, total - start)
        result = fn(*block)
        single = not isinstance(result, (list, tuple))
        parts.append([_trimmed(np.asarray(r), size, rows) for r in ([result] if single else result)])
    joined = [np.concatenate([r for r, _ in column], axis=column[0][1]) for column in zip(*parts)]
    return joined[0] if single else joined


def _rows(array, axis, start, size):
    """Rows ``start:start + size`` of ``array`` along ``axis`` (a view), padded with zeros to ``size``."""
    block = array[(slice(None),) * axis + (slice(start, start + size),)]
    missing = size - block.shape[axis]
    if missing:
        pad = list(block.shape)
        pad[axis] = missing
        block = np.concatenate([block, np.zeros(pad, block.dtype)], axis=axis)
    return block


def _trimmed(result, size, rows):
    """(``result`` cut to ``rows`` along its batch axis, that axis) — see :func:`in_chunks`."""
    axes = [a for a, d in enumerate(result.shape) if d == size]
    if not axes:
        return result, 0
    axis = 0 if 0 in axes else axes[0]
    return (result if rows == size else result[(slice(None),) * axis + (slice(0, rows),)]), axis


def _other_inputs(proto, image):
    weights = {t.name for t in proto.graph.initializer}
    return any(vi.name not in weights and vi.name != image for vi in proto.graph.input)


def _random_batch(image, size, batch):
    h, w = (int(s) if s else DEFAULT_CHECK_SIZE for s in (size or image.size))
    shape = (batch, image.channels, h, w) if image.layout == "NCHW" else (batch, h, w, image.channels)
    rng = np.random.default_rng(0)
    if image.dtype.kind == "f":
        return rng.standard_normal(shape).astype(image.dtype)
    return rng.integers(0, 256, shape).astype(image.dtype)


def _agrees(original, freed, image, size, provider, threads):
    fixed = create_session(original, provider=provider, threads=threads)
    free = create_session(freed, provider=provider, threads=threads)
    x = _random_batch(image, size, max(CHECK_BATCHES))
    expected = in_chunks(lambda block: fixed.run(None, {image.name: block}), image.batch, x)
    for batch in CHECK_BATCHES:
        got = free.run(None, {image.name: x[:batch]})
        for want, have in zip(expected, got):
            want = np.asarray(want)[:batch]
            if want.shape != np.shape(have) or not np.allclose(have, want, rtol=1e-3,
                                                               atol=1e-4 * max(1.0, float(np.abs(want).max(initial=0)))):
                return False
    return True
