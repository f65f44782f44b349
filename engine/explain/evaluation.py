"""Faithfulness of a CAM method beside random and centre maps: the pointing game where object masks
exist, deletion and insertion with or without them.

>>> from engine.data.synth import generate
>>> scene = generate(4, seed=0)
>>> report = evaluate(model, scene.images, scene.masks, labels=scene.labels, method="gradcam", steps=4)
>>> report["images"], sorted(report["gradcam"]), sorted(report["random"])
(4, ['deletion', 'insertion', 'pointing'], ['deletion', 'insertion', 'pointing'])
"""
from dataclasses import dataclass

import numpy as np

from engine.data.labels import probabilities
from engine.data.images import as_rgb, image_list, visible_part
from engine.errors import UsageError
from engine.explain import metrics
from engine.explain.explainers import cam, saliency
from engine.explain.methods import METHODS
from engine.scale import runner, shards

METRICS = ("pointing", "deletion", "insertion")


def evaluate(model, images, masks, labels=None, method="gradcam", layer="auto", steps=16, batch=32,
             tolerance=None, rng=0, progress=None, scale=None, curves=False):
    """Pointing game (hit rate), deletion AUC (lower is better) and insertion AUC (higher is
    better) of ``method``'s maps, and of a random and a centre map on the same images.

    ``masks``: N×H×W object masks, or None (no pointing game: its value is None). ``curves``:
    also give each map's mean ``deletion_curve`` and ``insertion_curve`` (``steps`` + 1 scores).
    ``labels``: the classes to explain (ground truth); the top-1 class when None. ``tolerance``
    of the pointing game: see :func:`metrics.pointing_game`. Deletion and
    insertion score the softmax probability of that class while ``steps`` equal shares of the
    pixels are removed (zeros in model space) or inserted (into a blurred copy). ``scale``: run
    in shards on Ray (:class:`engine.scale.Scale`); the report is the same.

    >>> evaluate(model, images[:2], None, method="gradcam++", steps=4)["gradcam++"]["pointing"] is None   # no masks
    True
    """
    images = image_list(images)
    masks = None if masks is None else np.asarray(masks, bool)
    n = len(images) if masks is None else len(masks)
    if len(images) != n or (labels is not None and len(labels) != n):
        raise UsageError(f"got {len(images)} images, {n} masks and {len(labels) if labels is not None else n} "
                         "labels: give one mask and one label per image")
    job = EvaluateJob(images, masks, None if labels is None else [int(c) for c in labels], method, layer, steps,
                      int(batch), tolerance, rng)
    seen = None  # the masks as the model sees them (shorter-side+center-crop: their centre)
    if masks is not None:
        seen = visible_part(masks[0], model.input_size, model.preprocessing.resize).shape if n else masks.shape[1:]
    report = {"images": n, "method": method, "layers": None, "steps": steps,
              "tolerance": None if masks is None else metrics.default_tolerance(seen) if tolerance is None
              else tolerance}
    scores = {name: {metric: [] for metric in METRICS} for name in (method, "random", "centre")}
    with runner(model, job, scale, job.batch, progress) as run:
        for layers, part in run.map("scores", shards(n, run.shard_size), label="evaluate"):
            report["layers"] = layers
            for name, values in part.items():
                for metric, v in values.items():
                    scores[name][metric].append(v)
    for name, values in scores.items():
        report[name] = {"pointing": None if masks is None else float(np.concatenate(values["pointing"]).mean())}
        for metric in ("deletion", "insertion"):
            per_image = np.concatenate(values[metric])
            report[name][metric] = float(metrics.auc(per_image).mean())
            if curves:
                report[name][f"{metric}_curve"] = per_image.mean(axis=0).tolist()
    return report


@dataclass(frozen=True)
class EvaluateJob:
    """Per-image pointing hits and deletion/insertion curves of a shard (a step of :mod:`engine.scale`)."""

    images: list
    masks: np.ndarray | None
    labels: list | None
    method: str
    layer: str
    steps: int
    batch: int
    tolerance: int | None
    rng: object

    def scores(self, model, first, stop):
        """(the explained layers, {map name: {metric: per-image values}}) for images ``first .. stop-1``."""
        # read once for maps and perturbed inputs; images and masks cut to the part the model sees
        seen = lambda a: visible_part(a, model.input_size, model.preprocessing.resize)  # noqa: E731
        images = [seen(as_rgb(image)) for image in self.images[first:stop]]
        masks = None if self.masks is None else np.stack([seen(m) for m in self.masks[first:stop]])
        n = stop - first
        targets = "top" if self.labels is None else self.labels[first:stop]
        if self.method in METHODS:
            exp = cam(model, images, method=self.method, layer=self.layer, targets=targets, batch=self.batch,
                      progress=False)
        else:
            exp = saliency(model, images, method=self.method, targets=targets, batch=self.batch, progress=False)
        x = model.preprocess(images)
        classes = exp.targets

        def score(xb, rows):
            return probabilities(model.run(xb).outputs[0])[np.arange(len(xb)), classes[rows]]

        layout = model.input.layout
        size = exp.maps.shape[1:] if masks is None else masks.shape[1:]
        candidates = {self.method: exp.maps,
                      "random": metrics.baseline_maps("random", n, size, rng=self.rng, first=first),
                      "centre": metrics.baseline_maps("centre", n, size)}
        part = {}
        for name, maps in candidates.items():
            deletion, insertion = [], []
            for start in range(0, n, self.batch):
                rows = slice(start, start + self.batch)
                rows_score = _offset(score, start)
                deletion.append(metrics.deletion_curve(rows_score, x[rows], maps[rows], steps=self.steps,
                                                       layout=layout, batch=self.steps + 1))
                insertion.append(metrics.insertion_curve(rows_score, x[rows], maps[rows], steps=self.steps,
                                                         layout=layout, batch=self.steps + 1))
            hits = (np.zeros(0) if self.masks is None
                    else metrics.pointing_game(maps, masks, tolerance=self.tolerance).astype(float))
            part[name] = {"pointing": hits, "deletion": np.concatenate(deletion),
                          "insertion": np.concatenate(insertion)}
        return exp.layers, part


def _offset(score, start):
    return lambda xb, rows: score(xb, rows + start)
