"""An explanation written out: overlays, the arrays and a JSON summary a person or a script reads."""
import glob
import json
from pathlib import Path

import numpy as np

from engine.data.files import output_set, write_image, write_json, write_npz
from engine.data.images import as_rgb, visible_part
from engine.data.labels import check_labels, probabilities
from engine.viz.overlay import draw_box, overlay


def write_explanation(exp, model, images, out, name):
    """Write an explanation of ``images`` (paths or arrays) by ``model``: one overlay PNG per row
    (over the part of the image the model sees, with the explained box, if any), ``out/<name>.npz``
    and ``out/summary.json`` (replacing, as a whole, the files of an earlier explanation there);
    returns the summary, one dict per row (image, overlay, method, layers, output, empty, predicted,
    target).

    >>> from engine.explain import cam
    >>> write_explanation(cam(model, ["cat.png"]), model, ["cat.png"], "out", "cams")[0]["overlay"]
    'out/cat_gradcam.png'
    """
    out = Path(out)
    with output_set(out, ["summary.json", f"{name}.npz", *_listed_overlays(out / "summary.json")]) as stage:
        return _write_explanation(exp, model, images, out, name, stage)


def _listed_overlays(summary):
    """File names of the overlays an earlier ``summary.json`` lists (that run's files, replaced now)."""
    try:
        rows = json.loads(summary.read_text(encoding="utf-8"))
        return [glob.escape(Path(row["overlay"]).name) for row in rows]
    except (OSError, ValueError, TypeError, KeyError):
        return []


def _write_explanation(exp, model, images, out, name, stage):
    labels = model.labels
    summary, counts = [], {}
    for row, (i, target) in enumerate(zip(exp.image, exp.targets)):
        rgb = visible_part(as_rgb(images[i]), model.input_size, model.preprocessing.resize)  # what the map covers
        stem = _stem(images[i], i)
        counts[stem] = counts.get(stem, 0) + 1
        suffix = f"_{target}" if (exp.image == i).sum() > 1 else ""
        png = out / f"{stem}{'' if counts[stem] == 1 else '_' + str(counts[stem])}_{exp.method}{suffix}.png"
        detail = dict(exp.details[row]) if exp.details else {}
        picture = overlay(rgb, exp.maps[row])
        if "box" in detail:
            size = model.input_size or rgb.shape[:2]
            sy, sx = rgb.shape[0] / size[0], rgb.shape[1] / size[1]
            c = detail["class"]
            caption = f"{labels[c] if labels and c < len(labels) else '#' + str(c)} {detail['score']:.2f}"
            picture = draw_box(picture, np.multiply(detail["box"], [sx, sy, sx, sy]), caption)
        write_image(stage / png.name, picture)
        path = str(images[i]) if isinstance(images[i], (str, Path)) else None
        item = {"image": path, "overlay": str(png), "method": exp.method, "layers": exp.layers,
                "output": exp.output, "empty": bool(exp.empty[row]) if exp.empty is not None else False,
                "predicted": None, "target": {"index": int(target), "mask": True}}
        if exp.output.get("kind", "classifier") == "classifier" and "mask" not in detail:
            scores = exp.scores[i]
            check_labels(labels, scores.size)
            probs = probabilities(scores[None])[0]
            top = int(scores.argmax())
            item["predicted"] = {"index": top, "label": labels[top] if labels else None,
                                 "probability": float(probs[top])}
            item["target"] = {"index": int(target), "label": labels[target] if labels and target >= 0 else None,
                              "probability": float(probs[target]) if target >= 0 else None,
                              "score": float(scores[target]) if target >= 0 else None}
        elif "mask" not in detail:
            label = labels[target] if labels and 0 <= target < len(labels) else None
            item["target"] = {"index": int(target), "label": label, **detail}
        summary.append(item)
    write_npz(stage / f"{name}.npz", **exp.arrays())
    write_json(stage / "summary.json", summary)
    return summary


def _stem(image, i):
    """The file-name stem of an image path; ``image<i>`` for an array."""
    return Path(image).stem if isinstance(image, (str, Path)) else f"image{i}"
