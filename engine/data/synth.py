"""The Shapes world: a seeded procedural generator of labelled images with pixel ground truth.

Each image holds one main object whose *shape* is the class (``CLASSES``). Its colour, texture,
size, position and rotation are drawn independently of the class, on a coloured, textured
background with clutter (lines, arcs and blobs drawn behind the object), so only the shape tells
the class. Every image comes with the main object's mask and one label map per concept family
(``CONCEPTS``: shape, color, texture, background); a map holds ``1 + index`` into the family's
name list and 0 where the family does not apply.

Image ``i`` of ``generate(n, seed, start=s)`` depends only on ``(seed, s + i)`` (numpy's PCG64
seeded from that pair, OpenCV integer drawing), so any chunking gives the same images on every
machine.
"""
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from engine.data.preprocess import LUMA
from engine.errors import UsageError
from engine.memory import check_fits

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "heart")
COLORS = {
    "red": (215, 35, 35), "orange": (245, 135, 20), "yellow": (240, 220, 40),
    "green": (40, 165, 55), "cyan": (40, 205, 215), "blue": (35, 70, 215),
    "purple": (135, 50, 195), "pink": (245, 125, 185), "brown": (125, 75, 35),
    "white": (240, 240, 240), "gray": (125, 125, 125),
}
TEXTURES = ("solid", "stripes", "dots", "checker")
BACKGROUNDS = ("flat", "gradient", "grain")
CONCEPTS = {
    "shape": CLASSES + ("clutter",),
    "color": tuple(COLORS),
    "texture": TEXTURES,
    "background": BACKGROUNDS,
}

_RGB = np.array(list(COLORS.values()), np.float32)
_DARK = _RGB @ LUMA > 110


def _shade(amount):
    """Each colour pushed towards black (light colours) or white (dark ones) by ``amount``."""
    return np.where(_DARK[:, None], _RGB * (1 - amount), _RGB + (255 - _RGB) * amount)


# Tones by row: K colours, K background shades (milder), K object shades (second texture tone).
_TONES = np.concatenate([_RGB, _shade(0.25), _shade(0.45)])


@dataclass(frozen=True)
class Scene:
    """A batch of generated images with their ground truth.

    images: uint8 N×H×W×3 RGB; labels: int64 N (index into ``CLASSES``); masks: bool N×H×W
    (main object); concepts: family → uint8 N×H×W label maps (``1 + index`` into
    ``CONCEPTS[family]``, 0 = not applicable).
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    concepts: dict

    def __len__(self):
        return len(self.labels)


def _unit_outline(name):
    """Polygon contours (list of K×2 arrays) of a shape with outer radius 1 around the origin."""
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], 1)

    def regular(k, phase=-np.pi / 2):
        a = phase + np.arange(k) * 2 * np.pi / k
        return np.stack([np.cos(a), np.sin(a)], 1)

    if name == "circle":
        return [circle]
    if name == "ring":
        return [circle, 0.55 * circle]
    if name == "square":
        return [regular(4, np.pi / 4)]
    if name == "triangle":
        return [regular(3)]
    if name == "hexagon":
        return [regular(6)]
    if name == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return [np.stack([r * np.cos(a), r * np.sin(a)], 1)]
    if name == "cross":
        w = 0.32
        pts = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1),
               (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)]
        return [np.array(pts, np.float64) / np.hypot(1, w)]
    if name == "heart":
        t = np.linspace(0.3, 2 * np.pi - 0.3, 60)  # the notch cut wider than the curve's cusp
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], 1)
        pts -= (pts.max(0) + pts.min(0)) / 2
        return [pts / np.hypot(pts[:, 0], pts[:, 1]).max()]
    raise ValueError(name)


_OUTLINES = [_unit_outline(name) for name in CLASSES]


@lru_cache(maxsize=8)
def _tiles(h, w):
    """Precomputed 2H×2W tiles cropped at a random phase: texture patterns, ramps, grain."""
    scale = min(h, w) / 96
    y, x = np.mgrid[: 2 * h, : 2 * w].astype(np.float32)
    patterns = {"solid": [np.zeros((2 * h, 2 * w), np.uint8)], "stripes": [], "dots": [], "checker": []}
    for period in (7 * scale, 11 * scale):
        period = max(period, 3.0)
        for angle in np.deg2rad([0, 45, 90, 135]):
            u = x * np.cos(angle) + y * np.sin(angle)
            patterns["stripes"].append((np.mod(u, period) < period / 2).astype(np.uint8))
        dy, dx = np.mod(y, period) - period / 2, np.mod(x, period) - period / 2
        patterns["dots"].append((dx * dx + dy * dy < (0.3 * period) ** 2).astype(np.uint8))
        cell = period / 2 + 1
        patterns["checker"].append(((np.floor(x / cell) + np.floor(y / cell)) % 2).astype(np.uint8))
    ramps = []
    for angle in np.deg2rad([0, 90, 45, 135, 180, 270]):
        u = (x * np.cos(angle) + y * np.sin(angle)) / (2 * max(h, w))
        ramps.append((0.7 + 0.4 * (u - u.min()) / (u.max() - u.min())).astype(np.float32))
    grain = np.random.default_rng(96).normal(0, 16, (2 * h, 2 * w)).astype(np.float32)
    return [patterns[t] for t in TEXTURES], ramps, grain


def _crop(tile, rng, h, w):
    y, x = rng.integers(0, tile.shape[0] - h + 1), rng.integers(0, tile.shape[1] - w + 1)
    return tile[y: y + h, x: x + w]


def _fill(canvas, contours, value):
    cv2.fillPoly(canvas, [np.round(c * 16).astype(np.int32) for c in contours], int(value), shift=4)


def _clutter(rng, index, slot, h, w):
    """Draw one distractor (line, arc or blob) with palette ``slot`` into the index map."""
    s = min(h, w)
    kind = rng.integers(3)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    if kind == 0:
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.25, 0.6) * s
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        p = np.round(np.array([cx - dx, cy - dy, cx + dx, cy + dy]) * 16).astype(int)
        cv2.line(index, (p[0], p[1]), (p[2], p[3]), slot, max(1, round(rng.uniform(1, 3) * s / 96)), shift=4)
    elif kind == 1:
        axes = (max(2, round(rng.uniform(0.06, 0.15) * s)), max(2, round(rng.uniform(0.06, 0.15) * s)))
        start = rng.uniform(0, 360)
        cv2.ellipse(index, (round(cx), round(cy)), axes, 0, start, start + rng.uniform(90, 270), slot,
                    max(1, round(2 * s / 96)))
    else:
        k = rng.integers(5, 8)
        a = np.sort(rng.uniform(0, 2 * np.pi, k))
        r = rng.uniform(0.03, 0.09, k) * s
        _fill(index, [np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)], slot)


def _paint(index, palette):
    """Index map → H×W×3 image of the palette's colours (a 3-channel table lookup)."""
    table = np.zeros((256, 1, 3), palette.dtype)
    table[: len(palette), 0] = palette
    return cv2.LUT(cv2.merge([index] * 3), table)


def _render(rng, h, w, image, mask, maps):
    """Render one scene into the given output slices (``mask`` arrives zeroed); return its class."""
    patterns, ramps, grain = _tiles(h, w)
    n_colors, s = len(COLORS), min(h, w)
    label = rng.integers(len(CLASSES))
    obj_color, bg_color, *clutter_colors = rng.permutation(n_colors)[:5]
    obj_tex, bg_tex = rng.integers(len(TEXTURES), size=2)
    kind = rng.integers(len(BACKGROUNDS))

    # Palette slots: 0/1 background tones, 2/3 object tones, 4.. one per distractor.
    n_clutter = rng.integers(4)
    index = np.array(_crop(patterns[bg_tex][rng.integers(len(patterns[bg_tex]))], rng, h, w))
    for k in range(n_clutter):
        _clutter(rng, index, 4 + k, h, w)

    radius = rng.uniform(0.2, 0.36) * s
    cx, cy = rng.uniform(radius + 2, w - radius - 2), rng.uniform(radius + 2, h - radius - 2)
    angle = rng.uniform(0, 2 * np.pi)
    rot = radius * np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    _fill(mask.view(np.uint8), [c @ rot + (cx, cy) for c in _OUTLINES[label]], 1)
    obj_pattern = _crop(patterns[obj_tex][rng.integers(len(patterns[obj_tex]))], rng, h, w)
    np.copyto(index, obj_pattern + 2, where=mask)

    slots = np.array([bg_color, bg_color, obj_color, obj_color, *clutter_colors])
    palette = _TONES[[bg_color, n_colors + bg_color, obj_color, 2 * n_colors + obj_color, *clutter_colors]]
    codes = np.zeros((len(CONCEPTS), 256), np.uint8)  # label id of each slot, per family
    codes[0, 4:7] = len(CLASSES) + 1
    codes[1, :7] = slots + 1
    codes[2, :7] = np.array([bg_tex, bg_tex, obj_tex, obj_tex, 0, 0, 0]) + 1
    codes[3, :2] = kind + 1
    for k, family in enumerate(CONCEPTS):
        cv2.LUT(index, codes[k], dst=maps[family])
    np.copyto(maps["shape"], np.uint8(label + 1), where=mask)
    background = maps["background"]
    if BACKGROUNDS[kind] == "flat":
        image[:] = _paint(index, palette.astype(np.uint8))
    else:
        rgb = _paint(index, palette)
        if BACKGROUNDS[kind] == "gradient":
            rgb *= cv2.merge([np.where(background, _crop(ramps[rng.integers(len(ramps))], rng, h, w), 1)] * 3)
        else:
            rgb += cv2.merge([np.where(background, _crop(grain, rng, h, w), 0)] * 3)
        np.clip(rgb, 0, 255, out=rgb)
        image[:] = rgb
    return label


def generate(n, seed=0, size=(96, 96), start=0):
    """Generate ``n`` Shapes-world scenes; image ``i`` depends only on ``(seed, start + i)``.

    >>> scene = generate(8, seed=1)
    >>> scene.images.shape, [CLASSES[k] for k in scene.labels[:2]]
    ((8, 96, 96, 3), ['star', 'cross'])
    """
    h, w = (int(v) for v in size)
    if h < 16 or w < 16:
        raise UsageError(f"image size {h}x{w} is too small: use at least 16x16")
    if n < 0 or seed < 0 or start < 0:
        raise UsageError("n, seed and start must be non-negative integers")
    check_fits(n * h * w * (3 + 1 + len(CONCEPTS)), f"{n} generated {h}x{w} images with their masks",
               "generate fewer (--synth N, --n N) or smaller (--size HxW) images")
    images = np.empty((n, h, w, 3), np.uint8)
    labels = np.empty(n, np.int64)
    masks = np.zeros((n, h, w), bool)
    concepts = {family: np.empty((n, h, w), np.uint8) for family in CONCEPTS}
    for i in range(n):
        rng = np.random.default_rng([seed, start + i])
        maps = {family: m[i] for family, m in concepts.items()}
        labels[i] = _render(rng, h, w, images[i], masks[i], maps)
    return Scene(images, labels, masks, concepts)


def batches(n, seed=0, size=(96, 96), batch=256):
    """Yield the ``n`` scenes of ``generate(n, seed, size)`` as Scenes of at most ``batch`` images.

    >>> [len(s) for s in batches(600, seed=3)]
    [256, 256, 88]
    """
    for start in range(0, n, batch):
        yield generate(min(batch, n - start), seed=seed, size=size, start=start)
