"""Maximally activating patches (Zeiler & Fergus, 2014): per channel, the dataset's top-k
activations and the receptive field around each, cropped from the image the model saw."""
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.analyze.accumulators import TopK
from engine.analyze.stream import run_size, stream
from engine.data.files import output_set, write_image, write_json
from engine.data.images import resize
from engine.errors import InputShapeError, LayerError, UsageError
from engine.graph.normalize import normalize
from engine.graph.receptive import box, receptive_fields
from engine.graph.taps import add_taps
from engine.scale import runner, shards
from engine.viz.grid import grid
from engine.viz.title import titled


@dataclass(frozen=True)
class Patches:
    """Top activations per channel: ``rows`` (dicts channel, rank, image, index, y, x, value,
    box), the receptive field of the layer, the input size and the model's resize policy (how
    an image became the input the boxes are drawn on)."""

    layer: str
    rows: list
    field: object
    size: tuple
    resize: str = "squash"


def layer_field(model, layer, size=None):
    """The receptive field (``engine.graph.receptive.Field``) of ``layer`` at the model's input
    size, or at ``size`` (H, W) for a model with dynamic spatial dims.

    >>> layer_field(model, "/layer1/relu_1/Relu_output_0").size
    (15, 15)
    """
    size = model.input_size or size
    if size is None:
        raise InputShapeError(f"'{model.path.name}' has dynamic spatial dims: give an input size, input_size=(H, W)")
    fields = receptive_fields(normalize(add_taps(model.proto, [layer]), input_size=size, inplace=True))
    if layer not in fields:
        raise LayerError(f"'{layer}' is not a 4-D feature map computed from the image: pick a conv layer")
    return fields[layer]


def parse_channels(text, available):
    """``all`` or a comma-separated list such as ``0,3,7`` → sorted channel indices.

    >>> parse_channels("7,0,3", available=16)
    [0, 3, 7]
    """
    if text in (None, "all"):
        return list(range(available))
    try:
        channels = sorted({int(v) for v in str(text).split(",") if v.strip()})
    except ValueError:
        raise UsageError(f"--channels '{text}' is not 'all' or a list like 0,3,7") from None
    if not channels or channels[0] < 0 or channels[-1] >= available:
        raise UsageError(f"--channels '{text}': the layer has channels 0..{available - 1}")
    return channels


@dataclass(frozen=True)
class PatchJob:
    """The top-k of a shard of ``source`` at ``layer`` (a step of :mod:`engine.scale`)."""

    source: object
    layer: str
    channels: object
    top: int
    batch_size: int

    def peaks(self, model, first, stop):
        """(chosen channel indices, TopK of images ``first .. stop-1`` over them)."""
        acc, chosen = None, None
        for start, _, _, acts in stream(model, self.source, [self.layer], self.batch_size, progress=False,
                                        first=first, stop=stop):
            maps = acts[self.layer]
            if chosen is None:
                chosen = parse_channels(self.channels, maps.shape[1])
                acc = TopK(len(chosen), self.top)
            acc.update(maps[:, chosen], start)
        return chosen, acc


def mine(model, source, layer, channels="all", top=9, batch_size=32, progress=None, scale=None):
    """Stream ``source`` and keep, per channel, the ``top`` images with the highest peak.
    ``scale``: run in shards on Ray (:class:`engine.scale.Scale`); the result is the same.

    >>> from engine.analyze.sources import from_synth
    >>> result = mine(model, from_synth(4), "layer1", channels="0,3", top=2)
    >>> result.rows[0]["box"]
    [29, 9, 44, 24]
    """
    layer = model.default_layer if layer == "auto" else model.layer(layer).name
    size = run_size(model, source)  # dynamic H×W: the size every batch runs at
    field = layer_field(model, layer, size)
    job, acc = PatchJob(source, layer, channels, int(top), int(batch_size)), None
    with runner(model, job, scale, job.batch_size, progress) as run:
        for chosen, part in run.map("peaks", shards(len(source), run.shard_size), label="patches"):
            acc = part if acc is None else acc.merge(part)
    best = acc.result()
    rows = []
    for j, channel in enumerate(chosen):
        for rank in range(best["image"].shape[1]):
            index, y, x = (int(best[k][j, rank]) for k in ("image", "y", "x"))
            rows.append({"channel": channel, "rank": rank, "image": source.names[index], "index": index,
                         "y": y, "x": x, "value": float(best["value"][j, rank]),
                         "box": list(box(field, y, x, size))})
    return Patches(layer, rows, field, size, model.preprocessing.resize)


def crop(image, bounds, fill=0):
    """The half-open ``(y0, x0, y1, x1)`` window of ``image``, padded with ``fill`` outside it.

    >>> crop(np.ones((4, 4, 3), np.uint8), (-1, -1, 2, 2))[0, 0]
    array([0, 0, 0], dtype=uint8)
    """
    y0, x0, y1, x1 = (int(v) for v in bounds)
    h, w = image.shape[:2]
    out = np.full((y1 - y0, x1 - x0, *image.shape[2:]), fill, image.dtype)
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def patch_tiles(result, channel, source_images, cell=64):
    """``channel``'s top patches as (uint8 RGB tile, activation value) pairs, best first: each
    receptive field clipped to the image (a tile is never larger than the image, never padded),
    scaled up by a whole factor to about ``cell`` px.

    ``source_images``: a function from image index to its uint8 RGB image.

    >>> from engine.analyze.sources import from_synth  # the same scenes as ``images``
    >>> result = mine(model, from_synth(4), "layer1", channels="3", top=2)
    >>> values = [value for _, value in patch_tiles(result, 3, lambda i: images[i])]
    >>> len(values), values == sorted(values, reverse=True)
    (2, True)
    """
    tiles = []
    for row in (r for r in result.rows if r["channel"] == channel):
        picture = resize(source_images(row["index"]), result.size, result.resize)
        h, w = picture.shape[:2]
        y0, x0, y1, x1 = row["box"]
        patch = crop(picture, (max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)))
        scale = max(1, cell // max(patch.shape[:2]))
        tiles.append((cv2.resize(patch, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST), row["value"]))
    return tiles


def patch_sheet(result, channel, source_images, cell=64, ncols=8, title=None):
    """The grid of ``channel``'s top patches (:func:`patch_tiles`, each labelled with its value)
    as a uint8 RGB array, titled ``title`` (default: layer and channel).

    >>> from engine.analyze.sources import from_synth
    >>> result = mine(model, from_synth(4), "layer1", channels="3", top=2)
    >>> patch_sheet(result, 3, lambda i: images[i]).dtype
    dtype('uint8')
    """
    tiles = patch_tiles(result, channel, source_images, cell)
    sheet = grid([t for t, _ in tiles], ncols=min(len(tiles), ncols), labels=[f"{v:.2f}" for _, v in tiles])
    return titled(sheet, f"{result.layer} channel {channel}" if title is None else title)


def write_patches(result, source_images, out, cell=64):
    """Write ``patches.json`` and one ``channel_NNNN.png`` sheet (:func:`patch_sheet`) per channel
    into ``out``.

    ``source_images``: a function from image index to its uint8 RGB image.

    >>> from engine.analyze.sources import from_synth
    >>> write_patches(mine(model, from_synth(4), "layer1", channels="3", top=2), lambda i: images[i], "out")
    >>> sorted(p.name for p in Path("out").iterdir())
    ['channel_0003.png', 'patches.json']
    """
    with output_set(out, ["patches.json", "channel_*.png"]) as stage:
        _write_patches(result, source_images, stage, cell)


def _write_patches(result, source_images, out, cell):
    for channel in dict.fromkeys(row["channel"] for row in result.rows):
        write_image(out / f"channel_{channel:04d}.png", patch_sheet(result, channel, source_images, cell=cell))
    write_json(out / "patches.json", {"layer": result.layer, "input_size": list(result.size),
                                      "field": {"size": result.field.size, "stride": result.field.stride,
                                                "offset": result.field.offset,
                                                "whole_image": result.field.whole_image},
                                      "patches": result.rows})
