"""Agreement of two variants of one network (another exporter, float vs quantized): their
outputs and their Grad-CAM explanations on the same images.

Both models explain the class model A ranks first, so a difference in the maps is a difference
of explanation, not of target.

>>> result = compare(model, Model("model.onnx"), images)   # a model against itself agrees fully
>>> result.summary()["cam_agreement"]
1.0
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.analyze.regions import TOP_FRACTION, region_iou
from engine.errors import UsageError
from engine.explain import cam

def pearson(a, b):
    """Pearson correlation of each pair of maps (N×H×W each); 1 where both maps are constant,
    0 where only one is (a flat map says nothing about where the evidence lies).

    >>> maps = np.random.default_rng(0).random((2, 4, 4))
    >>> pearson(maps, 2 * maps + 1)
    array([1., 1.])
    """
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    flat_a, flat_b = na <= 1e-12 * np.sqrt(a.shape[1]), nb <= 1e-12 * np.sqrt(b.shape[1])
    r = (a * b).sum(axis=1) / np.where(flat_a | flat_b, 1.0, na * nb)
    return np.where(flat_a & flat_b, 1.0, np.where(flat_a | flat_b, 0.0, np.clip(r, -1.0, 1.0)))


def _stats(values):
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
            "p10": float(np.percentile(v, 10)), "max": float(v.max())}


@dataclass
class Comparison:
    """Per-image results of :func:`compare` (arrays in image order) and the models' names."""

    model_a: str
    model_b: str
    names: list
    layers: tuple  # the Grad-CAM layer of each model
    top1_a: np.ndarray
    top1_b: np.ndarray
    abs_difference: np.ndarray  # per image, max |output_a − output_b|
    pearson: np.ndarray
    iou: np.ndarray
    maps_a: np.ndarray
    maps_b: np.ndarray
    fraction: float = TOP_FRACTION

    def worst(self, k=5):
        """Indices of the ``k`` images whose maps agree least (lowest Pearson, then IoU).

        >>> comparison = compare(model, Model("model.onnx"), images, names=["a", "b", "c", "d"])
        >>> len(comparison.worst(2))
        2
        """
        return np.lexsort((self.iou, self.pearson))[:k]

    def summary(self, worst=5):
        """JSON-ready figures: top1_agreement, max_abs_difference, cam_agreement (mean Pearson
        of the Grad-CAM maps), Pearson and top-20 % IoU statistics, the worst images.

        >>> compare(model, Model("model.onnx"), images).summary()["top1_agreement"]
        1.0
        """
        return {
            "model_a": self.model_a, "model_b": self.model_b, "images": len(self.names),
            "layers": list(self.layers),
            "top1_agreement": float(np.mean(self.top1_a == self.top1_b)),
            "max_abs_difference": float(self.abs_difference.max()),
            "mean_max_abs_difference": float(self.abs_difference.mean()),
            "cam_agreement": float(self.pearson.mean()),
            "cam_pearson": _stats(self.pearson),
            f"top{round(100 * self.fraction)}_iou": _stats(self.iou),
            "worst": [{"image": self.names[i], "pearson": float(self.pearson[i]), "iou": float(self.iou[i]),
                       "top1_a": int(self.top1_a[i]), "top1_b": int(self.top1_b[i])}
                      for i in self.worst(worst)],
        }


def compare(model_a, model_b, images, names=None, layer_a="auto", layer_b="auto", fraction=TOP_FRACTION,
            batch=16, progress=None):
    """Compare two :class:`engine.Model` variants on ``images`` (paths or uint8 RGB arrays).

    ``layer_a``/``layer_b``: the Grad-CAM layer of each ("auto": the model's default layer).
    ``fraction``: the share of pixels in the top region for the IoU.

    >>> compare(model, Model("model.onnx"), images).summary()["images"]
    4
    """
    images = list(images)
    if not images:
        raise UsageError("no images to compare on: give --images DIR or --synth N")
    if not 0 < fraction <= 1:
        raise UsageError(f"the top fraction lies in (0, 1], got {fraction}")
    names = list(names) if names is not None else [str(i) for i in range(len(images))]
    exp_a = cam(model_a, images, method="gradcam", layer=layer_a, batch=batch, progress=progress)
    exp_b = cam(model_b, images, method="gradcam", layer=layer_b, targets=list(exp_a.targets), batch=batch,
                progress=progress)
    scores_a, scores_b = np.asarray(exp_a.scores), np.asarray(exp_b.scores)
    if scores_a.shape != scores_b.shape:
        raise UsageError(f"the models' outputs differ in shape ({scores_a.shape[1:]} vs {scores_b.shape[1:]}): "
                         "compare two variants of one network")
    flat_a, flat_b = scores_a.reshape(len(scores_a), -1), scores_b.reshape(len(scores_b), -1)
    return Comparison(
        str(model_a.path), str(model_b.path), names, (exp_a.layers[0], exp_b.layers[0]),
        flat_a.argmax(axis=1), flat_b.argmax(axis=1),
        np.abs(flat_a.astype(np.float64) - flat_b).max(axis=1),
        pearson(exp_a.maps, exp_b.maps), region_iou(exp_a.maps, exp_b.maps, fraction=fraction),
        exp_a.maps, exp_b.maps, fraction,
    )


def report_blocks(result, images, class_names=None, worst=5, width=128):
    """HTML blocks (``engine.viz.report``) for a comparison: the figures, then the ``worst`` images
    whose two Grad-CAM maps agree least, each shown beside both models' maps over it.

    >>> from engine.viz.report import section, write_report
    >>> blocks = report_blocks(compare(model, Model("model.onnx"), images), images)
    >>> write_report("cmp/index.html", "compare", [section("Agreement", blocks)])
    'cmp/index.html'
    """
    from engine.viz.overlay import overlay
    from engine.viz.report import gallery, heading, paragraph, table

    s = result.summary(worst)
    iou_key = f"top{round(100 * result.fraction)}_iou"
    name = lambda c: class_names[c] if class_names and 0 <= c < len(class_names) else f"#{c}"  # noqa: E731
    blocks = [
        paragraph(f"A: {s['model_a']} (Grad-CAM at {s['layers'][0]})"),
        paragraph(f"B: {s['model_b']} (Grad-CAM at {s['layers'][1]})"),
        table([["top1_agreement", s["top1_agreement"]], ["max_abs_difference", s["max_abs_difference"]],
               ["mean of per-image max abs difference", s["mean_max_abs_difference"]],
               ["cam_agreement (mean Pearson of Grad-CAM maps)", s["cam_agreement"]],
               [f"mean IoU of the top {round(100 * result.fraction)} % regions", s[iou_key]["mean"]],
               ["images", s["images"]]], ["figure", "value"]),
        table([[k, *s[k].values()] for k in ("cam_pearson", iou_key)], ["per image", *s["cam_pearson"]]),
        heading(f"The {len(s['worst'])} images whose maps agree least"),
    ]
    for i in result.worst(worst):
        blocks.append(gallery([
            (images[i], result.names[i]),
            (overlay(images[i], result.maps_a[i]), f"A: {name(int(result.top1_a[i]))}"),
            (overlay(images[i], result.maps_b[i]), f"B: {name(int(result.top1_b[i]))}"),
        ], width=width))
        blocks.append(paragraph(f"Pearson {result.pearson[i]:.3f}, top-region IoU {result.iou[i]:.3f}, "
                                f"max abs output difference {result.abs_difference[i]:.3g}"))
    return blocks


def write_comparison(result, images, out, class_names=None, worst=5):
    """Write ``out/compare.json`` (the summary) and ``out/index.html``; returns the page's path.

    >>> write_comparison(compare(model, Model("model.onnx"), images), images, "cmp-out", model.labels)
    PosixPath('cmp-out/index.html')
    """
    from engine.data.files import output_set, write_json
    from engine.viz.report import section, write_report

    out = Path(out)
    title = f"onnxlens compare: {Path(result.model_a).name} vs {Path(result.model_b).name}"
    with output_set(out, ["compare.json", "index.html"]) as stage:
        write_json(stage / "compare.json", result.summary(worst))
        blocks = report_blocks(result, images, class_names, worst)
        write_report(stage / "index.html", title, [section("Agreement", blocks)])
    return out / "index.html"
