"""The sections of the audit report: one function per section, ``(ctx) -> list of blocks``.

A section that does not apply raises :class:`NotApplicable` with the reason, which the report
shows in its place. Blocks are ``engine.viz.report`` markup or plain text (escaped).
"""
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from engine.analyze.dissection import dissect, unit_caption, unit_images
from engine.analyze.embeddings import embed
from engine.analyze.filters import filters_caption, filters_picture
from engine.analyze.neighbors import nearest, purity
from engine.analyze.patches import mine, patch_tiles
from engine.analyze.projection import project
from engine.analyze.robustness import robustness as check_robustness
from engine.analyze.sources import Source
from engine.api import Model
from engine.data.broden import read_concepts, write_concepts
from engine.data.synth import CLASSES as SHAPES_CLASSES
from engine.errors import DatasetError, OnnxlensError
from engine.explain import cam, class_visualization, evaluate
from engine.explain import attribution
from engine.explain import methods as cam_methods
from engine.explain import saliency as explain_saliency
from engine.explain.metrics import pointing_game
from engine.viz.overlay import colorize, overlay
from engine.viz import plots
from engine.viz.report import gallery, heading, image, note, number_format, paragraph, rows_of_images, table

CAM_METHODS = tuple(cam_methods.METHODS)
SALIENCY_METHODS = (*attribution.METHODS, "smoothgrad")


class NotApplicable(Exception):
    """Raised by a section that does not apply to this model or these images; says why."""


class SectionFailed(OnnxlensError):
    """Raised by a section whose every part failed on this model; says why (shown as "not available")."""


@dataclass(frozen=True)
class Options:
    """Sizes of the audit's sections (kept small so that the whole audit takes minutes on a CPU).

    ``gallery``: images in the CAM and saliency galleries; ``classes``/``classviz_steps``: class
    visualizations (top predicted classes, gradient-ascent steps); ``embed``: images in the t-SNE
    plot and the neighbour search; ``queries``/``neighbours``: neighbour examples; ``dissect``:
    images dissected; ``faithfulness``/``faithfulness_steps``: images and deletion/insertion
    steps of the faithfulness metrics; ``channels``/``patches``: channels shown and patches per channel;
    ``smoothgrad_samples``/``integrated_steps``: saliency costs; ``robustness``/``robustness_ops``:
    images and augmentation ops of the robustness table; ``width``: thumbnail width.

    >>> Options(gallery=4, embed=100).embed
    100
    """

    gallery: int = 8
    cam_methods: tuple = CAM_METHODS
    saliency_methods: tuple = SALIENCY_METHODS
    smoothgrad_samples: int = 8
    integrated_steps: int = 16
    faithfulness: int = 32
    faithfulness_steps: int = 8
    classes: int = 3
    classviz_steps: int = 64
    embed: int = 200
    queries: int = 4
    neighbours: int = 6
    dissect: int = 200
    robustness: int = 64
    robustness_ops: str = "rotate:-15..15,hflip,brightness:0.7..1.3,contrast:0.7..1.3"
    channels: int = 6
    patches: int = 8
    width: int = 112


@dataclass
class Context:
    """What every section reads: the model, the images, the options, where dataset jobs run
    (``scale``: an ``engine.scale.Scale`` or None), and results that later sections reuse
    (``shared``: predictions, dissection detectors)."""

    model: Model
    data: object  # engine.audit.inputs.ImageSet
    options: Options
    shared: dict = field(default_factory=dict)
    scale: object = None

    def class_name(self, index):
        """The model's name of class ``index``, else the name the images' labels give it (a labels
        file's ``name`` column, the Shapes classes for a Shapes model), else "class N"."""
        labels = self.model.labels
        if labels and 0 <= index < len(labels):
            return labels[index]
        given = self.data.class_names if self.labels_mismatch() is None else None
        return given[index] if given and index in given else f"class {index}"

    def labels_mismatch(self):
        """Why the images' labels are not this model's classes, or None when they are (or there
        are none): generated images carry Shapes classes, which only a Shapes model predicts."""
        if self.data.scene is None or self.data.labels is None:
            return None
        if "labels_mismatch" not in self.shared:
            try:
                self.shared["labels_mismatch"] = shapes_mismatch(self.model.labels, _predict(self).shape[1])
            except (NotApplicable, SectionFailed) as err:
                self.shared["labels_mismatch"] = f"it is not a Shapes classifier ({err})"
        return self.shared["labels_mismatch"]

    def truth(self):
        """The images' labels as this model's class indices, or None (no labels, or labels of
        other classes: see :meth:`labels_mismatch`)."""
        if self.labels_mismatch() is not None or self.data.labels is None:
            return None
        classes = _predict(self).shape[1]
        if len(self.data.labels) and self.data.labels.max() >= classes:
            raise DatasetError(f"the labels name class {self.data.labels.max()} but the model has {classes} classes: "
                               f"use indices 0..{classes - 1}")
        return self.data.labels


def shapes_mismatch(names, classes):
    """Why a classifier with class ``names`` (None: unnamed) and ``classes`` outputs is not a
    Shapes-world model, or None when it is: its names are the Shapes classes in order, or it has
    no names and one output per Shapes class.

    >>> shapes_mismatch(["red", "green"], 2)
    'its classes (red, green) are not the Shapes classes (circle, square, …, heart)'
    """
    if names is not None:
        if list(names) == list(SHAPES_CLASSES):
            return None
        shown = ", ".join(map(str, names[:4])) + (", …" if len(names) > 4 else "")
        return f"its classes ({shown}) are not the Shapes classes ({SHAPES_CLASSES[0]}, {SHAPES_CLASSES[1]}, …, " \
               f"{SHAPES_CLASSES[-1]})"
    if classes != len(SHAPES_CLASSES):
        return f"it has {classes} unnamed classes, the Shapes world {len(SHAPES_CLASSES)}"
    return None


# --- model and predictions ------------------------------------------------------------------


def model_summary(ctx):
    """Inputs, outputs, opset, producer, op histogram, the layer catalog with receptive fields."""
    model = ctx.model
    info = model.summary()
    dims = lambda shape: "?" if shape is None else " × ".join(str(d) for d in shape)  # noqa: E731
    image_input = info["image_input"]
    blocks = [table([
        ["file", info["path"]], ["producer", info["producer"] or "?"], ["IR version", info["ir_version"]],
        ["opset", ", ".join(f"{d} {v}" for d, v in info["opset"].items())],
        ["image input", f"{image_input['name']}: {image_input['layout']} {image_input['dtype']} "
                        f"{dims(image_input['shape'])}, run at {dims(image_input['size'])}"],
        ["preprocessing", f"{info['preprocess']['preset']} {info['preprocess']['channel_order']}"],
        ["classes", len(info["labels"]) if info["labels"] else "no class names in the model"],
    ], ["", ""])]
    blocks += [heading("Inputs and outputs"),
               table([[kind, t["name"], t["dtype"], dims(t["shape"])] for kind in ("inputs", "outputs")
                      for t in info[kind]], ["", "name", "dtype", "shape"]),
               heading("Operators"), table(list(info["ops"].items()), ["op", "nodes"]),
               heading("Layer catalog")]
    details = model.layer_details()
    blocks.append(table([[d["name"], d["op"], dims(d["shape"]), d["gradients"],
                          "whole image" if d["field"] is None else "×".join(map(str, d["field"])),
                          None if d["stride"] is None else "×".join(map(str, d["stride"])), d["default"]]
                         for d in details],
                        ["layer", "op", "shape", "gradients reach it", "receptive field", "stride", "CAM default"]))
    return blocks


def _predict(ctx):
    """Class probabilities of every image (N × classes), computed once."""
    if "probabilities" not in ctx.shared:
        model = ctx.model
        first = model.run(model.preprocess(ctx.data.images[:1])).outputs[0]
        if first.ndim != 2:
            raise NotApplicable(f"the first output is shaped {first.shape[1:]}, not one score per class: "
                                "this section needs a classifier")
        probs = np.zeros((len(ctx.data), first.shape[1]))
        for i, prediction in enumerate(model.predict(ctx.data.images, top=first.shape[1])):
            for t in prediction.top:
                probs[i, t.index] = t.score
        bad = int((~np.isfinite(probs)).any(axis=1).sum())
        if bad:
            raise SectionFailed(f"the model's outputs hold NaN or infinite values for {bad} of {len(probs)} images: "
                                "check its weights (nothing that rests on its predictions can be shown)")
        ctx.shared["probabilities"] = probs
    return ctx.shared["probabilities"]


def predictions(ctx):
    """Top-1 predictions; accuracy, per-class accuracy and the confusion matrix when the images'
    labels are the model's classes."""
    probs = _predict(ctx)
    top1 = probs.argmax(axis=1)
    labels, mismatch = ctx.truth(), ctx.labels_mismatch()
    blocks = []
    shown = min(len(top1), ctx.options.gallery)
    items = []
    for i in range(shown):
        truth = f" (true: {ctx.class_name(int(labels[i]))})" if labels is not None else ""
        items.append((ctx.data.images[i], f"{ctx.class_name(int(top1[i]))} {probs[i, top1[i]]:.2f}{truth}"))
    counts = Counter(int(c) for c in top1)
    if labels is None:
        if mismatch is not None:
            blocks.append(note(f"No accuracy: these are generated Shapes-world images labelled with shapes, and this "
                               f"model is not a Shapes model: {mismatch}. Its predictions are listed as they are."))
        else:
            blocks.append(note("no labels: accuracy needs --labels FILE with --images, or --synth N on a Shapes model"))
        blocks.append(table([[ctx.class_name(c), n] for c, n in counts.most_common()], ["predicted class", "images"]))
    else:
        classes = sorted(set(int(c) for c in labels) | set(counts))
        names = [ctx.class_name(c) for c in classes]
        blocks.append(paragraph(f"top-1 accuracy {np.mean(top1 == labels):.4f} on {len(labels)} images"))
        blocks.append(table([[name, int((labels == c).sum()),
                              float(np.mean(top1[labels == c] == c)) if (labels == c).any() else None]
                             for name, c in zip(names, classes)], ["class", "images", "accuracy"]))
        matrix = [[int(((labels == t) & (top1 == p)).sum()) for p in classes] for t in classes]
        blocks.append(heading("Confusion matrix"))
        blocks.append(image(plots.heatmap(matrix, names, names, f"{len(labels)} images", "predicted class",
                                          "true class", "images"), alt="confusion matrix"))
    blocks += [heading(f"The first {shown} images"), gallery(items, width=ctx.options.width)]
    return blocks


# --- explanations ---------------------------------------------------------------------------


def _method_table(ctx, run, methods, show, legend, metric=None):
    """Rows of images × columns of methods under a colour bar (``legend``: what the colours
    measure); methods that fail for this model are listed with why."""
    data = ctx.data.head(ctx.options.gallery)
    columns, failed, scores = [], [], []
    for method in methods:
        try:
            exp = run(data.images, method)
        except OnnxlensError as err:
            failed.append(f"{method}: {err}")
            continue
        if not np.isfinite(exp.maps).all():
            failed.append(f"{method}: its maps hold NaN or infinite values (the model computes non-finite numbers: "
                          "check its weights)")
            continue
        columns.append((method, [show(img, m) for img, m in zip(data.images, exp.maps)]))
        if metric is not None and data.masks is not None:
            scores.append([method, float(metric(exp.maps, data.masks).mean())])
    if not columns:
        raise SectionFailed("no method ran on this model: " + "; ".join(failed))
    rows = [[data.images[i], *(cells[i] for _, cells in columns)] for i in range(len(data))]
    bar = f"{legend}, scaled to [0, 1] per image"
    blocks = [image(plots.colour_bar(bar, "low", "high"), alt=f"colour bar: {bar}"),
              rows_of_images(rows, ["image", *(m for m, _ in columns)], width=ctx.options.width)]
    blocks += [note(f"not available — {reason}") for reason in failed]
    if scores:
        blocks += [heading(f"Pointing game on these {len(data)} images (peak inside the object mask)"),
                   table(scores, ["method", "hit rate"])]
    return blocks


def cams(ctx):
    """The CAM family side by side on the same images (top-1 class of each image)."""
    _predict(ctx)
    blocks = [paragraph(f"layer {ctx.model.default_layer}; each map explains the image's top-1 class")]
    return blocks + _method_table(ctx, lambda images, m: cam(ctx.model, images, method=m, progress=False),
                                  ctx.options.cam_methods, lambda img, m: overlay(img, m), "class activation",
                                  pointing_game)


def saliency(ctx):
    """Input-gradient saliency maps on the same images."""
    _predict(ctx)
    o = ctx.options
    run = lambda images, m: explain_saliency(ctx.model, images, method=m, samples=o.smoothgrad_samples,  # noqa: E731
                                             steps=o.integrated_steps, progress=False)
    return [paragraph("channel-reduced |attribution| for the top-1 class")] + _method_table(
        ctx, run, o.saliency_methods, lambda img, m: colorize(m), "|attribution|", pointing_game)


def faithfulness(ctx):
    """Deletion and insertion curves and AUCs of Grad-CAM beside random and centre maps; the
    pointing game too where object masks exist (generated images, ``--masks DIR``)."""
    data = ctx.data.head(ctx.options.faithfulness)
    _predict(ctx)
    truth = ctx.truth()
    labels = None if truth is None else truth[: len(data)]
    report = evaluate(ctx.model, data.images, data.masks, labels=labels, method="gradcam",
                      steps=ctx.options.faithfulness_steps, progress=False, scale=ctx.scale, curves=True)
    names = ("gradcam", "random", "centre")
    target = "true class" if labels is not None else "top-1 class"
    blocks = [paragraph(f"{report['images']} images, {target} explained, {report['steps']} deletion/insertion steps; "
                        "deletion: lower is better, insertion: higher is better")]
    if data.masks is None:
        blocks.append(note("no pointing game: it needs object masks (--masks DIR, one mask image per image at the "
                           "same relative path, or --synth N)"))
    blocks.append(table([[name, report[name]["pointing"], report[name]["deletion"], report[name]["insertion"]]
                         for name in names], ["maps", "pointing game", "deletion AUC", "insertion AUC"]))
    blocks.append(image(plots.curves([
        ("deletion (AUC: lower is better)", f"probability of the {target}",
         {name: report[name]["deletion_curve"] for name in names}),
        ("insertion (AUC: higher is better)", f"probability of the {target}",
         {name: report[name]["insertion_curve"] for name in names})]), alt="deletion and insertion curves"))
    return blocks


def class_visualizations(ctx):
    """Gradient ascent on the input for the most often predicted classes."""
    top1 = _predict(ctx).argmax(axis=1)
    classes = [c for c, _ in Counter(int(c) for c in top1).most_common(ctx.options.classes)]
    items = []
    for c in classes:
        viz = class_visualization(ctx.model, target=c, steps=ctx.options.classviz_steps, progress=False)
        items.append((viz.image, f"{ctx.class_name(c)} (score {viz.scores[-1]:.3g})"))
    return [paragraph(f"{ctx.options.classviz_steps} steps of gradient ascent from the mean image"),
            gallery(items, width=2 * ctx.options.width)]


# --- analysis -------------------------------------------------------------------------------


def filters(ctx):
    """The filters of the first convolution."""
    picture = filters_picture(ctx.model, title=False)
    return [paragraph(filters_caption(ctx.model)), image(picture, width=2 * picture.shape[1], alt="filters")]


def _source(data):
    return Source(list(data.names), lambda start, stop: (data.images[start:stop], [None] * (stop - start)))


def embeddings(ctx):
    """t-SNE of the penultimate features and nearest-neighbour examples."""
    o = ctx.options
    data = ctx.data.head(o.embed)
    if len(data) < 4:
        raise NotApplicable(f"a t-SNE plot needs at least 4 images, got {len(data)}")
    emb = embed(ctx.model, _source(data), progress=False, scale=ctx.scale)
    features = np.asarray(emb.features)
    names, kind = _point_labels(ctx, data)
    points = project(features, method="tsne", threads=1)  # t-SNE's threads crawl on a busy machine
    blocks = [paragraph(f"{len(data)} images at {emb.layer} ({features.shape[1]} features), t-SNE, coloured by {kind}; "
                        "the numbered images beside the plot are ringed in it"),
              image(plots.scatter(points, names or ["all images"] * len(data), "t-SNE", thumbnails=data.images),
                    alt=f"t-SNE projection coloured by {kind}")]
    k = min(o.neighbours, len(data) - 1)
    if data.labels is not None:
        blocks.append(paragraph(f"kNN purity by {kind} (k={k}, cosine): {purity(features, names, k=k):.3f}"))
    blocks.append(heading(f"Nearest neighbours (cosine) of {min(o.queries, len(data))} images"))
    _, idx = nearest(features, features[: o.queries], k=k + 1)
    caption = names or data.names
    for q, row in enumerate(idx):
        others = [int(i) for i in row if i != q][:k]
        blocks.append(gallery([(data.images[q], f"query: {caption[q]}")]
                              + [(data.images[i], caption[i]) for i in others], width=o.width * 3 // 4))
    return blocks


def _point_labels(ctx, data):
    """The names that colour the embedding's points, and what they are: the true class, the
    shape in a generated image (for a model of other classes), the predicted class, or none."""
    if data.labels is not None and ctx.labels_mismatch() is None:
        return [ctx.class_name(int(c)) for c in data.labels], "true class"
    if data.labels is not None and data.class_names:
        return [data.class_names.get(int(c), f"class {c}") for c in data.labels], "the shape in the image"
    if ctx.model.labels:
        return [ctx.class_name(int(c)) for c in _predict(ctx)[: len(data)].argmax(axis=1)], "predicted class"
    return None, "nothing (no labels, no class names)"


def dissection(ctx):
    """Network dissection of the CAM layer against the concept masks of generated images."""
    data = ctx.data.head(ctx.options.dissect)
    if data.scene is None:
        raise NotApplicable("no concept masks for these images: dissection runs with --synth N "
                            "(or `onnxlens dissect --concepts DIR` on a Broden-layout folder)")
    with tempfile.TemporaryDirectory(prefix="onnxlens-audit-") as folder:
        write_concepts(folder, [data.scene])
        dataset = read_concepts(folder)
        result = dissect(ctx.model, dataset, progress=False, scale=ctx.scale)
        detectors = sorted((u for u in result.units if u["detector"]), key=lambda u: -u["iou"])
        ctx.shared["detectors"] = [u["unit"] for u in detectors]
        sheets = [block for u in detectors[:3] for block in (
            heading(unit_caption(u)),
            gallery([(picture, None) for picture in unit_images(ctx.model, dataset, result.layer, u,
                                                                result.top["image"][u["unit"]][:6])]))]
    s = result.summary
    found = [f"{c} ({v['detectors']})" for c, v in s["categories"].items() if v["detectors"]]
    blocks = [paragraph(f"layer {s['layer']}: {s['detectors']} of {s['units']} units detect a concept "
                        f"(IoU > {s['iou_threshold']}), {s['concepts']} distinct concepts, {s['images']} images; "
                        f"families found: {', '.join(found) or 'none'}"),
              table([[c, v["detectors"], ", ".join(v["concepts"]), family_reach(v, s)]
                     for c, v in s["categories"].items()],
                    ["category", "detectors", "concepts", "could these images show it?"]),
              heading("Top units"),
              table([[u["unit"], u["concept"], u["category"], u["iou"], u["detector"]]
                     for u in sorted(result.units, key=lambda u: -u["iou"])[:10]],
                    ["unit", "concept", "category", "IoU", "detector"])]
    return blocks + ([heading("Top images of the best detectors (mask outlined)")] + sheets if sheets else [])


def family_reach(category, summary):
    """Whether a concept family could have passed the IoU threshold here: a unit mask holds at
    most 1 − quantile of the pixels, so a family whose concepts all cover far more cannot.

    >>> family_reach({"detectors": 0, "labelled_concepts": 4, "reachable_concepts": 0,
    ...               "best_reachable_iou": 0.02}, {"quantile": 0.995, "iou_threshold": 0.04})
    'no: masks hold at most 0.5% of the pixels and its 4 concepts cover far more (IoU ≤ 0.020)'
    """
    if category["detectors"]:
        return "yes (found)"
    if not category["labelled_concepts"]:
        return "no: no image labels it"
    if not category["reachable_concepts"]:
        return (f"no: masks hold at most {1 - summary['quantile']:.1%} of the pixels and its "
                f"{category['labelled_concepts']} concepts cover far more "
                f"(IoU ≤ {category['best_reachable_iou']:.3f})")
    return (f"yes: {category['reachable_concepts']} of {category['labelled_concepts']} concepts could pass "
            f"(IoU up to {category['best_reachable_iou']:.3f}); no unit did")


def patches(ctx):
    """Maximally activating patches of a few channels of the CAM layer."""
    o = ctx.options
    data = ctx.data.head(o.embed)
    result = mine(ctx.model, _source(data), "auto", channels="all", top=o.patches, progress=False, scale=ctx.scale)
    if not all(np.isfinite(row["value"]) for row in result.rows):
        raise SectionFailed(f"the activations of layer {result.layer} hold NaN or infinite values: check the model's "
                            "weights")
    peak = {}
    for row in result.rows:
        peak[row["channel"]] = max(peak.get(row["channel"], -np.inf), row["value"])
    chosen = [c for c in ctx.shared.get("detectors", []) if c in peak][: o.channels]
    why = "the best dissection detectors" if chosen else "the channels with the highest activations"
    chosen += [c for c in sorted(peak, key=lambda c: -peak[c]) if c not in chosen][: o.channels - len(chosen)]
    blocks = [paragraph(f"layer {result.layer}, receptive field {result.field.size[0]}×{result.field.size[1]} px "
                        f"(clipped to the {result.size[1]}×{result.size[0]} image); channels: {why}; "
                        f"top {o.patches} of {len(data)} images, each captioned with its activation")]
    for channel in chosen:
        tiles = patch_tiles(result, channel, lambda i: data.images[i], cell=96)
        number = number_format([value for _, value in tiles])
        blocks += [heading(f"channel {channel}"), gallery([(tile, number(value)) for tile, value in tiles])]
    return blocks


def robustness(ctx):
    """Top-1 and Grad-CAM agreement under each of ``options.robustness_ops``."""
    _predict(ctx)  # a model whose outputs are not finite agrees with anything
    report = check_robustness(ctx.model, ctx.data.head(ctx.options.robustness).images, ctx.options.robustness_ops,
                              scale=ctx.scale)
    rows = report.summary()
    ops = [r["op"] for r in rows]
    headers = {"op": "op", "images": "images", "agreement": "top-1 agreement", "agreement_std": "agreement std",
               "iou_mean": "Grad-CAM IoU", "iou_std": "IoU std", "valid": "valid share"}
    return [image(plots.bars(ops, {"top-1 agreement": [r["agreement"] for r in rows],
                                   "Grad-CAM IoU (top region)": [np.nan if r["iou_mean"] is None else r["iou_mean"]
                                                                 for r in rows]},
                             "agreement with the original image"), alt="robustness: agreement per operation"),
            table([[r[k] for k in headers] for r in rows], list(headers.values()))]


SECTIONS = (
    ("Model", model_summary),
    ("Predictions", predictions),
    ("Class activation maps", cams),
    ("Saliency", saliency),
    ("Faithfulness", faithfulness),
    ("Class visualizations", class_visualizations),
    ("First-layer filters", filters),
    ("Embeddings and neighbours", embeddings),
    ("Dissection", dissection),
    ("Top patches", patches),
    ("Augmentation robustness", robustness),
)
