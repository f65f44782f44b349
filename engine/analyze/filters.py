"""Convolution filters and activation maps as pictures."""
import cv2
import numpy as np
from onnx import numpy_helper

from engine.data.images import as_rgb, resize
from engine.errors import LayerError
from engine.graph.shapes import constant_tensors
from engine.viz.grid import grid
from engine.viz.title import titled


def conv_weights(model, layer=None):
    """Weights (out×in×kh×kw float32) and output name of the Conv producing ``layer``, or of the
    graph's first Conv when ``layer`` is None.

    >>> conv_weights(model)[0].shape
    (24, 3, 3, 3)
    """
    graph = model.proto.graph
    constants = constant_tensors(graph)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    if layer is not None:
        convs = [n for n in convs if n.output[0] == layer]
        if not convs:
            model.layer(layer)  # an unknown name raises with close matches
            raise LayerError(f"'{layer}' is not the output of a Conv: give a Conv layer (see `onnxlens inspect`)")
    if not convs:
        raise LayerError(f"'{model.path.name}' has no Conv node")
    node = convs[0]
    if node.input[1] not in constants:
        raise LayerError(f"the weights of Conv '{node.output[0]}' are computed, not stored: pick another layer")
    return numpy_helper.to_array(constants[node.input[1]]).astype(np.float32), node.output[0]


def filter_tiles(weights, channel_order="RGB", cell=32):
    """One uint8 RGB tile per filter, each min-max normalized on its own; filters over 3 input
    channels are shown in colour, others as the mean over input channels in gray.

    >>> len(filter_tiles(np.random.rand(8, 3, 5, 5)))
    8
    """
    w = np.asarray(weights, np.float32)
    tiles = []
    for f in w:
        image = f.transpose(1, 2, 0) if f.shape[0] == 3 else f.mean(axis=0)[..., None]
        if f.shape[0] == 3 and channel_order == "BGR":
            image = image[..., ::-1]
        lo, hi = image.min(), image.max()
        image = np.rint((image - lo) / (hi - lo) * 255) if hi > lo else np.full_like(image, 128)
        image = np.repeat(image.astype(np.uint8), 3 // image.shape[2], axis=2)
        scale = max(1, cell // max(image.shape[:2]))
        tiles.append(cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST))
    return tiles


def filters_picture(model, layer=None, ncols=8, title=True):
    """A grid of the filters of the first Conv (or of ``layer``), titled with :func:`filters_caption`
    (``title=False``: no title bar, e.g. where the page captions it).

    >>> filters_picture(model).dtype
    dtype('uint8')
    """
    weights, name = conv_weights(model, layer)
    picture = grid(filter_tiles(weights, model.preprocessing.channel_order), ncols=ncols)
    return titled(picture, filters_caption(model, layer)) if title else picture


def filters_caption(model, layer=None):
    """What :func:`filters_picture` shows, e.g. "conv1: 24 filters 3x3 over 3 channels".

    >>> filters_caption(model)
    '/stem/stem.0/Conv_output_0: 24 filters 3x3 over 3 channels'
    """
    weights, name = conv_weights(model, layer)
    return f"{name}: {weights.shape[0]} filters {weights.shape[2]}x{weights.shape[3]} over {weights.shape[1]} channels"


def activations_picture(model, image, layer, ncols=8, cell=64):
    """The image (as the model sees it) beside every channel map of ``layer`` for it.

    Maps share one colour scale (the layer's min to max for this image, viridis) so channels
    compare; each map is enlarged to ``cell`` pixels.

    >>> activations_picture(model, "cat.png", "layer1").shape[2]
    3
    """
    name = model.layer(layer).name
    rgb = as_rgb(image)
    acts = model.run(model.preprocess([rgb]), activations=[name]).activations[name][0]
    lo, hi = float(acts.min()), float(acts.max())
    scaled = np.rint((acts - lo) / (hi - lo) * 255).astype(np.uint8) if hi > lo else np.zeros(acts.shape, np.uint8)
    tiles = []
    for plane in scaled:
        big = cv2.resize(plane, (cell, cell), interpolation=cv2.INTER_NEAREST)
        tiles.append(cv2.applyColorMap(big, cv2.COLORMAP_VIRIDIS)[..., ::-1])
    maps = grid(tiles, ncols=ncols, labels=[str(c) for c in range(len(tiles))])
    seen = resize(rgb, model.input_size or rgb.shape[:2])
    height = min(maps.shape[0], max(2 * cell, seen.shape[0]))
    seen = cv2.resize(seen, (round(seen.shape[1] * height / seen.shape[0]), height), interpolation=cv2.INTER_LINEAR)
    side = np.full((maps.shape[0], seen.shape[1] + 8, 3), 255, np.uint8)
    side[:height, 4:4 + seen.shape[1]] = seen
    return titled(np.concatenate([side, maps], axis=1), f"{name}: {len(acts)} maps, range {lo:.3g} .. {hi:.3g}")
