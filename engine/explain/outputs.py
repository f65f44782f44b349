"""What an explained output is: its kind, where its batch axis is, and its logits.

The kind of an output is inferred from its real shape (one forward pass) by this rule; pass
``kind`` to override it:

1. at most one dim > 1 besides the batch (N×C, N×C×1×1, N×1×C) → ``classifier``;
2. rank 4 otherwise (N×C×H×W: segmentation, text detection) → ``dense``;
3. rank 3, N×A×4 with another output N×A×C or N×C×A (a boxes + scores pair) → ``boxes``, and the
   explained output becomes the scores; an N×A×C or N×C×A output with such a boxes partner → ``boxes``;
4. rank 3, N×A×C with another output N×A×4k (k > 1: box distributions, as PicoDet or YOLOv8
   heads exported without decoding) → ``scores`` (anchors' class scores, boxes not decoded);
5. rank 3 in a graph with an LSTM/GRU/RNN, or made by a (Log)Softmax → ``sequence`` (CTC);
6. rank 3 otherwise: fewer rows than columns → ``yolov8`` (N×(4+C)×A), else ``yolov5`` (N×A×(5+C)).

A graph output declared with static dims that make it a classifier is taken as declared (no
forward pass). Batch axis: the one of axes 0 and 1 that holds the batch size while the other does
not (axis 1: T×N×C recognizers); when both or neither do (one image, T = 1), the one that doubles
when the images are fed twice; else the declared symbolic batch's, else 0. Sequences: the classes are on
the axis of the final (Log)Softmax, else the last axis; the remaining axis is time.

>>> x = model.preprocess(images[:1])
>>> view = describe(model, x)
>>> view.kind, view.rows(model.run(x).outputs[0]).shape
('classifier', (1, 8))
"""
import weakref
from dataclasses import dataclass

import numpy as np

from engine.errors import OnnxlensError, UsageError
from engine.explain.targets import DETECTION, KINDS
from engine.graph.editing import default_opset
from engine.graph.nodes import attrs
from engine.runtime.session import RUN_ERRORS

RECURRENT = ("LSTM", "GRU", "RNN")
SOFTMAX = ("Softmax", "LogSoftmax")


@dataclass(frozen=True)
class OutputView:
    """The explained tensor ``name``, its ``kind``, the permutation ``perm`` that puts its batch
    first (and, for sequences, time then classes), its ``row_shape`` (one image's values in the
    tensor's own layout, at the size described), the ``boxes`` output of a detection pair and,
    when ``name`` is a Softmax's output, the Softmax input ``logits``."""

    name: str
    kind: str
    perm: tuple
    row_shape: tuple
    boxes: str | None = None
    logits: str | None = None

    def rows(self, values):
        """The tensor's values, batch first (sequences: N×T×C).

        >>> OutputView("out", "sequence", (1, 0, 2), (26, 37)).rows(np.zeros((26, 1, 37))).shape   # T×N×C
        (1, 26, 37)
        """
        return np.transpose(values, self.perm)

    def seeds(self, rows):
        """Seed rows (batch first) back in the tensor's own layout, for ``Model.run``.

        >>> OutputView("out", "sequence", (1, 0, 2), (26, 37)).seeds(np.zeros((1, 26, 37))).shape
        (26, 1, 37)
        """
        return np.ascontiguousarray(np.transpose(rows, np.argsort(self.perm)))

    def to_dict(self):
        """JSON-ready: name, kind, and the logits when the output is probabilities.

        >>> describe(model, model.preprocess(images[:1])).to_dict()
        {'name': 'logits', 'kind': 'classifier', 'probabilities': False, 'logits': None}
        """
        return {"name": self.name, "kind": self.kind, "probabilities": self.logits is not None,
                "logits": self.logits}


def producers(proto):
    """Map tensor name → the node that makes it.

    >>> producers(model.proto)["logits"].op_type
    'Gemm'
    """
    return {name: node for node in proto.graph.node for name in node.output}


def softmax_input(proto, name):
    """The input of the (Log)Softmax that makes ``name`` (through Identity nodes), or None.

    >>> softmax_input(model.proto, "logits") is None    # a Gemm makes the logits
    True
    """
    made = producers(proto)
    node = made.get(name)
    while node is not None and node.op_type == "Identity":
        node = made.get(node.input[0])
    return node.input[0] if node is not None and node.op_type in SOFTMAX else None


def forward(model, x, names):
    """Values of tensors ``names`` (graph outputs or intermediate tensors) for a batch ``x``.

    >>> forward(model, model.preprocess(images[:1]), ["logits"])["logits"].shape
    (1, 8)
    """
    outputs = [t.name for t in model.outputs]
    inner = [n for n in names if n not in outputs]
    result = model.run(x, activations=inner) if inner else model.run(x)
    values = dict(zip(outputs, result.outputs))
    values.update(result.activations)
    return {n: values[n] for n in names}


_CLASSIFIER_VIEWS = weakref.WeakKeyDictionary()  # model → {output name: OutputView of a static classifier}


def describe(model, x, output=None, kind=None, logits=False):
    """The :class:`OutputView` of ``output`` (the first output by default) from a forward pass on ``x``
    (a batch, or a function that makes one: called only where the view needs that pass).

    ``kind``: one of classifier, dense, yolov8, yolov5, boxes, sequence (None: the module's rule).
    ``logits``: explain the input of the final Softmax instead of the probabilities.

    >>> describe(model, model.preprocess(images[:1]), kind="dense").kind
    Traceback (most recent call last):
    engine.errors.UsageError: output 'logits' shaped 1×8 cannot be read as dense: use --output-kind classifier
    """
    outputs = [t.name for t in model.outputs]
    name = output or outputs[0]
    if kind is not None and kind not in KINDS:
        raise UsageError(f"unknown output kind '{kind}': use one of {', '.join(KINDS)}")
    if logits:
        inner = softmax_input(model.proto, name)
        if inner is None:
            raise UsageError(f"output '{name}' is not made by a Softmax: it already is the logits")
        name = inner
    declared = next((t.shape for t in model.outputs if t.name == name), None)
    if kind in (None, "classifier") and declared and all(isinstance(d, int) for d in declared[1:]) \
            and sum(d > 1 for d in declared[1:]) <= 1:  # a static classifier: no forward pass needed
        views = _CLASSIFIER_VIEWS.setdefault(model, {})
        if name not in views:  # once per model: finding the Softmax walks the whole graph
            views[name] = OutputView(name, "classifier", tuple(range(len(declared))), tuple(declared[1:]), None,
                                     softmax_input(model.proto, name))
        return views[name]
    x = x() if callable(x) else x
    values = forward(model, x, list(dict.fromkeys([name, *outputs])))
    n = len(x)
    batch_axis = _batch_axis(model, x, name, values[name].shape)
    shape = np.delete(values[name].shape, batch_axis)
    others = {o: v.shape for o, v in values.items() if o != name and np.ndim(v) == 3 and v.shape[0] == n}
    pair = _pair(shape, others) if batch_axis == 0 and len(shape) == 2 else None
    if pair and kind in (None, "boxes") and shape[1] == 4 and pair[1] != 4:
        name, shape, pair = pair[0], values[pair[0]].shape[1:], name   # explain the scores, not the coords
    elif pair:
        pair = pair[0]
    distributions = [v[1:] for v in others.values()]
    kind = kind or _kind(model.proto, name, shape, pair, distributions)
    if kind in DETECTION and len(shape) != 2 or kind == "dense" and len(shape) != 3 \
            or kind == "sequence" and len(shape) != 2:
        raise UsageError(f"output '{name}' shaped {'×'.join(map(str, values[name].shape))} cannot be read "
                         f"as {kind}: use --output-kind {_kind(model.proto, name, shape, pair, distributions)}")
    if kind == "boxes" and pair is None:
        raise UsageError(f"output kind 'boxes' needs a second output of N×A×4 boxes beside '{name}'")
    perm = [batch_axis, *[a for a in range(len(shape) + 1) if a != batch_axis]]
    if kind == "sequence":
        classes = _classes_axis(model.proto, name, len(shape) + 1)
        perm = [batch_axis, *[a for a in perm[1:] if a != classes], classes]
    return OutputView(name, kind, tuple(int(a) for a in perm), tuple(int(d) for d in shape),
                      pair if kind == "boxes" else None, softmax_input(model.proto, name))


def _batch_axis(model, x, name, shape):
    n = len(x)
    if len(shape) < 2:
        return 0
    if (shape[0] == n) != (shape[1] == n):
        return 0 if shape[0] == n else 1
    grown = _grown_axis(model, x, name, shape)
    if grown is not None:
        return grown
    declared = next((t.shape for t in model.outputs if t.name == name), None)
    return 1 if declared and len(declared) > 1 and declared[1] == "batch" and declared[0] != "batch" else 0


def _grown_axis(model, x, name, shape):
    """Axis 0 or 1 of ``name`` when it alone doubles as ``x`` is fed twice, else None (the model
    does not run at twice the batch, e.g. for lack of extra inputs of that batch)."""
    try:
        twice = forward(model, np.concatenate([x, x]), [name])[name].shape
    except (OnnxlensError, *RUN_ERRORS):
        return None
    grown = [a for a in (0, 1) if len(twice) == len(shape) and twice[a] == 2 * shape[a]
             and all(twice[b] == shape[b] for b in range(len(shape)) if b != a)]
    return grown[0] if len(grown) == 1 else None


def _pair(shape, others):
    """The other output of a boxes + scores pair with this one: (name, its last dim) or None."""
    anchors = set(shape) if shape[-1] == 4 else {shape[0], shape[1]}
    for other, dims in others.items():
        if shape[-1] == 4 and (dims[1] in anchors or dims[2] in anchors) and dims[2] != 4:
            return other, dims[2]
        if shape[-1] != 4 and dims[2] == 4 and dims[1] in anchors:
            return other, 4
    return None


def _kind(proto, name, shape, pair, distributions=()):
    if sum(d > 1 for d in shape) <= 1:
        return "classifier"
    if len(shape) == 3:
        return "dense"
    if len(shape) != 2:
        return "classifier"
    if pair:
        return "boxes"
    if any(d[0] == shape[0] and d[1] % 4 == 0 and d[1] > 4 for d in distributions):
        return "scores"
    if softmax_input(proto, name) is not None or any(node.op_type in RECURRENT for node in proto.graph.node):
        return "sequence"
    return "yolov8" if shape[0] < shape[1] else "yolov5"


def _classes_axis(proto, name, rank):
    made = producers(proto)
    node = made.get(name)
    while node is not None and node.op_type == "Identity":
        node = made.get(node.input[0])
    if node is None or node.op_type not in SOFTMAX:
        return rank - 1
    axis = attrs(node).get("axis", -1 if default_opset(proto) >= 13 else 1)
    return int(axis) % rank
