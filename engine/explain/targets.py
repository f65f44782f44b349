"""What to explain, turned into seed arrays: rows of (image, seed) for Σ seed·output.

A target is one of

- ``"top"``: the top-1 class of each image (needs the model outputs);
- an ``int``: that class for every image;
- a sequence of ints, one per image;
- a sequence of sequences: several classes per image (one row per (image, class));
- an :class:`OutputMask`: Σ of the output over a mask (segmentation or other dense outputs).

>>> rows = resolve([3, [1, 2]], n=2, output_shape=(10,))
>>> rows.image, rows.labels        # (array([0, 1, 1]), array([3, 1, 2]))
"""
from dataclasses import dataclass

import numpy as np

from engine.errors import UsageError


@dataclass
class OutputMask:
    """Explain Σ output·mask; ``mask`` is shaped like one output row, or N rows (one per image).

    >>> OutputMask(seg_logits.argmax(1, keepdims=True) == 12)
    """

    mask: np.ndarray


@dataclass
class Rows:
    """Resolved targets: ``image`` R image indices, ``labels`` R class indices (−1 for masks),
    ``seeds`` R×output_shape float32 arrays."""

    image: np.ndarray
    labels: np.ndarray
    seeds: np.ndarray


def resolve(targets, n, output_shape, outputs=None):
    """Resolve ``targets`` for ``n`` images into :class:`Rows` for an output shaped ``output_shape``.

    ``outputs`` (N×output_shape) is needed only for ``"top"``.

    >>> resolve("top", 2, (10,), outputs=logits).labels
    """
    output_shape = tuple(output_shape)
    if isinstance(targets, OutputMask):
        mask = np.asarray(targets.mask, np.float32)
        if mask.shape == output_shape:
            mask = np.broadcast_to(mask, (n, *output_shape))
        if mask.shape != (n, *output_shape):
            raise UsageError(f"an output mask must be shaped {output_shape} or {(n, *output_shape)}, "
                             f"got {mask.shape}")
        return Rows(np.arange(n), np.full(n, -1), np.ascontiguousarray(mask))
    if len(output_shape) != 1:
        raise UsageError(f"class targets need a vector output, this one is shaped {output_shape}: "
                         "use an OutputMask")
    per_image = _per_image_classes(targets, n, outputs)
    image = np.array([i for i, classes in enumerate(per_image) for _ in classes], int)
    labels = np.array([c for classes in per_image for c in classes], int)
    n_classes = output_shape[0]
    if labels.size and (labels.min() < -n_classes or labels.max() >= n_classes):
        raise UsageError(f"target class out of range: the model has {n_classes} classes")
    seeds = np.zeros((len(labels), n_classes), np.float32)
    seeds[np.arange(len(labels)), labels] = 1
    return Rows(image, labels % n_classes, seeds)


def _per_image_classes(targets, n, outputs):
    if isinstance(targets, str):
        if targets != "top":
            raise UsageError(f"unknown target '{targets}': use 'top', a class index or a list of them")
        if outputs is None:
            raise UsageError("target 'top' needs the model outputs")
        return [[int(c)] for c in np.asarray(outputs).reshape(n, -1).argmax(axis=1)]
    if isinstance(targets, (int, np.integer)):
        return [[int(targets)]] * n
    targets = list(targets)
    if len(targets) != n:
        raise UsageError(f"got {len(targets)} targets for {n} images: give one per image")
    return [[int(c) for c in t] if np.ndim(t) else [int(t)] for t in targets]
