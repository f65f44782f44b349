"""Values for the graph inputs besides the image (a scale factor, an image-shape vector, a mask).

The batch rule: an extra input *follows the batch* when its first dim and the image's first dim
are both dynamic (symbolic, ``?`` or ``-1``); it is then given once — one row, or without the batch
axis — and repeated for every image of a run (a value with one row per image of the run is fed as
it is). Any other extra input is fed exactly as given, on every run.

>>> spec = ExtraInput("scale", np.dtype("float32"), ("N", 1), batched=True)   # as declared() finds it
>>> feed(spec, coerce(spec, 0.5), batch=4).shape
(4, 1)
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import helper

from engine.errors import InputShapeError, UsageError
from engine.graph.shapes import value_info_shape


@dataclass(frozen=True)
class ExtraInput:
    """A graph input besides the image: name, numpy dtype, declared dims, whether it follows the batch."""

    name: str
    dtype: np.dtype
    shape: tuple | None
    batched: bool

    def describe(self):
        """``scale (float32 ?×1)``: the name, dtype and dims as errors show them."""
        if self.shape is None:
            return f"{self.name} ({self.dtype.name} ?)"
        dims = "×".join(str(d) if isinstance(d, int) and d >= 0 else "?" for d in self.shape) or "scalar"
        return f"{self.name} ({self.dtype.name} {dims})"


def _dynamic(dim):
    return not isinstance(dim, int) or dim < 0


def declared(proto, image):
    """``{name: ExtraInput}`` for every graph input that is neither a weight nor ``image`` (an
    :class:`~engine.graph.shapes.ImageInput`), in graph order.

    >>> declared(model.proto, model.input)     # the doctest classifier has none
    {}
    """
    weights = {init.name for init in proto.graph.initializer}
    extras = {}
    for vi in proto.graph.input:
        if vi.name in weights or vi.name == image.name:
            continue
        dims = value_info_shape(vi)
        batched = bool(dims) and _dynamic(dims[0]) and _dynamic(image.shape[0])
        extras[vi.name] = ExtraInput(vi.name, np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)),
                                     dims, batched)
    return extras


def coerce(spec, value):
    """``value`` as an array of ``spec``'s dtype and rank: a missing first axis is added where the
    first dim is dynamic, and a flat list of the right count is reshaped to the declared dims (one
    row for a dynamic first dim). Raises InputShapeError.

    >>> coerce(ExtraInput("im_shape", np.dtype("float32"), ("N", 2), True), [480, 640]).shape
    (1, 2)
    """
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise InputShapeError(f"input '{spec.name}' takes numbers, got {array.dtype} values")
    cast = array.astype(spec.dtype)
    if spec.dtype.kind in "iu" and not np.array_equal(cast, array):
        raise InputShapeError(f"input '{spec.name}' takes {spec.dtype.name} values, got {array.ravel()[:4].tolist()}")
    dims = spec.shape
    lead = bool(dims) and _dynamic(dims[0])  # a dynamic first dim: one row fills it
    if dims is None or cast.ndim == len(dims):
        shaped = cast
    elif lead and cast.ndim == len(dims) - 1:
        shaped = cast[None]
    else:
        fixed = [1 if lead and k == 0 else d for k, d in enumerate(dims)]
        if any(_dynamic(d) for d in fixed) or int(np.prod(fixed)) != cast.size:
            raise InputShapeError(f"input {spec.describe()} cannot take a value of shape {list(cast.shape)}: "
                                  "give an array of the declared shape")
        shaped = cast.reshape(fixed)
    if dims is not None:
        for k, (d, s) in enumerate(zip(dims, shaped.shape)):
            if not _dynamic(d) and d != s and not (k == 0 and spec.batched):
                raise InputShapeError(f"input {spec.describe()} cannot take a value of shape {list(shaped.shape)}: "
                                      "give an array of the declared shape")
    return np.array(shaped, order="C")  # (ascontiguousarray would make a scalar 1-D)


def feed(spec, value, batch):
    """The array to feed for a run over ``batch`` images: a one-row value of a batched input is
    repeated ``batch`` times; other values are fed as they are.

    >>> feed(ExtraInput("s", np.dtype("float32"), ("N", 1), True), np.ones((1, 1), np.float32), 3).shape
    (3, 1)
    """
    if not spec.batched or value.shape[0] == batch:
        return value
    if value.shape[0] != 1:
        raise InputShapeError(f"input '{spec.name}' has {value.shape[0]} rows for a batch of {batch} images: "
                              "give one row (repeated for every image) or one per image")
    return np.ascontiguousarray(np.broadcast_to(value, (batch, *value.shape[1:])))


def parse(text):
    """``NAME=VALUE`` (a number or comma-separated numbers) or ``NAME=FILE.npy`` → (name, array).

    >>> parse("im_shape=480,640")
    ('im_shape', array([480., 640.]))
    """
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise UsageError(f"--input '{text}' is not NAME=VALUE: write it like scale=0.5, im_shape=480,640 or mask=m.npy")
    if value.endswith(".npy"):
        try:
            return name, np.load(Path(value), allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UsageError(f"--input {name}: cannot read '{value}' as a .npy array ({err})") from None
    try:
        return name, np.array([float(v) for v in value.split(",")]) if "," in value else np.array(float(value))
    except ValueError:
        raise UsageError(f"--input {name}={value}: give a number, comma-separated numbers or a .npy file") from None
