"""The op protocol: an op separates randomness from pixels::

    params = op.sample(rng, n, shape)      # dict of arrays, one row per image
    out = op.apply(images, params)         # pure: same params → same pixels

``op(images, seed=s)`` draws image ``i``'s parameters from its own counter-based stream keyed by
``(s, start + i)`` (:class:`~engine.augment.streams.Streams`), so a seed gives the same output for
any batch size, chunking or thread count. Every op also reports, per image, the 3×3 matrix that
maps input pixel coordinates to output pixel coordinates (:meth:`Op.matrices`; identity for
photometric ops), so a map computed on an augmented image can be warped back onto the original.
"""
import numpy as np

from engine.augment.batches import as_batch, assemble, check_images, parallel_apply, restack, store
from engine.augment.parameters import as_range, concat, count, per_image_shapes, row, rows, shape_of
from engine.augment.streams import Streams


class Op:
    """Base of every augmentation op: ``sample`` draws parameters, ``apply`` is pure.

    Subclasses implement ``draw(rng, n, shape) -> dict`` and ``kernel(image, prm, out)``;
    geometric ops also ``matrix(prm, shape)``, ``out_shape(prm, shape)`` and ``mask_kernel``.

    >>> from engine.augment import HorizontalFlip
    >>> out = HorizontalFlip()(np.zeros((2, 8, 8, 3), np.uint8), seed=0)
    """

    geometric = False
    mixes = False  # batch-mixing ops (CutMix, MixUp) take labels and run outside Compose
    shape_from_params = False  # out_shape reads its parameters (Rotate90's quarter turns)

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
        return restack(outs, masks)

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
        shapes = per_image_shapes(shapes, n)
        on = params["on"]
        return np.stack([self.matrix(row(params, i), shapes[i]) if on[i] else np.eye(3)
                         for i in range(n)])

    def out_shapes(self, params, shapes):
        """Output (H, W) per image (without a row of parameters per image unless
        ``shape_from_params``: Compose asks for them at every sampling)."""
        n = count(params)
        shapes = per_image_shapes(shapes, n)
        on = params["on"].tolist()
        if not self.shape_from_params:
            return [self.out_shape(None, s) if o else tuple(s[:2]) for s, o in zip(shapes, on)]
        return [self.out_shape(row(params, i), shapes[i]) if on[i] else tuple(shapes[i][:2])
                for i in range(n)]


_MASK_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def _mask_call(fn, mask, prm):
    """Run a geometric kernel on a label mask in a dtype OpenCV can warp, and back."""
    if mask.dtype == bool:
        return fn(mask.view(np.uint8), prm).view(bool)
    if mask.dtype in _MASK_DTYPES:
        return fn(mask, prm)
    return fn(mask.astype(np.float64), prm).astype(mask.dtype)
