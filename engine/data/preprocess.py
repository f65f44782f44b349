"""Preprocessing presets: uint8 RGB images → the float values a model was trained on.

``imagenet`` = (rgb/255 − mean)/std with mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225);
``unit`` = rgb/255; ``symmetric`` = rgb/127.5 − 1; ``raw`` = float(rgb) in 0–255.
Channel order ``RGB`` or ``BGR``. One-channel models get the luma (0.299 R + 0.587 G + 0.114 B)
and the channel means of ``mean``/``std``.
"""
from dataclasses import asdict, dataclass

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
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class Preprocess:
    """A preset and a channel order; calling it maps uint8 N×H×W×3 RGB to float32 N×H×W×C.

    >>> Preprocess("unit")(np.full((1, 2, 2, 3), 255, np.uint8)).max()
    1.0
    """

    preset: str = "imagenet"
    channel_order: str = "RGB"

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise UsageError(f"unknown preprocessing preset '{self.preset}': use one of {', '.join(PRESETS)}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise UsageError(f"unknown channel order '{self.channel_order}': use RGB or BGR")

    def __call__(self, images, channels=3):
        mean, std = PRESETS[self.preset]
        images = np.asarray(images)
        if channels == 1:
            x = (images.astype(np.float32) @ LUMA)[..., None]
            mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
        else:
            x = images.astype(np.float32)
            if self.channel_order == "BGR":
                x, mean, std = x[..., ::-1], mean[::-1], std[::-1]
        scale = (1.0 / std).astype(np.float32)
        offset = (mean / std).astype(np.float32)
        return x * scale - offset

    def to_dict(self):
        return asdict(self)


def resolve(option=None, metadata=None):
    """Choose the preprocessing: defaults (imagenet, RGB) ← model metadata ← the explicit option.

    ``option`` is None, a preset name, a mapping with keys ``preset`` and/or ``channel_order``,
    or a :class:`Preprocess`; ``metadata`` is the model's ``metadata_props`` as a dict. Fields
    the option sets win over the metadata, fields it leaves out come from the metadata.

    >>> resolve({"preset": "unit", "channel_order": "BGR"})
    Preprocess(preset='unit', channel_order='BGR')
    """
    fields = {}
    metadata = metadata or {}
    for key in ("preset", "channel_order"):
        value = metadata.get("preprocess" if key == "preset" else key)
        if value:
            fields[key] = value.strip()
    if isinstance(option, Preprocess):
        return option
    if isinstance(option, str):
        fields["preset"] = option
    elif option is not None:
        try:
            extra = set(option) - {"preset", "channel_order"}
        except TypeError:
            extra = {repr(option)}
        if extra:
            raise UsageError(
                f"preprocess takes a preset name or a mapping with keys preset and channel_order, got {sorted(extra)}"
            )
        fields.update(option)
    if "channel_order" in fields:
        fields["channel_order"] = str(fields["channel_order"]).upper()
    return Preprocess(**fields)
