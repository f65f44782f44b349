"""Composition: ops applied in order (Compose), one op chosen per image (OneOf), and the base
of ops that choose other ops per image (Choice; the policies build on it).

>>> from engine.augment import Brightness, HorizontalFlip
>>> Compose([HorizontalFlip(), OneOf([Brightness(factor=1.2)])])(images, seed=0).shape
(4, 96, 96, 3)
"""
import numpy as np

from engine.augment.batches import for_each, parallel_apply, restack, select, store
from engine.augment.op import Op
from engine.augment.parameters import concat, count, per_image_shapes, row, take
from engine.augment.streams import Streams
from engine.errors import UsageError


def _per_image_ops(ops, owner):
    ops = list(ops)
    if any(op.mixes for op in ops):
        raise UsageError(f"{owner} takes per-image ops; run CutMix/MixUp after it, with labels")
    return ops


class Compose(Op):
    """Apply ``ops`` in order (each with its own probability), as one op. An array batch whose
    ops all have per-image kernels runs image by image through the whole chain
    (:meth:`apply_chained`), otherwise op by op over the batch.

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
        chained = None if masks is not None else self.apply_chained(images, params, threads)
        if chained is not None:
            return chained
        if threads > 1:
            return parallel_apply(self, images, params, masks, threads)
        for op, child in self._children(params):
            res = op.apply(images, child, masks=masks)
            images, masks = res if masks is not None else (res, None)
        return images if masks is None else (images, masks)

    def apply_chained(self, images, params, threads=1):
        """Each image through every op in turn while it sits in cache (op after op, the batch
        would stream from memory once per op), the last op writing into the output batch, images
        handed out ``threads`` at once; None unless the batch is an array of one output shape
        and every op has a per-image kernel (whose pixels the batch fast paths match)."""
        if not (isinstance(images, np.ndarray) and len(images) and
                all(type(op).kernel is not Op.kernel for op in self.ops)):
            return None
        shapes = set(self.out_shapes(params, images.shape[1:]))
        if len(shapes) != 1:
            return None
        out = np.empty((len(images),) + shapes.pop() + images.shape[3:], images.dtype)
        steps = [(op.kernel, child, child["on"].tolist()) for op, child in self._children(params)]
        channels, dtype = images.shape[3:], images.dtype

        def one(i):  # parameter rows made here, by the threads, not up front
            chain = [(kernel, row(child, i)) for kernel, child, on in steps if on[i]]
            image = images[i]
            for kernel, prm in chain[:-1]:  # each result as the op-by-op batch would hold it
                image = kernel(image, prm)
                image = image.reshape(image.shape[:2] + channels).astype(dtype, copy=False)
            if chain:
                image = chain[-1][0](image, chain[-1][1], out[i])
            store(out, i, image)

        for_each(one, len(images), threads)
        return out

    def apply_images(self, images, params):
        return self.apply(images, params)

    def apply_masks(self, masks, params):
        for op, child in self._children(params):
            masks = op.apply_masks(masks, child)
        return masks

    def matrices(self, params, shapes):
        n = count(params)
        shapes = per_image_shapes(shapes, n)
        total = np.tile(np.eye(3), (n, 1, 1))
        for op, child in self._children(params):
            total = op.matrices(child, shapes) @ total
            shapes = op.out_shapes(child, shapes)
        return total

    def out_shapes(self, params, shapes):
        shapes = per_image_shapes(shapes, count(params))
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
        images_out = restack(outs, images)
        return images_out if masks is None else (images_out, restack(mouts, masks))

    def matrices(self, params, shapes):
        n = count(params)
        total = np.tile(np.eye(3), (n, 1, 1))
        for op, child in self._children(params):
            sel = child["on"]
            total[sel] = op.matrices(child, shapes)[sel]
        return total

    def out_shapes(self, params, shapes):
        shapes = per_image_shapes(shapes, count(params))
        res = list(shapes)
        for op, child in self._children(params):
            for i, s in enumerate(op.out_shapes(child, shapes)):
                if child["on"][i]:
                    res[i] = s
        return [tuple(s[:2]) for s in res]
