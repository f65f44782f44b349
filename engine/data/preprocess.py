"""Preprocessing presets: uint8 RGB images → the float values a model was trained on.

``imagenet`` = (rgb/255 − mean)/std with mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225);
``unit`` = rgb/255; ``symmetric`` = rgb/127.5 − 1; ``raw`` = float(rgb) in 0–255.
Channel order ``RGB`` or ``BGR``. One-channel models get the luma (0.299 R + 0.587 G + 0.114 B)
and the channel means of ``mean``/``std``. ``mean``/``std`` may also be given per channel (in
RGB order, on the 0–1 scale of rgb/255, as torchvision writes them), replacing the preset's.
``resize``: how images are brought to the input size (``squash`` or ``shorter-side+center-crop``,
see :func:`engine.data.images.resize`).

Model metadata keys (``metadata_props``, written by ``onnxlens tag``): ``preprocess`` (a preset),
``channel_order``, ``mean`` and ``std`` (comma-separated numbers), ``resize``, ``labels`` (a JSON
list of class names).
"""
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from engine.errors import UsageError

# Per preset, the mean and std over 0–255 values: out = (value − mean) / std.
PRESETS = {
    "imagenet": (255 * np.array([0.485, 0.456, 0.406]), 255 * np.array([0.229, 0.224, 0.225])),
    "unit": (np.zeros(3), np.full(3, 255.0)),
    "symmetric": (np.full(3, 127.5), np.full(3, 127.5)),
    "raw": (np.zeros(3), np.ones(3)),
}
CHANNEL_ORDERS = ("RGB", "BGR")
RESIZE_POLICIES = ("squash", "shorter-side+center-crop")
FIELDS = ("preset", "channel_order", "mean", "std", "resize")
METADATA_KEYS = {"preset": "preprocess", "channel_order": "channel_order", "mean": "mean", "std": "std",
                 "resize": "resize"}  # field → metadata_props key
DEFAULT_GUESS = "default guess"
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class Preprocess:
    """A preset, a channel order, optional per-channel ``mean``/``std`` (0–1 scale, RGB order,
    replacing the preset's) and a resize policy; calling it maps uint8 N×H×W×3 RGB to float32
    (NHWC or NCHW). ``sources`` says where each field came from: "metadata", "option" or
    "default guess" (see :func:`resolve`).

    >>> float(Preprocess("unit")(np.full((1, 2, 2, 3), 255, np.uint8)).max())
    1.0
    """

    preset: str = "imagenet"
    channel_order: str = "RGB"
    mean: tuple | None = None
    std: tuple | None = None
    resize: str = "squash"
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise UsageError(f"unknown preprocessing preset '{self.preset}': use one of {', '.join(PRESETS)}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise UsageError(f"unknown channel order '{self.channel_order}': use RGB or BGR")
        if self.resize not in RESIZE_POLICIES:
            raise UsageError(f"unknown resize policy '{self.resize}': use {' or '.join(RESIZE_POLICIES)}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _channel_values(value, name))
        if self.std is not None and min(self.std) <= 0:
            raise UsageError(f"std must be positive, got {', '.join(map(str, self.std))}")

    def __call__(self, images, channels=3, layout="NHWC"):
        """Map uint8 N×H×W×3 RGB to float32 with ``channels`` (3 or 1) in ``layout`` (NHWC or NCHW)."""
        images = np.asarray(images)
        if channels == 1:
            x = (images.astype(np.float32) @ LUMA)[..., None]
        else:
            x = images[..., ::-1] if self.channel_order == "BGR" else images
        if layout == "NCHW":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # moved while still uint8: 4× less to copy
        elif channels == 3 and images.dtype == np.uint8 and images.size:  # NHWC: one lookup per value
            n, h, w, _ = images.shape
            rows = np.ascontiguousarray(images).reshape(n * h, w, 3)
            if self.channel_order == "BGR":
                rows = cv2.cvtColor(rows, cv2.COLOR_RGB2BGR)
            table = _table(self.preset, self.channel_order, self.mean, self.std)
            return cv2.LUT(rows, table).reshape(n, h, w, 3)
        scale, offset = _affine(self.preset, self.channel_order, channels, layout, self.mean, self.std)
        x = x.astype(np.float32)
        x *= scale
        x -= offset
        return x

    def affine(self):
        """float32 (scale, offset) of the 3-channel normalization value·scale − offset, one value per
        channel in the model's channel order (after the channels are reversed for BGR).

        >>> scale, offset = Preprocess("symmetric").affine()
        >>> bool(scale[0] == np.float32(1 / 127.5)), offset.tolist()
        (True, [1.0, 1.0, 1.0])
        """
        return _affine(self.preset, self.channel_order, 3, "NHWC", self.mean, self.std)

    def guessed(self):
        """The settings that change pixel values (preset, channel order) that no metadata or option
        set: their default was guessed. (A guessed resize, squash, is named in ``sources`` only:
        it moves pixels but keeps their values.)

        >>> resolve().guessed()
        ['preset', 'channel_order']
        """
        return [name for name in ("preset", "channel_order") if self.sources.get(name) == DEFAULT_GUESS]

    def to_dict(self):
        """JSON-ready fields (mean and std only where given).

        >>> Preprocess("unit", "BGR").to_dict()
        {'preset': 'unit', 'channel_order': 'BGR', 'resize': 'squash'}
        """
        fields = {name: getattr(self, name) for name in FIELDS}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items() if v is not None}


def _channel_values(value, name):
    """One number or three (a string 'a,b,c', or a sequence) → a tuple of 1 or 3 floats."""
    try:
        numbers = [float(v) for v in (value.split(",") if isinstance(value, str) else np.ravel(value))]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) not in (1, 3):
        raise UsageError(f"{name} takes one number or three (R,G,B on the 0–1 scale, e.g. 0.485,0.456,0.406), "
                         f"got {value!r}")
    return tuple(numbers)


@lru_cache(maxsize=None)
def _statistics(preset, mean, std):
    base_mean, base_std = PRESETS[preset]
    mean = base_mean if mean is None else np.broadcast_to(255 * np.array(mean), 3)
    std = base_std if std is None else np.broadcast_to(255 * np.array(std), 3)
    return np.array(mean, np.float64), np.array(std, np.float64)


@lru_cache(maxsize=None)
def _affine(preset, channel_order, channels, layout, mean=None, std=None):
    """float32 (scale, offset) with out = value·scale − offset, shaped to broadcast over the batch."""
    mean, std = _statistics(preset, mean, std)
    if channels == 1:
        mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
    elif channel_order == "BGR":
        mean, std = mean[::-1], std[::-1]
    shape = (-1, 1, 1) if layout == "NCHW" else (-1,)
    return (1.0 / std).astype(np.float32).reshape(shape), (mean / std).astype(np.float32).reshape(shape)


@lru_cache(maxsize=None)
def _table(preset, channel_order, mean=None, std=None):
    """1×256×3 float32 lookup table of every uint8 value per channel, computed as the affine map
    computes it (so a lookup gives the same float32 values).

    >>> float(_table("unit", "RGB")[0, 255, 0])
    1.0
    """
    scale, offset = _affine(preset, channel_order, 3, "NHWC", mean, std)
    table = np.arange(256, dtype=np.float32)[:, None] * scale
    table -= offset
    return table[None]


def resolve(option=None, metadata=None, inferred=None):
    """Choose the preprocessing: defaults (imagenet, RGB, squash) ← model metadata ← the option.

    ``option`` is None, a preset name, a mapping with keys among ``preset``, ``channel_order``,
    ``mean``, ``std``, ``resize``, or a :class:`Preprocess`; ``metadata`` is the model's
    ``metadata_props`` as a dict (keys :data:`METADATA_KEYS`). Fields the option sets win over
    the metadata, fields it leaves out come from the metadata, then from ``inferred`` (a pair
    ``(fields, reason)`` read off the graph, e.g. ``({"preset": "raw"}, "uint8 input")``); the
    result's ``sources`` records which ("option", "metadata", the reason or "default guess").

    >>> resolve({"preset": "unit", "channel_order": "BGR"})
    Preprocess(preset='unit', channel_order='BGR', mean=None, std=None, resize='squash')
    """
    if isinstance(option, Preprocess):
        return option
    fields, sources = {}, {}
    metadata = metadata or {}
    if inferred is not None:
        fields.update(inferred[0])
        sources.update(dict.fromkeys(inferred[0], inferred[1]))
    for name, key in METADATA_KEYS.items():
        value = metadata.get(key)
        if value and str(value).strip():
            fields[name], sources[name] = str(value).strip(), "metadata"
    if isinstance(option, str):
        option = {"preset": option}
    if option is not None:
        try:
            given = {k: v for k, v in dict(option).items() if v is not None}
        except (TypeError, ValueError):
            given = {repr(option): None}
        extra = set(given) - set(FIELDS)
        if extra:
            raise UsageError(f"preprocess takes a preset name or a mapping with keys {', '.join(FIELDS)}, "
                             f"got {sorted(extra)}")
        fields.update(given)
        sources.update(dict.fromkeys(given, "option"))
    if "channel_order" in fields:
        fields["channel_order"] = str(fields["channel_order"]).upper()
    sources.update({name: DEFAULT_GUESS for name in FIELDS if name not in sources and name not in ("mean", "std")})
    try:
        return Preprocess(**fields, sources=sources)
    except UsageError as err:
        if any(sources.get(name) == "metadata" for name in fields):
            raise UsageError(f"model metadata: {err} (or pass preprocess= to override it)") from err
        raise
