"""Faithfulness of a CAM method on a labelled set with object masks, beside random and centre maps.

>>> report = evaluate(model, scene.images, scene.masks, labels=scene.labels, method="gradcam")
>>> report["gradcam"]["pointing"], report["random"]["deletion"]
"""
import numpy as np

from engine.data.labels import probabilities
from engine.data.images import as_rgb, image_list
from engine.errors import UsageError
from engine.explain import metrics
from engine.explain.explainers import cam, saliency
from engine.explain.methods import METHODS
from engine.progress import Progress


def evaluate(model, images, masks, labels=None, method="gradcam", layer="auto", steps=16, batch=32,
             tolerance=None, rng=0, progress=None):
    """Pointing game (hit rate), deletion AUC (lower is better) and insertion AUC (higher is
    better) of ``method``'s maps, and of a random and a centre map on the same images.

    ``labels``: the classes to explain (ground truth); the top-1 class when None. ``tolerance``
    of the pointing game: see :func:`metrics.pointing_game`. Deletion and
    insertion score the softmax probability of that class while ``steps`` equal shares of the
    pixels are removed (zeros in model space) or inserted (into a blurred copy).

    >>> evaluate(model, images, masks, labels, method="gradcam++", steps=16)["gradcam++"]
    """
    masks = np.asarray(masks, bool)
    n = len(masks)
    images = image_list(images)
    if len(images) != n or (labels is not None and len(labels) != n):
        raise UsageError(f"got {len(images)} images, {n} masks and {len(labels) if labels is not None else n} "
                         "labels: give one mask and one label per image")
    targets = "top" if labels is None else [int(c) for c in labels]
    images = [as_rgb(image) for image in images]  # read once for the maps and the perturbed inputs
    if method in METHODS:
        exp = cam(model, images, method=method, layer=layer, targets=targets, batch=batch, progress=progress)
    else:
        exp = saliency(model, images, method=method, targets=targets, batch=batch, progress=progress)
    x = model.preprocess(images)
    classes = exp.targets

    def score(xb, rows):
        return probabilities(model.run(xb).outputs[0])[np.arange(len(xb)), classes[rows]]

    layout = model.input.layout
    candidates = {method: exp.maps,
                  "random": metrics.baseline_maps("random", n, masks.shape[1:], rng=rng),
                  "centre": metrics.baseline_maps("centre", n, masks.shape[1:])}
    report = {"images": n, "method": method, "layers": exp.layers, "steps": steps,
              "tolerance": metrics.default_tolerance(masks.shape[1:]) if tolerance is None else tolerance}
    with Progress(total=3 * n, label="evaluate", enabled=progress) as bar:
        for name, maps in candidates.items():
            hits = metrics.pointing_game(maps, masks, tolerance=tolerance)
            deletion, insertion = [], []
            for start in range(0, n, batch):
                part = slice(start, start + batch)
                rows_score = _offset(score, start)
                deletion.append(metrics.deletion_auc(rows_score, x[part], maps[part], steps=steps,
                                                     layout=layout, batch=steps + 1))
                insertion.append(metrics.insertion_auc(rows_score, x[part], maps[part], steps=steps,
                                                       layout=layout, batch=steps + 1))
                bar.update(len(x[part]))
            report[name] = {"pointing": float(hits.mean()),
                            "deletion": float(np.concatenate(deletion).mean()),
                            "insertion": float(np.concatenate(insertion).mean())}
    return report


def _offset(score, start):
    return lambda xb, rows: score(xb, rows + start)
