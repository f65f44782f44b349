"""Robustness of predictions and explanations under augmentation ops.

For every op each image is augmented and compared with its original on two counts:

- **top-1 agreement**: the augmented image gets the original's top-1 class;
- **CAM agreement**: IoU of the top-20 % regions of the original's map and of the augmented
  image's map warped back into the original frame (``kernels.unwarp``, through the op's exact
  input→output matrix), counted only over pixels valid in both frames: original pixels that the
  op keeps inside the augmented image. Both maps explain the original's top-1 class.

>>> report = robustness(Model("model.onnx"), images, "rotate:15,hflip")
>>> [(row["op"], 0 <= row["iou_mean"] <= 1) for row in report.summary()]
[('rotate:15', True), ('hflip', True)]
"""
import csv
import io
from dataclasses import dataclass

import numpy as np

from engine.analyze.regions import TOP_FRACTION, region_iou
from engine.augment.op import Op
from engine.augment.kernels import unwarp
from engine.augment.pipeline import parse_ops
from engine.data.images import as_rgb, visible_part
from engine.errors import UsageError
from engine.explain import cam
from engine.scale import runner, shards


@dataclass
class Report:
    """Per-op, per-image results (rows: ops in order, columns: images in order).

    ``original``: N top-1 classes of the originals; ``augmented``: O×N top-1 classes;
    ``iou``: O×N CAM IoU (NaN where no pixel is valid in both frames); ``valid``: O×N share of
    the original's pixels valid in both frames.
    """

    ops: list
    original: np.ndarray
    augmented: np.ndarray
    iou: np.ndarray
    valid: np.ndarray
    method: str
    fraction: float

    @property
    def agree(self):
        """O×N booleans: the augmented image keeps the original's top-1 class."""
        return self.augmented == self.original[None]

    def summary(self):
        """One dict per op: images, agreement (mean, std over images), IoU (mean, std over the
        images with a valid region), mean valid share.

        >>> list(robustness(model, images, "hflip").summary()[0])
        ['op', 'images', 'agreement', 'agreement_std', 'iou_mean', 'iou_std', 'valid']
        """
        rows = []
        for k, name in enumerate(self.ops):
            agree, iou = self.agree[k].astype(float), self.iou[k][~np.isnan(self.iou[k])]
            rows.append({"op": name, "images": int(len(agree)),
                         "agreement": float(agree.mean()), "agreement_std": float(agree.std()),
                         "iou_mean": float(iou.mean()) if len(iou) else None,
                         "iou_std": float(iou.std()) if len(iou) else None,
                         "valid": float(self.valid[k].mean())})
        return rows

    def per_image(self):
        """One dict per (op, image): classes, agreement, IoU (None when undefined), valid share."""
        return [{"op": name, "image": i, "original": int(self.original[i]),
                 "augmented": int(self.augmented[k, i]), "agree": bool(self.agree[k, i]),
                 "iou": None if np.isnan(self.iou[k, i]) else float(self.iou[k, i]),
                 "valid": float(self.valid[k, i])}
                for k, name in enumerate(self.ops) for i in range(len(self.original))]

    def to_dict(self):
        """JSON-ready: method, fraction, number of images and the per-op summary."""
        return {"method": self.method, "fraction": self.fraction, "images": int(len(self.original)),
                "ops": self.summary()}

    def to_csv(self):
        """The per-image rows as CSV text (empty IoU where undefined)."""
        text = io.StringIO()
        writer = csv.DictWriter(text, ["op", "image", "original", "augmented", "agree", "iou", "valid"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows({**r, "iou": "" if r["iou"] is None else r["iou"]} for r in self.per_image())
        return text.getvalue()


def named_ops(ops):
    """(name, op) pairs from a spec ``"rotate:15,hflip"`` (names: the spec's parts) or a list
    of ops (names: their repr). Mixing ops (CutMix, MixUp) are refused.

    >>> named_ops("rotate:15,hflip")[1]
    ('hflip', HorizontalFlip(p=1.0))
    """
    if isinstance(ops, str):
        pairs = [(part, parse_ops(part)[0]) for part in (p.strip() for p in ops.split(",")) if part]
        if not pairs:
            parse_ops(ops)  # raises the parser's "no ops given"
    else:
        pairs = [(repr(op), op) for op in ops]
        if not pairs or not all(isinstance(op, Op) for op in ops):
            raise UsageError("ops must be a spec like 'rotate:15,hflip' or a list of augment ops")
    mixing = [name for name, op in pairs if op.mixes]
    if mixing:
        raise UsageError(f"'{mixing[0]}' mixes images: robustness compares each image with its "
                         "own augmentation, so use per-image ops")
    return pairs


def warp_back(values, matrix, shape):
    """Carry a map of an augmented image back onto the original frame of ``shape`` (H, W).

    Returns (map, valid): ``valid`` marks the original pixels whose image under ``matrix`` (input
    → output pixel coordinates) lies inside the augmented map, so that bilinear sampling reads
    only the augmented frame; the rest left the frame (rotated-out corners, cropped-away parts).

    >>> shift = np.array([[1., 0, 2], [0, 1, 0], [0, 0, 1]])  # 2 px to the right
    >>> back, valid = warp_back(np.tile(np.arange(8.), (8, 1)), shift, (8, 8))
    >>> back[0], valid[0]
    (array([2., 3., 4., 5., 6., 7., 0., 0.], dtype=float32), array([ True,  True,  True,  True,  True,  True, False, False]))
    """
    h, w = shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.asarray(matrix, np.float64) @ np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)])
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = pts[0] / pts[2], pts[1] / pts[2]
    eps = 1e-6
    out_h, out_w = values.shape[:2]
    valid = (pts[2] > 0) & (x >= -eps) & (x <= out_w - 1 + eps) & (y >= -eps) & (y <= out_h - 1 + eps)
    back = unwarp(np.asarray(values, np.float32), np.asarray(matrix, np.float64), (h, w))
    return back, valid.reshape(h, w)


def robustness(model, images, ops, seed=0, method="gradcam", layer="auto", fraction=TOP_FRACTION, batch=32,
               progress=None, scale=None):
    """Top-1 and CAM agreement between ``images`` (paths or uint8 RGB arrays) and their
    augmentations by each of ``ops`` (a spec string or a list of ops).

    Image ``i`` is augmented with the parameters of stream ``(seed, i)``, so the result does not
    depend on ``batch``. ``method``/``layer``: the CAM method and layer (see ``explain.cam``).
    ``scale``: run in shards on Ray (:class:`engine.scale.Scale`); the report is the same.

    >>> report = robustness(model, images, "rotate:15,hflip,brightness:0.3", seed=0)
    >>> [(r["op"], r["images"]) for r in report.summary()]
    [('rotate:15', 4), ('hflip', 4), ('brightness:0.3', 4)]
    """
    pairs = named_ops(ops)
    if not 0 < fraction <= 1:
        raise UsageError(f"fraction must lie in (0, 1], got {fraction}")
    if int(batch) < 1:
        raise UsageError(f"batch must be at least 1, got {batch}")
    images = list(images)
    if not images:
        raise UsageError("no images given")
    job = RobustnessJob(images, pairs, seed, method, layer, fraction, int(batch))
    with runner(model, job, scale, job.batch, progress) as run:
        parts = list(run.map("compare", shards(len(images), run.shard_size), label="robustness"))
    original, augmented, iou, valid = (np.concatenate(arrays, axis=-1) for arrays in zip(*parts))
    return Report([name for name, _ in pairs], original, augmented, iou, valid, method, fraction)


@dataclass(frozen=True)
class RobustnessJob:
    """Per-image results of a shard of ``images`` (a step of :mod:`engine.scale`)."""

    images: list
    pairs: list
    seed: int
    method: str
    layer: str
    fraction: float
    batch: int

    def compare(self, model, first, stop):
        """(original N, augmented O×N, iou O×N, valid O×N) of images ``first .. stop-1``."""
        n, pairs = stop - first, self.pairs
        original = np.empty(n, np.int64)
        augmented = np.empty((len(pairs), n), np.int64)
        iou = np.full((len(pairs), n), np.nan)
        valid = np.zeros((len(pairs), n))
        for start in range(first, stop, self.batch):
            chunk = [visible_part(as_rgb(im), model.input_size, model.preprocessing.resize)  # what the model sees
                     for im in self.images[start:min(start + self.batch, stop)]]
            shapes = [im.shape[:2] for im in chunk]
            sl = slice(start - first, start - first + len(chunk))
            images_in = np.stack(chunk) if len(set(shapes)) == 1 else chunk
            maps, original[sl] = _explain(model, chunk, None, self.method, self.layer)
            for k, (_, op) in enumerate(pairs):
                params = op.sample_images(images_in, self.seed, start)
                out = op.apply(images_in, params)
                matrices = op.matrices(params, shapes)
                aug_maps, augmented[k, sl] = _explain(model, list(out), original[sl], self.method, self.layer)
                for i, (m, aug_map, matrix, shape) in enumerate(zip(maps, aug_maps, matrices, shapes)):
                    back, ok = warp_back(aug_map, matrix, shape)
                    iou[k, sl.start + i] = region_iou(m, back, ok, self.fraction)
                    valid[k, sl.start + i] = ok.mean()
        return original, augmented, iou, valid


def _explain(model, images, targets, method, layer):
    """CAM maps (one per image, at its own size) and top-1 classes; images are explained in
    groups of one size, for ``targets`` (one class per image) or their own top-1 class."""
    maps, top = [None] * len(images), np.empty(len(images), np.int64)
    shapes = [im.shape[:2] for im in images]
    for shape in dict.fromkeys(shapes):
        idx = [i for i, s in enumerate(shapes) if s == shape]
        exp = cam(model, np.stack([images[i] for i in idx]), method=method, layer=layer,
                  targets="top" if targets is None else [int(targets[i]) for i in idx],
                  batch=len(idx), progress=False)
        top[idx] = np.asarray(exp.scores).reshape(len(idx), -1).argmax(axis=1)
        for j, i in enumerate(idx):
            maps[i] = exp.maps[j]
    return maps, top
