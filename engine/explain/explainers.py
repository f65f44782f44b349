"""Model-level explanations: CAM family and saliency maps for images, as the CLI runs them.

>>> exp = cam(model, ["cat.png"], method="gradcam")
>>> exp.layers, exp.raw[exp.layers[0]].shape, exp.maps.shape     # at the layer; in [0, 1] at the image's size
(['/layer3/relu_1/Relu_output_0'], (1, 8, 8), (1, 96, 96))
"""
import math
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace

import cv2
import numpy as np

from engine.data.images import as_rgb, image_list, resize, visible_part
from engine.errors import LayerError, UnsupportedOpError, UsageError
from engine.explain import attribution, methods
from engine.explain.capture import (per_model, capture, fc_head, gradcam_fn, gradient_fn, head_fn, head_gradient_fn,
                                    layers_of, output_names, scores_fn)
from engine.explain.outputs import describe, forward, softmax_input
from engine.explain.targets import OutputMask, Rows, Target, check_count, one_class_each, parse, resolve
from engine.progress import Progress
from engine.viz.overlay import resize_maps, to_unit, unit_resized

TOP = Target("top")
TTA_FLIPS = (False, True)
TTA_SCALES = (0.9, 1.0, 1.1)


@dataclass
class Explanation:
    """One map per row (an image and a target; ``image`` maps rows to images).

    ``raw``: a dict tensor → R×h×w maps, whatever the number of layers: for CAM, each layer's
    maps after the ReLU, before normalization or resize; for saliency, {the model's input: the
    channel-reduced attribution at the input's resolution}.
    ``maps``: R×H×W in [0, 1] at the images' size (the model's input size when images differ).
    ``targets``: R class indices (−1 for output masks and whole strings); ``scores``: the explained
    output, one row per image, batch first (classifiers: N×C); ``attributions``: saliency only,
    R × the input's shape. ``details``: per row, what the target resolved to (a box with its
    class and score, the decoded text, a region); ``output``: the explained tensor, its kind and
    whether it holds probabilities; ``empty``: R flags, True where the map is zero everywhere
    (the target does not reach the layer: pick another layer or target).
    """

    raw: object
    maps: np.ndarray
    targets: np.ndarray
    scores: np.ndarray
    image: np.ndarray
    method: str
    layers: list = field(default_factory=list)
    attributions: np.ndarray = None
    details: list = field(default_factory=list)
    output: dict = field(default_factory=dict)
    empty: np.ndarray = None

    def arrays(self):
        """The arrays written to ``cams.npz``: raw (raw/<layer> for each of several layers), maps,
        targets, scores, image and, when known, empty."""
        out = {("raw" if len(self.raw) == 1 else "raw/" + k): np.asarray(v, np.float32) for k, v in self.raw.items()}
        out.update(maps=self.maps.astype(np.float32), targets=self.targets, scores=self.scores, image=self.image)
        if self.empty is not None:
            out["empty"] = np.asarray(self.empty, bool)
        return out


def cam(model, images, method="gradcam", layer="auto", targets="top", batch=16, tta=False,
        eigen_smooth=False, output=None, progress=None, output_kind=None, logits=False, blank=0, layout="HWC"):
    """Explain ``images`` (paths, uint8 RGB arrays, torch tensors or PIL images; ``layout="CHW"``
    for channels-first ones) with a CAM-family method.

    ``method``: a name of :data:`engine.explain.methods.METHODS` (cam, gradcam, gradcam++, ...).
    ``layer``: "auto" (the default layer for the explained output), a name or
    several (comma-separated or a list; maps are averaged as pytorch-grad-cam does).
    ``targets``: "top", a class, one per image, several per image, an :class:`OutputMask`, or a
    target of :mod:`engine.explain.targets`' vocabulary (``"box:0"``, ``"char:2"``, ``"text"``,
    ``"class:3@region:0,0,32,32"``...). ``output``: the output (or any tensor) to explain, first
    by default; ``output_kind`` overrides its inferred kind; ``logits``: explain the input of a
    final Softmax; ``blank``: the CTC blank class of sequence outputs. ``tta``: average over flips
    and zooms (0.9, 1, 1.1), each map warped back. ``eigen_smooth``: first principal component of
    the weighted activations instead of their sum. For "top" class targets the gradient methods
    need one forward pass: the gradient comes from differentiating only the network after the layer.

    >>> exp = cam(model, images[:2], method="gradcam++", targets=[3, "star"], layer="layer2,layer3")
    >>> exp.targets.tolist(), [raw.shape for raw in exp.raw.values()]     # a map per layer
    ([3, 3], [(2, 8, 8), (2, 8, 8)])
    """
    if method not in methods.METHODS:
        raise UsageError(f"unknown CAM method '{method}': use one of {', '.join(methods.METHODS)}")
    entry = methods.METHODS[method]
    rgbs, out_size = _images(model, images, layout)
    first = []  # the first batch preprocessed, made once (describe may need it for a forward pass)

    def first_batch():
        if not first:
            first.append(model.preprocess(rgbs[:batch]))
        return first[0]

    view = describe(model, lambda: first_batch()[:1], output, output_kind, logits)
    targets = parse(targets, model.labels) if isinstance(targets, str) else targets
    in_graph = _in_graph_gradcam(model, method, layer, view, targets, tta, eigen_smooth, len(rgbs))
    if in_graph:
        layers, in_graph_explain, pixels = in_graph
    else:
        pixels = False  # the graph takes preprocessed inputs
        layers, sources = _cam_sources(model, entry, layer, view)
        top_fast = (getattr(targets, "kind", targets) == "top" and view.kind == "classifier"
                    and entry.needs_gradients_only and not tta)
        heads = _top_heads(model, layers, view) if top_fast else None
        transforms = [(f, s) for s in TTA_SCALES for f in TTA_FLIPS] if tta else [(False, 1.0)]

    def batch_at(start):  # the inputs of images start:start + batch for the path taken
        if pixels:
            return model.pixels(rgbs[start:start + batch])
        return first_batch() if start == 0 else model.preprocess(rgbs[start:start + batch])

    def explain(x, start):  # (raw maps by layer, rows, scores batch first, the graph's (maps, empty) or None)
        if in_graph:
            return in_graph_explain(x, start, out_size)
        if heads:
            raw, rows, scores = _top_raw(model, x, entry, layers, view, eigen_smooth, heads)
            return raw, rows, _flat(scores, view), None
        rows, scores = _rows(model, x, targets, start, len(rgbs), view, blank)
        one_each = rows.image.tolist() == list(range(len(x)))  # one row per image, in order
        raw, row_outputs = _tta_raw(model, x if one_each else x[rows.image], rows, entry, layers, view,
                                    eigen_smooth, sources, transforms)
        if scores is None:  # each image's first row: all rows when they are one per image
            scores = row_outputs if one_each else row_outputs[np.unique(rows.image, return_index=True)[1]]
        return raw, rows, _flat(scores, view), None

    if len(rgbs) <= batch and not progress:  # one batch: no progress bar, nothing to join
        raw, rows, scores, made = explain(batch_at(0), 0)
        labels, image, details = rows.labels, rows.image, rows.details
    else:
        parts, made_parts = [], []
        with Progress(total=len(rgbs), label=method, enabled=progress) as bar:
            for start in range(0, len(rgbs), batch):
                x = batch_at(start)
                *part, made = explain(x, start)
                parts.append((*part, start))
                made_parts.append(made)
                bar.update(len(x))
        raw = {layer_: _joined_arrays([p[0][layer_] for p in parts]) for layer_ in layers}
        labels, image, scores, details = _joined(parts)
        made = [_joined_arrays(arrays) for arrays in zip(*made_parts)] if in_graph else None
    if made is not None:
        maps, empty = made
    else:
        empty = _empty(raw, layers)
        if len(layers) == 1:
            maps = unit_resized(raw[layers[0]], out_size)
        else:
            maps = to_unit(np.mean([resize_maps(to_unit(raw[layer_]), out_size) for layer_ in layers], axis=0))
    return Explanation(raw, maps, labels, scores, image, method, layers, details=details, output=view.to_dict(),
                       empty=empty)


def _in_graph_gradcam(model, method, layer, view, targets, tta, eigen_smooth, total):
    """(the layer, ``explain(x, start, size)``, whether ``x`` is ``model.pixels`` rather than
    ``model.preprocess``) for Grad-CAM made in the graph, one session run per batch
    (:func:`~engine.explain.capture.gradcam_fn`); ``explain`` gives (raw maps by layer, rows,
    scores, (maps at ``size``, empty flags)) of the batch ``x`` at image ``start`` of ``total``.
    None where that does not apply. It applies to Grad-CAM at one layer without TTA or
    eigen-smoothing, explaining a classifier's float32 graph output for the top class or one
    given class per image (fed to the graph as its index)."""
    kind = getattr(targets, "kind", None)
    if kind == "class":
        targets = targets.index
    indices = isinstance(targets, (int, np.integer)) or (  # one class (index or label) per image
        isinstance(targets, (list, tuple, np.ndarray)) and all(isinstance(t, (int, np.integer, str)) for t in targets))
    if method != "gradcam" or tta or eigen_smooth or not isinstance(layer, str) or not (kind == "top" or indices):
        return None
    plan = _in_graph_plan(model, layer, view, "top" if kind == "top" else "class")
    if plan is None:
        return None
    layers, gradcam, pixels = plan
    if kind == "top":
        def explain(x, start, size):
            scores, raw, maps, empty, classes = gradcam(x, size)
            return {layers[0]: raw}, _class_rows(classes), _flat(scores, view), (maps, empty)
    else:
        classes = one_class_each(targets, total, math.prod(view.row_shape), model.labels)

        def explain(x, start, size):
            batch = classes[start:start + len(x)]
            scores, raw, maps, empty = gradcam(x, size, batch)
            return {layers[0]: raw}, _class_rows(batch), _flat(scores, view), (maps, empty)
    return layers, explain, pixels


def _class_rows(classes):
    """The rows of one class per image, in order."""
    return Rows(np.arange(len(classes)), classes, None, [{} for _ in classes])


@per_model
def _in_graph_plan(model, layer, view, seed):
    """([the layer], :func:`~engine.explain.capture.gradcam_fn` seeded by ``seed`` ("top" or
    "class"), whether it takes uint8 pixels) for :func:`_in_graph_gradcam`, or None where the
    ``layer`` (one name, or auto) or the output ``view`` does not fit. A float32 3-channel input
    takes the images' pixels (``model.pixels``), normalized in the graph."""
    output = next((t for t in model.outputs if t.name == view.name), None)
    if view.kind != "classifier" or getattr(output, "dtype", None) != "float32" \
            or view.perm != tuple(range(len(view.perm))) or not hasattr(model, "rewritten_session"):
        return None  # (a duck-typed model without rewritten sessions: the numpy path)
    row = output.shape[1:]
    if not row or not all(isinstance(d, int) for d in row) or sum(d > 1 for d in row) > 1:
        return None  # one-hot seeds in the graph: a vector of known length (N×C, N×C×1×1, N×1×C)
    layers = layers_of(model, layer, view.name)
    if len(layers) != 1:
        return None
    pixels = hasattr(model, "pixels") and model.input.dtype == np.float32 and model.input.channels == 3
    return layers, gradcam_fn(model, layers[0], view.name, seed, pixels), pixels


def _empty(raw, layers):
    """R flags: True where the map is zero everywhere, at every layer."""
    flags = [(raw[layer_] <= 0).all(axis=(1, 2)) for layer_ in layers]
    return flags[0] if len(flags) == 1 else np.all(flags, axis=0)


def _cam_sources(model, entry, layer, view):
    """(the layers, {input: make(at)}) for a CAM method, ``at`` naming the ``layer``, inputs ``x``,
    ``rows`` and gradients ``grads`` of one capture: each input of
    :data:`methods.INPUTS` the method may name; the FC head (which fixes the layer) and the heads
    after each layer are found here, once per call, only for a method that names them."""
    if "fc_weights" in entry.needs:
        fc_layer, fc = fc_head(model, view.name)
        if layer not in (None, "auto") and layers_of(model, layer) != [fc_layer]:
            raise LayerError(f"CAM reads the FC weights and needs the pooled layer '{fc_layer}': "
                             "leave --layer at auto or use --method gradcam")
        layers = [fc_layer]
    else:
        fc, layers = None, layers_of(model, layer, view.name)
    heads = {n: head_fn(model, n, view) for n in layers} if "head" in entry.needs else None
    scores = scores_fn(model, view)
    layout = model.input.layout
    return layers, {
        "gradients": lambda at: at.grads[at.layer],
        "fc_weights": lambda at: fc[at.rows.labels],
        "x": lambda at: at.x,
        "seeds": lambda at: at.rows.seeds,
        "scores": lambda at: scores,
        "head": lambda at: heads[at.layer],
        "layout": lambda at: layout,
    }


def saliency(model, images, method="smoothgrad", targets="top", batch=16, reduce="absmax",
             samples=25, noise=0.15, steps=32, baseline="zero", layer="auto", output=None, rng=0,
             progress=None, output_kind=None, logits=False, blank=0, layout="HWC"):
    """Input attributions for ``images`` by ``method``: a name of
    :data:`engine.explain.attribution.METHODS` (vanilla, gradxinput, integrated, guided, deconvnet,
    guided-gradcam: guided backprop ⊙ the Grad-CAM map at ``layer``), or any of them smoothed:
    ``smoothgrad:integrated``, ``smoothgrad_sq:guided``, ``vargrad:NAME`` (``smoothgrad`` alone is
    smoothed vanilla; see :func:`engine.explain.attribution.method`).

    ``samples``/``noise``: smoothing; ``steps``/``baseline`` ("zero", "black" or a number in
    model space): Integrated Gradients; ``reduce``: channel reduction for the maps. ``targets``,
    ``output``, ``output_kind``, ``logits``, ``blank`` and ``layout`` as for :func:`cam`.
    The smoothing noise is seeded by ``rng`` and the batch's first image index.

    >>> exp = saliency(model, images[:1], method="smoothgrad:integrated", samples=2, steps=4)
    >>> exp.raw["image"].shape, exp.attributions.shape
    ((1, 64, 64), (1, 3, 64, 64))
    """
    entry = attribution.method(method)
    rgbs, out_size = _images(model, images, layout)
    view = describe(model, model.preprocess(rgbs[:1]), output, output_kind, logits)
    targets = parse(targets, model.labels) if isinstance(targets, str) else targets
    sources = _saliency_sources(model, view, layer, batch, samples, noise, steps, baseline, rng)
    parts = []
    with Progress(total=len(rgbs), label=method, enabled=progress) as bar:
        for start in range(0, len(rgbs), batch):
            x = model.preprocess(rgbs[start:start + batch])
            rows, scores = _rows(model, x, targets, start, len(rgbs), view, blank, need_scores=True)
            at = SimpleNamespace(x=x[rows.image], rows=rows, start=start, shape=rgbs[start].shape)
            parts.append((entry(**entry.given(sources, at)), rows,
                          _flat(scores, view), start))
            bar.update(len(x))
    attr = _joined_arrays([p[0] for p in parts])
    raw = attribution.reduce(attr, reduce, model.input.layout)
    labels, image, scores, details = _joined(parts)
    return Explanation({model.input.name: raw}, resize_maps(to_unit(raw), out_size), labels, scores, image, method,
                       [], attr, details=details, output=view.to_dict(), empty=(raw == 0).all(axis=(1, 2)))


def _saliency_sources(model, view, layer, batch, samples, noise, steps, baseline, rng):
    """{input: make(at)} (``at`` naming a batch's rows' inputs ``x``, the ``rows``, the batch's first
    image index ``start`` and its image ``shape``) for each input of
    :data:`attribution.INPUTS` (and the smoothing options) an attribution may name; the Grad-CAM
    layer and the baseline are read only for a method that names them."""
    gradient = gradient_fn(model, view)
    layout = model.input.layout

    def cam_maps(x, seeds):  # Grad-CAM maps in [0, 1] at the input's size (Guided Grad-CAM)
        layers = layers_of(model, layer, view.name)
        _, acts, grads = capture(model, x, layers, seeds, view)
        size = x.shape[2:] if layout == "NCHW" else x.shape[1:3]
        return resize_maps(to_unit(methods.gradcam(acts[layers[0]], grads[layers[0]])), size)

    return {
        "gradient": lambda at: gradient,
        "x": lambda at: at.x,
        "seeds": lambda at: at.rows.seeds,
        "cam": lambda at: cam_maps,
        "batch": lambda at: batch,
        "steps": lambda at: steps,
        "baseline": lambda at: _baseline(model, baseline, at.shape),
        "layout": lambda at: layout,
        "samples": lambda at: samples,
        "noise": lambda at: noise,
        "rng": lambda at: [rng, at.start],
    }


def _images(model, images, layout="HWC"):
    items = image_list(images, layout)
    if not items:
        raise UsageError("no images given: pass image paths or uint8 H×W×3 RGB arrays")
    policy = model.preprocessing.resize  # maps cover the part of each image the model sees
    rgbs = [visible_part(as_rgb(item), model.input_size, policy) for item in items]
    sizes = {rgb.shape[:2] for rgb in rgbs}
    out_size = sizes.pop() if len(sizes) == 1 else model.input_size
    if out_size is None:  # dynamic spatial dims, images of several sizes: all at the first one's size
        out_size = rgbs[0].shape[:2]
        rgbs = [resize(rgb, out_size) for rgb in rgbs]
    return rgbs, out_size


def _joined(parts):
    """Labels, image indices (into all images), scores and row details of the batches'
    ``(maps, rows, scores, start)``."""
    labels = _joined_arrays([rows.labels for _, rows, _, _ in parts])
    image = _joined_arrays([rows.image + start for _, rows, _, start in parts])
    scores = _joined_arrays([scores for _, _, scores, _ in parts])
    details = [detail for _, rows, _, _ in parts for detail in rows.details]
    return labels, image, scores, details


def _joined_arrays(arrays):
    """``np.concatenate(arrays)``, without a copy for a single batch's array."""
    return np.asarray(arrays[0]) if len(arrays) == 1 else np.concatenate(arrays)


def _flat(scores, view):
    """Scores batch first; a classifier's N×C×1×1 or N×1×C as N×C."""
    return scores.reshape(len(scores), -1) if view.kind == "classifier" else scores


def _rows(model, x, targets, start, total, view, blank=0, need_scores=False):
    """Resolve the batch's targets (images ``start:start+len(x)`` of ``total``) into Rows (seeds
    batch first: the capture functions take ``view`` to put them in the tensor's layout) and the
    scores (batch first).

    A forward pass gives the scores unless the targets are plain classes of a classifier (then
    scores are None and come from the capture itself).
    """
    n = len(x)
    scores, boxes = None, None
    plain = isinstance(targets, (int, np.integer, list, tuple, np.ndarray)) and view.kind == "classifier"
    if need_scores or not plain:
        values = forward(model, x, [view.name, *([view.boxes] if view.boxes else [])])
        scores, boxes = view.rows(values[view.name]), values.get(view.boxes)
    shape = scores.shape[1:] if scores is not None else view.row_shape
    if isinstance(targets, OutputMask):
        if np.shape(targets.mask) == (total, *shape):
            targets = OutputMask(np.asarray(targets.mask)[start:start + n])
    elif isinstance(targets, (list, tuple, np.ndarray)):
        check_count(targets, total)
        targets = list(targets)[start:start + n]
    size = tuple(x.shape[2:4] if model.input.layout == "NCHW" else x.shape[1:3])
    rows = resolve(targets, n, shape, outputs=scores, kind=view.kind, boxes=boxes, input_size=size, blank=blank,
                   labels=model.labels)
    return rows, scores


def _top_heads(model, layers, output):
    """Head gradients for the top-1 fast path, or None when a layer does not cut the network.

    A layer whose global average feeds a linear map to the output (a GAP → FC head) has the
    gradient in closed form; any other layer's comes from the differentiated head (a session)."""
    fc = _linear_head(model, output.name)
    try:
        return {n: partial(_linear_head_gradient, fc[1]) if fc and n == fc[0] else head_gradient_fn(model, n, output)
                for n in layers}
    except (LayerError, UnsupportedOpError):  # e.g. a head rule that needs the input size: full capture
        return None


@per_model
def _linear_head(model, output):
    """(layer, FC weights classes×K) when ``output`` is W·GAP(layer) (+ b), with no Softmax after
    the FC (see :func:`fc_head`), else None."""
    if softmax_input(model.proto, output) is not None:
        return None
    try:
        return fc_head(model, output)
    except LayerError:
        return None


def _linear_head_gradient(weights, acts, seeds):
    """∂(Σ seed·(W·GAP(A) + b))/∂A: each row's seed·W spread evenly over the h×w positions
    (float32 arithmetic, as the differentiated head's; float64 values, as the methods take them)."""
    n, k, h, w = acts.shape
    rows = np.einsum("nc,ck->nk", np.asarray(seeds, np.float32).reshape(n, -1), weights)  # einsum: no BLAS threads
    return np.broadcast_to((rows / np.float32(h * w)).astype(np.float64)[:, :, None, None], acts.shape)


def _top_raw(model, x, entry, layers, view, eigen_smooth, heads):
    """Top-1 maps from one forward pass with taps plus the gradient of the head after each layer."""
    outputs, acts, _ = capture(model, x, layers, output=view.name)
    scores = _values(model, outputs, acts, view.name)
    rows = resolve(TOP, len(x), scores.shape[1:], outputs=scores)
    raw = {n: entry(acts[n], heads[n](acts[n], rows.seeds), eigen_smooth=eigen_smooth) for n in layers}
    return raw, rows, scores


def _values(model, outputs, acts, name):
    """The explained tensor's values from a capture: a graph output, or one of the activations."""
    names = output_names(model)
    return np.asarray(outputs[names.index(name)] if name in names else acts[name])


def _tta_raw(model, xr, rows, entry, layers, view, eigen_smooth, sources, transforms):
    """({layer: raw maps}, the explained output's rows) of the rows' inputs ``xr``, averaged over
    the TTA ``transforms`` (flip, scale), each map warped back; the output of the unchanged inputs."""
    layout = model.input.layout
    if transforms == [(False, 1.0)]:  # no TTA: the maps as they come
        explained, raw = _raw(model, xr, rows, entry, layers, view, eigen_smooth, sources)
        return {layer: np.asarray(raw[layer], np.float32) for layer in layers}, view.rows(explained)
    total = {layer: 0.0 for layer in layers}
    weight = {layer: 0.0 for layer in layers}
    row_outputs = None
    for flip, scale in transforms:
        explained, raw = _raw(model, _warp_inputs(xr, flip, scale, layout), rows, entry, layers, view,
                              eigen_smooth, sources)
        for layer in layers:
            back, valid = _unwarp_maps(raw[layer], flip, scale)
            total[layer] = total[layer] + back * valid
            weight[layer] = weight[layer] + valid
        if not flip and scale == 1.0:
            row_outputs = view.rows(explained)
    raw = {layer: (total[layer] / np.maximum(weight[layer], 1e-6)).astype(np.float32) for layer in layers}
    return raw, row_outputs


def _raw(model, x, rows, entry, layers, view, eigen_smooth, sources):
    """(explained tensor's values, {layer: raw map}) of one CAM method on the rows' inputs ``x``
    for the output ``view``: one capture (with gradients when the method names them), then the
    method at each layer with the inputs it names (``sources``, see :func:`_cam_sources`)."""
    seeds = rows.seeds if "gradients" in entry.needs else None
    outputs, acts, grads = capture(model, x, layers, seeds, view)
    raw = {}
    for n in layers:
        raw[n] = entry(acts[n], eigen_smooth=eigen_smooth,
                       **entry.given(sources, SimpleNamespace(layer=n, x=x, rows=rows, grads=grads)))
    return _values(model, outputs, acts, view.name), raw


def _affine(flip, scale, h, w):
    """2×3 matrix of a zoom by ``scale`` about the centre, after an optional horizontal flip."""
    cx, cy = (w - 1) / 2, (h - 1) / 2
    fx = -scale if flip else scale
    return np.array([[fx, 0, cx - fx * cx], [0, scale, cy - scale * cy]], np.float64)


def _warp_inputs(x, flip, scale, layout):
    if not flip and scale == 1.0:
        return x
    hwc = x.transpose(0, 2, 3, 1) if layout == "NCHW" else x
    h, w = hwc.shape[1:3]
    m = _affine(flip, scale, h, w)
    out = np.stack([np.stack([cv2.warpAffine(np.ascontiguousarray(img[..., c]), m, (w, h),
                                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
                              for c in range(img.shape[-1])], axis=-1) for img in hwc])
    return out.transpose(0, 3, 1, 2) if layout == "NCHW" else out


def _unwarp_maps(maps, flip, scale):
    if not flip and scale == 1.0:
        return maps, np.ones_like(maps)
    h, w = maps.shape[1:]
    m = _affine(flip, scale, h, w)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    back = np.stack([cv2.warpAffine(np.ascontiguousarray(mp), m, (w, h), flags=flags, borderValue=0)
                     for mp in maps])
    valid = cv2.warpAffine(np.ones((h, w), np.float32), m, (w, h), flags=flags, borderValue=0)
    return back, np.broadcast_to(valid, maps.shape)


def _baseline(model, baseline, image_shape):
    if baseline == "zero":
        return 0.0
    if baseline == "black":
        return model.preprocess([np.zeros(image_shape, np.uint8)])
    try:
        value = float(baseline)
    except (TypeError, ValueError):
        raise UsageError(f"unknown baseline '{baseline}': use zero, black or a number") from None
    if not np.isfinite(value):
        raise UsageError(f"baseline {baseline} is not a finite number: use zero, black or a finite number")
    return value
