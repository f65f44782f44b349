"""Planted ground truth: a small Shapes-style world and hand-built ONNX models (onnx.helper, no
training) whose units are exact concept detectors by construction.

The world (64×64, ``scenes``): one upright object of radius ``RADIUS`` (cross, square or circle,
at an integer centre) in a saturated colour (red, blue, green, yellow), on a grey background that
is flat, vertically striped (period ``PERIOD``) or a horizontal ramp. Its label maps use the
Shapes world's concept names (``synth.CONCEPTS``), so ``broden.write_concepts`` writes it.

The model (``planted_model``, input ``image`` with the ``unit`` preset) computes the layer
``units``, one channel per ``UNITS`` entry:

- ``blue``: 1×1 conv ``ReLU(B − (R + G)/2 − 0.15)`` (colour);
- ``stripes``: a quadrature pair of Gabor filters tuned to vertical stripes of period
  ``PERIOD`` on the luma, ``ReLU(|even| + |odd| − t)`` (texture frequency and orientation);
- ``cross``, ``square``: a binary silhouette (saturation, clipped), a matched filter of the
  shape's template (+1 inside, −1 in the rest of its box), thresholded at ``MATCH`` of the
  template's area, then painted back with the template (shape);
- ``ramp``: a tent of the horizontal luma derivative around the ramp's slope (background);
- ``constant`` (1 everywhere) and ``noise`` (a fixed random map, blind to the image): distractors.

Then ``GlobalAveragePool → Flatten → Gemm`` gives logits for ``CLASSES`` (cross, square, other).

>>> scene = scenes(30, seed=0); model = planted_model()
"""
import json

import cv2
import numpy as np
import onnx

from engine.data import synth
from engine.data.preprocess import LUMA
from tests.onnx_build import Builder

SIZE, RADIUS, PERIOD = 64, 12, 8
SHAPES = ("cross", "square", "circle")
OBJECT_COLORS = ("red", "blue", "green", "yellow")
BACKGROUNDS = ("flat", "stripes", "ramp")  # the ramp is the Shapes world's "gradient" background
UNITS = ("blue", "stripes", "cross", "square", "ramp", "constant", "noise")
CONCEPT_OF = {"blue": ("color", "blue"), "stripes": ("texture", "stripes"), "cross": ("shape", "cross"),
              "square": ("shape", "square"), "ramp": ("background", "gradient")}
DISTRACTORS = ("constant", "noise")
CLASSES = ("cross", "square", "other")
MATCH = 0.85  # a shape unit fires where its template matches more than this fraction of its area
GREY, WHITE = 125, 240
RAMP = (60, 2)  # ramp grey value = 60 + 2·x


def template(name):
    """Bool (2·RADIUS+1)² silhouette of an upright shape at the centre (as the scenes draw it)."""
    out = np.zeros((2 * RADIUS + 1,) * 2, np.uint8)
    _draw(out, name, RADIUS, RADIUS)
    return out.astype(bool)


def _draw(canvas, name, cx, cy):
    outline = synth._OUTLINES[synth.CLASSES.index(name)]
    cv2.fillPoly(canvas, [np.round((c * RADIUS + (cx, cy)) * 16).astype(np.int32) for c in outline], 1, shift=4)


def scenes(n, seed=0):
    """``n`` planted-world scenes as a ``synth.Scene`` (labels: index into ``SHAPES``).

    >>> scenes(4).images.shape
    (4, 64, 64, 3)
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    labels, masks = np.empty(n, np.int64), np.zeros((n, SIZE, SIZE), bool)
    maps = {family: np.zeros((n, SIZE, SIZE), np.uint8) for family in synth.CONCEPTS}
    code = lambda family, name: synth.CONCEPTS[family].index(name) + 1  # noqa: E731
    x = np.arange(SIZE)
    for i in range(n):
        labels[i], color, background = rng.integers(len(SHAPES)), rng.integers(len(OBJECT_COLORS)), i % 3
        grey = np.full((SIZE, SIZE), GREY, np.uint8)
        color_map = np.full((SIZE, SIZE), code("color", "gray"), np.uint8)
        if BACKGROUNDS[background] == "stripes":
            white = np.broadcast_to((x + rng.integers(PERIOD)) % PERIOD < PERIOD // 2, (SIZE, SIZE))
            grey[white] = WHITE
            color_map[white] = code("color", "white")
        elif BACKGROUNDS[background] == "ramp":
            grey[:] = RAMP[0] + RAMP[1] * x
        images[i] = grey[..., None]
        cx, cy = rng.integers(RADIUS + 2, SIZE - RADIUS - 2, size=2)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        _draw(mask, SHAPES[labels[i]], int(cx), int(cy))
        masks[i] = mask.astype(bool)
        images[i][masks[i]] = synth.COLORS[OBJECT_COLORS[color]]
        color_map[masks[i]] = code("color", OBJECT_COLORS[color])
        maps["color"][i] = color_map
        maps["shape"][i][masks[i]] = code("shape", SHAPES[labels[i]])
        texture = "stripes" if BACKGROUNDS[background] == "stripes" else "solid"
        maps["texture"][i] = np.where(masks[i], code("texture", "solid"), code("texture", texture))
        kind = "gradient" if BACKGROUNDS[background] == "ramp" else "flat"
        maps["background"][i] = np.where(masks[i], 0, code("background", kind))
    return synth.Scene(images, labels, masks, maps)


def gabor_pair(period=PERIOD, sigma=(2.5, 4.0)):
    """Even (zero-mean cosine) and odd (sine) Gabor kernels for vertical stripes, 9×17.

    >>> even, odd = gabor_pair(); even.shape
    (9, 17)
    """
    y, x = np.mgrid[-4:5, -8:9].astype(np.float64)
    envelope = np.exp(-(y / sigma[0]) ** 2 / 2 - (x / sigma[1]) ** 2 / 2)
    even = envelope * np.cos(2 * np.pi * x / period)
    even -= envelope * even.sum() / envelope.sum()
    odd = envelope * np.sin(2 * np.pi * x / period)
    return (even / np.abs(even).sum()).astype(np.float32), (odd / np.abs(odd).sum()).astype(np.float32)


def _conv(g, x, name, weight, bias, **attrs):
    """A 'same'-padded Conv (odd kernels) named ``name`` in the ``Builder`` ``g``."""
    k = np.shape(weight)[2:]
    weight, bias = g.const(np.float32(weight), name + ".w"), g.const(np.float32(bias), name + ".b")
    return g.op("Conv", [x, weight, bias], name=name, pads=[k[0] // 2, k[1] // 2, k[0] // 2, k[1] // 2], **attrs)


def planted_model(classifier_scale=100.0, seed=0):
    """The planted ONNX model (see the module docstring); ``units`` is the layer to dissect.

    >>> [i.name for i in planted_model().graph.input], [o.name for o in planted_model().graph.output]
    (['image'], ['logits'])
    """
    g = Builder()
    x = "image"
    blue_weights = np.array([-0.5, -0.5, 1.0]).reshape(1, 3, 1, 1)
    blue = g.op("Relu", [_conv(g, x, "blue_conv", blue_weights, [-0.15])], name="blue")

    even, odd = gabor_pair()
    bank = np.stack([even, -even, odd, -odd])[:, None] * LUMA[None, :, None, None]  # 4×3×9×17 on the luma
    gabor = g.op("Relu", [_conv(g, x, "gabor_conv", bank, np.zeros(4))], name="gabor")
    stripes = g.op("Relu", [_conv(g, gabor, "stripes_sum", np.ones((1, 4, 1, 1)), [-0.15])], name="stripes")

    pairs = [(0, 1), (1, 0), (1, 2), (2, 1), (2, 0), (0, 2)]  # |R−G| + |G−B| + |B−R| as six ReLUs
    diff = np.zeros((6, 3, 1, 1))
    for k, (a, b) in enumerate(pairs):
        diff[k, a], diff[k, b] = 1, -1
    chroma = g.op("Relu", [_conv(g, x, "chroma_conv", diff, np.zeros(6))], name="chroma")
    clipped = g.op("Relu", [_conv(g, chroma, "clip_conv", np.full((2, 6, 1, 1), 2.0), [0.0, -1.0])], name="clip")
    silhouette = _conv(g, clipped, "silhouette", np.array([1.0, -1.0]).reshape(1, 2, 1, 1), [0.0])  # min(1, 2·chroma)

    painted = {}
    for name in ("cross", "square"):
        shape = template(name)
        area = shape.sum()
        match = np.where(shape, 1.0, -1.0)[None, None]
        found = g.op("Relu", [_conv(g, silhouette, f"{name}_match", match, [-MATCH * area])], name=f"{name}_found")
        paint = shape[::-1, ::-1][None, None] / ((1 - MATCH) * area)  # a clean match paints 1 on the shape
        painted[name] = _conv(g, found, name, paint, [0.0])

    slope = RAMP[1] * 2 / 255  # the central difference of the ramp's luma
    deriv = (np.array([-1.0, 0.0, 1.0]) / slope)[None, None, None, :] * LUMA[None, :, None, None]
    edges = g.op("Relu", [_conv(g, x, "deriv", np.repeat(deriv, 3, axis=0), [-0.5, -1.0, -1.5])], name="deriv_relu")
    ramp = g.op("Relu", [_conv(g, edges, "tent", np.array([2.0, -4.0, 2.0]).reshape(1, 3, 1, 1), [0.0])], name="ramp")

    constant = _conv(g, x, "constant", np.zeros((1, 3, 1, 1)), [1.0])
    field = np.random.default_rng(seed).random((1, 1, SIZE, SIZE))
    blind = _conv(g, x, "blind", np.zeros((1, 3, 1, 1)), [0.0])
    noise = g.op("Add", [blind, g.const(np.float32(field), "noise_map")], name="noise")

    parts = {"blue": blue, "stripes": stripes, "ramp": ramp, "constant": constant, "noise": noise, **painted}
    units = g.op("Concat", [parts[u] for u in UNITS], name="units", axis=1)
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [units], name="gap")], name="pooled")
    weights = np.zeros((len(CLASSES), len(UNITS)))
    weights[0, UNITS.index("cross")] = weights[1, UNITS.index("square")] = classifier_scale
    typical = np.mean([template(n).sum() for n in ("cross", "square")]) / SIZE ** 2  # pooled clean detection
    bias = np.array([0.0, 0.0, classifier_scale * typical / 2])
    fc = [g.const(np.float32(weights), "fc.w"), g.const(np.float32(bias), "fc.b")]
    g.op("Gemm", [pooled, *fc], name="logits", transB=1)

    model = g.model([(x, ["N", 3, SIZE, SIZE])], [("logits", ["N", len(CLASSES)])], opset=17)
    for key, value in {"preprocess": "unit", "labels": json.dumps(list(CLASSES))}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model
