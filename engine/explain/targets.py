"""What to explain, turned into seed arrays: rows of (image, seed) for Σ seed·output.

One vocabulary, shared by the CLI (``--target``) and the API (``targets=``), read by :func:`parse`:

=========================  ====================================================================
``top``                    the top class (classifier), the most confident box (detection), the
                           whole decoded string (sequence), the strongest channel (dense)
``3``, ``class:3``, label  class 3 (detection: the most confident box of class 3; dense: Σ of
                           channel 3 over the map)
``box:K``                  the K-th most confident box (0 = the best), explained by its class score
                           (``scores`` outputs: the K-th most confident anchor)
``box:x1,y1,x2,y2``        the box nearest (by IoU) to this one, in model-input pixels
``char:K``                 the K-th character of the greedy CTC decoding (its frames' class scores)
``text``                   the whole decoded string (every non-blank frame's class score)
``region:x1,y1,x2,y2``     dense maps: Σ of a class over this box of model-input pixels (the
                           region's strongest class, or ``class:K@region:...``)
``mask:FILE``              dense maps: Σ of a class over a mask (.png or .npy, non-zero = inside;
                           ``class:K@mask:FILE``)
``channel:K``              dense maps: Σ of channel K over every position
=========================  ====================================================================

The API also takes an ``int``, one class per image, several per image, or an :class:`OutputMask`.
Seeds are the gradient of the explained score with respect to the output row, so Σ seed·output
has the score's gradient (for YOLOv5 the score obj·cls gives obj at the class and cls at the
objectness).

>>> rows = resolve([3, [1, 2]], n=2, output_shape=(10,))
>>> rows.image.tolist(), rows.labels.tolist()
([0, 1, 1], [3, 1, 2])
>>> out = np.zeros((1, 6, 5)); out[0, :4, 2] = [10, 10, 4, 4]; out[0, 4, 2] = 0.9   # YOLOv8: 2 classes, 5 anchors
>>> resolve(parse("box:0"), 1, (6, 5), outputs=out, kind="yolov8").details[0]["box"]
[8.0, 8.0, 12.0, 12.0]
"""
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from engine.errors import UsageError

KINDS = ("classifier", "dense", "yolov8", "yolov5", "boxes", "scores", "sequence")
DETECTION = ("yolov8", "yolov5", "boxes", "scores")
VOCABULARY = "top, N, class:N, box:K, box:x1,y1,x2,y2, char:K, text, region:x1,y1,x2,y2, mask:FILE, channel:K"


@dataclass
class OutputMask:
    """Explain Σ output·mask; ``mask`` is shaped like one output row, or N rows (one per image).

    >>> seg_logits = np.zeros((1, 21, 4, 4)); seg_logits[0, 12, :2] = 1
    >>> int(OutputMask(seg_logits.argmax(1, keepdims=True) == 12).mask.sum())
    8
    """

    mask: np.ndarray


@dataclass(frozen=True)
class Target:
    """A parsed target: ``kind`` (top, class, box, char, text, region, mask, channel), an
    ``index`` (class, box rank, character or channel), a ``box`` (x1, y1, x2, y2) and a ``mask`` file.

    >>> parse("class:3@region:0,0,32,32")
    Target(kind='region', index=3, box=(0.0, 0.0, 32.0, 32.0), mask=None)
    """

    kind: str
    index: int | None = None
    box: tuple | None = None
    mask: str | None = None


@dataclass
class Rows:
    """Resolved targets: ``image`` R image indices, ``labels`` R class indices (−1 for masks),
    ``seeds`` R×output_shape float32 arrays, ``details`` R dicts for the summary (box, class,
    score, decoded text, region; empty for plain classes)."""

    image: np.ndarray
    labels: np.ndarray
    seeds: np.ndarray
    details: list = field(default_factory=list)


def parse(text, labels=None):
    """Read one target of the vocabulary (see the module docstring); ``labels`` resolve names.

    A comma list of classes (``3,5``) gives one class per image. Raises UsageError naming the
    vocabulary otherwise.

    >>> parse("box:2"), parse("3,5")
    (Target(kind='box', index=2, box=None, mask=None), [3, 5])
    """
    text = str(text).strip()
    if text in ("top", "text"):
        return Target(text)
    head, at, rest = text.partition("@")
    if at:
        if not rest.startswith(("region:", "mask:")):
            raise UsageError(f"target '{text}': '@' combines a class with region:x1,y1,x2,y2 or mask:FILE")
        within = parse(rest, labels)
        return Target(within.kind, _class(head.removeprefix("class:"), labels, text), within.box, within.mask)
    key, colon, value = text.partition(":")
    if colon and key == "box":
        numbers = _numbers(value, text)
        if len(numbers) == 1:
            return Target("box", index=_count(value, text))
        return Target("box", box=_xyxy(numbers, text))
    if colon and key in ("char", "channel"):
        return Target(key, index=_count(value, text))
    if colon and key == "region":
        return Target("region", box=_xyxy(_numbers(value, text), text))
    if colon and key == "mask":
        return Target("mask", mask=value)
    if colon and key == "class":
        return Target("class", index=_class(value, labels, text))
    if "," in text and not colon:
        return [_class(part.strip(), labels, text) for part in text.split(",")]
    return Target("class", index=_class(text, labels, text))


MAX_INDEX = 2**31 - 1  # beyond any tensor's size; larger numbers would overflow numpy's int64


def _class(value, labels, text):
    if value.lstrip("-").isdigit():
        return _bounded(int(value), text)
    if labels and value in labels:
        return list(labels).index(value)
    raise UsageError(f"target '{text}': '{value}' is neither a class index nor one of the model's labels; "
                     f"targets are {VOCABULARY}")


def _numbers(value, text):
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise UsageError(f"target '{text}' needs numbers after the colon; targets are {VOCABULARY}") from None


def _count(value, text):
    if not value.strip().isdigit():
        raise UsageError(f"target '{text}' needs a non-negative integer after the colon; targets are {VOCABULARY}")
    return _bounded(int(value), text)


def _bounded(index, text):
    if abs(index) > MAX_INDEX:
        raise UsageError(f"target '{text}': index {index} is out of range (accepted: -{MAX_INDEX}..{MAX_INDEX}, "
                         "within the model's classes)")
    return index


def _xyxy(numbers, text):
    if len(numbers) != 4 or numbers[2] <= numbers[0] or numbers[3] <= numbers[1]:
        raise UsageError(f"target '{text}' needs a box x1,y1,x2,y2 with x1 < x2 and y1 < y2 (model-input pixels)")
    return tuple(numbers)


def resolve(targets, n, output_shape, outputs=None, kind="classifier", boxes=None, input_size=None, blank=0,
            labels=None):
    """Resolve ``targets`` for ``n`` images into :class:`Rows` for an output row shaped ``output_shape``.

    ``kind`` is the output's kind (:data:`KINDS`); ``outputs`` (N×output_shape, batch first) is
    needed for "top" and every structured target. Detection: ``boxes`` (N×A×4 xyxy) for the
    "boxes" kind (a boxes + scores pair). Dense maps: ``input_size`` (H, W) to map regions from
    input pixels to the output grid. Sequences: ``blank`` is the CTC blank class; ``labels`` spell
    the decoded text.

    >>> resolve("top", 2, (3,), outputs=np.array([[0.1, 2.0, 0.3], [5.0, 0.0, 0.0]])).labels.tolist()
    [1, 0]
    """
    output_shape = tuple(output_shape)
    if isinstance(targets, str):
        targets = parse(targets, labels)
    if isinstance(targets, OutputMask):
        mask = np.asarray(targets.mask, np.float32)
        if mask.shape == output_shape:
            mask = np.broadcast_to(mask, (n, *output_shape))
        if mask.shape != (n, *output_shape):
            raise UsageError(f"an output mask must be shaped {output_shape} or {(n, *output_shape)}, "
                             f"got {mask.shape}")
        return Rows(np.arange(n), np.full(n, -1), np.ascontiguousarray(mask), [{"mask": True}] * n)
    if kind not in KINDS:
        raise UsageError(f"unknown output kind '{kind}': use one of {', '.join(KINDS)}")
    plain = not isinstance(targets, Target) or targets.kind in ("top", "class")
    if kind != "classifier" or not plain:
        if not isinstance(targets, Target):
            if np.ndim(targets) != 0:
                raise UsageError(f"a {kind} output takes one target for every image: {VOCABULARY}")
            targets = Target("class", index=int(targets))
        if outputs is None:
            raise UsageError(f"target '{targets.kind}' needs the model outputs")
        outputs = np.asarray(outputs, np.float64)
        found = [_RESOLVERS[kind](targets, outputs[i], output_shape, boxes=None if boxes is None else boxes[i],
                                  input_size=input_size, blank=blank, labels=labels) for i in range(n)]
        seeds = np.stack([seed for seed, _, _ in found]).astype(np.float32)
        return Rows(np.arange(n), np.array([c for _, c, _ in found], int), seeds, [d for _, _, d in found])
    if isinstance(targets, Target):
        targets = targets.index
    n_classes = math.prod(int(d) for d in output_shape) if output_shape else 0
    if sum(d > 1 for d in output_shape) > 1:
        raise UsageError(f"class targets need a vector output, this one is shaped {output_shape}: "
                         "use an OutputMask or a structured target")
    per_image = _per_image_classes(targets, n, outputs, labels)
    flat = [c for classes in per_image for c in classes]
    if flat:
        _check_range(flat, n_classes)
    image = [i for i, classes in enumerate(per_image) for _ in classes]
    seeds = np.zeros((len(flat), n_classes), np.float32)
    for row, c in enumerate(flat):  # per item: numpy's fancy indexing costs more for the few rows of a call
        seeds[row, c] = 1
    return Rows(np.array(image, int), np.array([c % max(n_classes, 1) for c in flat], int),
                seeds.reshape(len(flat), *output_shape), [{} for _ in flat])


def one_class_each(targets, n, n_classes, labels=None):
    """The class (0..n_classes−1, int64) of each of ``n`` images for a class (an index, or a
    label) or a sequence of one per image: what :func:`resolve` finds for these targets, without
    the seeds.

    >>> one_class_each([2, -1, "b"], 3, 3, labels=["a", "b", "c"]).tolist()
    [2, 2, 1]
    """
    if isinstance(targets, (int, np.integer, str)):
        classes = [_class_index(targets, labels)] * n
    else:
        check_count(targets, n)
        classes = [_class_index(c, labels) for c in targets]
    _check_range(classes, n_classes)
    return np.array([c % n_classes for c in classes], np.int64)  # (a numpy % costs more, cold)


def _class_index(c, labels):
    """A class given as an int, or as a str (an index or one of ``labels``)."""
    return _class(c, labels, c) if isinstance(c, str) else int(c)


def check_count(targets, n):
    """A UsageError unless ``targets`` hold one target per image of ``n``."""
    if len(targets) != n:
        raise UsageError(f"got {len(targets)} targets for {n} images: give one per image")


def _check_range(classes, n_classes):
    if min(classes) < -n_classes or max(classes) >= n_classes:
        raise UsageError(f"target class out of range: the model has {n_classes} classes")


def _per_image_classes(targets, n, outputs, labels=None):
    """One list of class indices per image; classes may be given by label name."""
    if isinstance(targets, str):
        targets = parse(targets, labels)
    if targets is None or isinstance(targets, Target) and targets.kind == "top":
        if outputs is None:
            raise UsageError("target 'top' needs the model outputs")
        return [[int(c)] for c in np.asarray(outputs).reshape(n, -1).argmax(axis=1)]
    if isinstance(targets, Target):
        targets = targets.index
    if isinstance(targets, (int, np.integer)):
        return [[int(targets)]] * n
    targets = list(targets)
    check_count(targets, n)
    return [[_class_index(c, labels) for c in t] if isinstance(t, (list, tuple, np.ndarray)) else
            [_class_index(t, labels)] for t in targets]


HINTS = {"classifier": "use top or a class", "sequence": "use char:K or text",
         "dense": "use region:x1,y1,x2,y2, mask:FILE, channel:K or class:K"}


def _wrong(target, kind, shape):
    hint = HINTS.get(kind, "use box:K, box:x1,y1,x2,y2 or class:K")
    return UsageError(f"target '{target.kind}' does not apply to a {kind} output shaped {_shown(shape)}: {hint}")


def _shown(shape):
    return "×".join(str(d) for d in shape)


# --- detection ----------------------------------------------------------------------------


def detection_table(row, kind, boxes=None):
    """(xyxy A×4, class scores A×C) of one image's detection output row.

    yolov8: rows are (cx, cy, w, h, class scores...) × anchors; yolov5: anchors × (cx, cy, w, h,
    objectness, class scores...), a class score being objectness × class; boxes: scores A×C (or
    C×A when the other axis matches the boxes' A) with ``boxes`` A×4 xyxy; scores: A×C class
    scores whose boxes are not decoded in the graph (xyxy is None).

    >>> out = np.zeros((1, 6, 5)); out[0, :4, 2] = [10, 10, 4, 4]; out[0, 4, 2] = 0.9
    >>> xyxy, scores = detection_table(out[0], "yolov8")
    >>> xyxy[2].tolist(), scores.shape
    ([8.0, 8.0, 12.0, 12.0], (5, 2))
    """
    row = np.asarray(row, np.float64)
    if kind == "scores":
        return None, row
    if kind == "yolov8":
        centre, scores = row[:4].T, row[4:].T
    elif kind == "yolov5":
        centre, scores = row[:, :4], row[:, 4:5] * row[:, 5:]
    else:
        xyxy = np.asarray(boxes, np.float64)
        return xyxy, (row if row.shape[0] == len(xyxy) else row.T)
    cx, cy, w, h = centre.T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1), scores


def iou(box, boxes):
    """Intersection over union of one xyxy ``box`` with each of ``boxes`` (A×4).

    >>> iou((0, 0, 2, 2), np.array([[1, 1, 3, 3]])).round(4).tolist()
    [0.1429]
    """
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(np.asarray(box, np.float64)) + area(boxes) - inter, 1e-12)


def _detector(kind):
    def resolve_box(target, row, shape, boxes=None, **_):
        xyxy, scores = detection_table(row, kind, boxes)
        best = scores.max(axis=1)
        if target.kind in ("top", "box") and target.box is None:
            rank = target.index or 0
            if rank >= len(best):
                raise UsageError(f"target box:{rank}: the output has {len(best)} boxes")
            anchor = int(np.argsort(-best, kind="stable")[rank])
        elif target.kind == "box":
            if xyxy is None:
                raise UsageError("this output holds class scores without decoded boxes: use box:K or class:K")
            overlap = iou(target.box, xyxy)
            anchor = int(np.lexsort((-best, -overlap))[0])
        elif target.kind == "class":
            if not -scores.shape[1] <= target.index < scores.shape[1]:
                raise UsageError(f"target class {target.index} out of range: "
                                 f"the detector has {scores.shape[1]} classes")
            anchor = int(np.argmax(scores[:, target.index]))
        else:
            raise _wrong(target, kind, shape)
        c = int(target.index % scores.shape[1]) if target.kind == "class" else int(np.argmax(scores[anchor]))
        seed = np.zeros(shape, np.float64)
        if kind == "yolov8":
            seed[4 + c, anchor] = 1
        elif kind == "yolov5":
            seed[anchor, 4], seed[anchor, 5 + c] = row[anchor, 5 + c], row[anchor, 4]
        elif kind == "scores" or row.shape[0] == len(xyxy):
            seed[anchor, c] = 1
        else:
            seed[c, anchor] = 1
        detail = {"class": c, "score": float(scores[anchor, c]), "anchor": anchor,
                  "rank": int((best > best[anchor]).sum())}
        if xyxy is not None:
            detail["box"] = [round(float(v), 2) for v in xyxy[anchor]]
        return seed, c, detail
    return resolve_box


# --- sequences ----------------------------------------------------------------------------


def ctc_greedy(row, blank=0):
    """Greedy CTC decoding of one T×C row: per frame argmax, repeats collapsed, blanks dropped.

    Returns [(class, [frames])] — each decoded character with the frames that spell it.

    >>> [(int(c), frames) for c, frames in ctc_greedy(np.eye(3)[[1, 1, 0, 2, 2, 1]])]
    [(1, [0, 1]), (2, [3, 4]), (1, [5])]
    """
    best = np.asarray(row).argmax(axis=1)
    chars = []
    for t, c in enumerate(best):
        if t and c == best[t - 1]:
            if c != blank:
                chars[-1][1].append(t)
            continue
        if c != blank:
            chars.append((int(c), [t]))
    return chars


def _sequence(target, row, shape, blank=0, labels=None, **_):
    if not 0 <= blank < shape[1]:
        raise UsageError(f"blank {blank} out of range: the sequence has {shape[1]} classes")
    chars = ctc_greedy(row, blank)
    text = "".join(labels[c] if labels and c < len(labels) else f"[{c}]" for c, _ in chars)
    if target.kind in ("top", "text"):
        if not chars:
            raise UsageError(f"the decoded text is empty (every frame is blank {blank}): nothing to explain; "
                             "check the blank class (--blank) or explain another image")
        picked = chars
    elif target.kind == "char":
        if target.index >= len(chars):
            raise UsageError(f"target char:{target.index}: the decoded text '{text}' has {len(chars)} characters")
        picked = [chars[target.index]]
    else:
        raise _wrong(target, "sequence", shape)
    seed = np.zeros(shape, np.float64)
    for c, frames in picked:
        seed[frames, c] = 1
    detail = {"text": text, "frames": [t for _, frames in picked for t in frames]}
    if target.kind == "char":
        detail.update(char=target.index, **{"class": picked[0][0]})
    return seed, picked[0][0] if len(picked) == 1 else -1, detail


# --- dense maps ---------------------------------------------------------------------------


def _dense(target, row, shape, input_size=None, **_):
    channels, h, w = shape
    inside = np.ones((h, w), bool)
    if target.kind in ("region", "mask"):
        inside = _region(target.box, (h, w), input_size) if target.kind == "region" else _mask_file(target.mask, (h, w))
    elif target.kind not in ("top", "class", "channel"):
        raise _wrong(target, "dense", shape)
    c = target.index
    if c is None:
        c = int(np.argmax(row[:, inside].mean(axis=1)))
    if not -channels <= c < channels:
        raise UsageError(f"target {'class' if target.kind == 'class' else 'channel'} {c} out of range: "
                         f"the output has {channels} channels")
    c %= channels
    seed = np.zeros(shape, np.float64)
    seed[c][inside] = 1
    detail = {"class": int(c), "pixels": int(inside.sum())}
    if target.kind == "region":
        detail["region"] = list(target.box)
    return seed, int(c), detail


def _region(box, grid, input_size):
    """Output-grid cells covered by an xyxy box of input pixels (at least one cell)."""
    h, w = grid
    in_h, in_w = input_size or grid
    x1, y1, x2, y2 = box
    cols = slice(int(np.clip(np.floor(x1 * w / in_w), 0, w - 1)), int(np.clip(np.ceil(x2 * w / in_w), 1, w)))
    rows = slice(int(np.clip(np.floor(y1 * h / in_h), 0, h - 1)), int(np.clip(np.ceil(y2 * h / in_h), 1, h)))
    inside = np.zeros(grid, bool)
    inside[rows, cols] = True
    return inside


def _mask_file(path, grid):
    """A mask file (.npy, or an image read as gray) resized to the output grid; non-zero = inside."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            mask = np.load(path)
        except (OSError, ValueError) as err:
            raise UsageError(f"cannot read mask '{path}': give a .npy array or an image file") from err
    else:
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise UsageError(f"cannot read mask '{path}': give a .npy array or an image file")
    mask = np.squeeze(np.asarray(mask, np.float32))
    if mask.ndim != 2:
        raise UsageError(f"mask '{path}' must be 2-D (H×W), got shape {mask.shape}")
    inside = cv2.resize(mask, grid[::-1], interpolation=cv2.INTER_NEAREST) > 0
    if not inside.any():
        raise UsageError(f"mask '{path}' is empty: mark the region with non-zero pixels")
    return inside


def _classifier(target, row, shape, **_):
    raise _wrong(target, "classifier", shape)


_RESOLVERS = {"classifier": _classifier, "dense": _dense, "sequence": _sequence,
              **{kind: _detector(kind) for kind in DETECTION}}
