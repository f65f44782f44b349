"""Static geometry of sliding-window ops (Conv, ConvTranspose, pools), shared by their rules."""
from dataclasses import dataclass

import numpy as np

from engine.errors import UnsupportedOpError
from engine.graph.nodes import attrs, same_pads


@dataclass
class Window:
    """Per spatial axis: kernel, stride, dilation, pads at begin/end, input and output sizes."""

    kernel: list
    strides: list
    dilations: list
    begin: list
    end: list
    inputs: list
    outputs: list

    @property
    def extent(self):
        """Span of a dilated kernel: (k − 1)·d + 1."""
        return [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations)]

    def transpose_pads(self):
        """Pads and output_padding of the ConvTranspose that maps an output-sized gradient back
        onto the input: full length s·(Y − 1) + extent, cropped by the begin pad, then cut or
        padded at the end to the input size."""
        ends = [s * (y - 1) + e - b - x for s, y, e, b, x in
                zip(self.strides, self.outputs, self.extent, self.begin, self.inputs)]
        return self.begin + [max(e, 0) for e in ends], [max(-e, 0) for e in ends]

    def phases(self):
        """Per spatial axis, per residue r < s of an input index i = s·q + r: (first, taps,
        shift) with dx[s·q + r] = Σ_{j < taps} w[s·j + first] · dy[q + shift − j] (dilation 1),
        the input gradient split into stride-1 correlations, one per output phase.

        Example: ``Window([3], [2], [1], [1], [1], [8], [4]).phases() == [[(1, 1, 0), (0, 2, 1)]]``.
        """
        return [[((r + b) % s, len(range((r + b) % s, k, s)), (r + b) // s) for r in range(s)]
                for k, s, b in zip(self.kernel, self.strides, self.begin)]


def static_spatial(ctx, node, name):
    """Spatial dims (all after N, C) of tensor ``name``; UnsupportedOpError naming ``node`` when
    one is symbolic.

    Example: ``static_spatial(ctx, node, node.input[0]) == [56, 56]``.
    """
    shape = ctx.shape(name)
    if shape is None or not all(isinstance(d, int) for d in shape[2:]):
        raise UnsupportedOpError(
            f"{node.op_type} {node.name!r} has symbolic spatial dims: give an input size: input_size=(H, W)")
    return list(shape[2:])


def window(ctx, node, kernel):
    """Window of a Conv or pooling ``node`` (input 0 → output 0) with ``kernel`` sizes.

    Example: ``window(ctx, conv3x3_pad1, [3, 3]).begin == [1, 1]``.
    """
    a = attrs(node)
    inputs = static_spatial(ctx, node, node.input[0])
    outputs = static_spatial(ctx, node, node.output[0])
    n = len(kernel)
    strides = a.get("strides") or [1] * n
    dilations = a.get("dilations") or [1] * n
    auto_pad = a.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = same_pads(inputs, strides, [(k - 1) * d + 1 for k, d in zip(kernel, dilations)], auto_pad)
    elif auto_pad == "VALID":
        begin, end = [0] * n, [0] * n
    else:
        pads = a.get("pads") or [0] * (2 * n)
        begin, end = list(pads[:n]), list(pads[n:])
    return Window(list(kernel), list(strides), list(dilations), begin, end, inputs, outputs)


def interleave(ctx, phases, positions, channels, strides, inputs, dtype):
    """The (N, C, *inputs) tensor whose element at index s·q + r (per spatial axis) is element q of
    the phase at ``positions`` r, from ``phases`` (N, C, L1, L2 each, L = ⌈input / s⌉, of numpy
    ``dtype``; a phase left out is zero): stacked and interleaved by one one-hot ConvTranspose
    (kernel = stride, one group per channel), cropped to ``inputs``. Uncropped, the phases are
    recorded in ``ctx.interleaved`` for a Conv rule that can read them instead (a stem's
    ConvTranspose, :func:`~engine.graph.rules.linear._transpose_phases`).

    Example: four 28×28 phases of 64 channels and ``strides`` [2, 2] make one 56×56 tensor.
    """
    lengths = [-(-x // s) for x, s in zip(inputs, strides)]
    stacked = phases[0]
    if len(phases) > 1:  # (N, C, P·L1, L2) holds (N, C, P, L1, L2): one phase per channel group of P
        stacked = ctx.op("Reshape", ctx.op("Concat", *phases, axis=2), ctx.ints([0, channels * len(phases), *lengths]))
    onehot = np.zeros((channels, len(phases), *strides), dtype)
    for i, position in enumerate(positions):
        onehot[(slice(None), i) + tuple(position)] = 1
    crop = [s * q - x for s, q, x in zip(strides, lengths, inputs)]
    out = ctx.op("ConvTranspose", stacked, ctx.const(onehot.reshape(-1, 1, *strides), "interleave"),
                 kernel_shape=list(strides), strides=list(strides), group=channels, pads=[0] * len(crop) + crop)
    if not any(crop):
        ctx.interleaved[out] = (list(phases), [tuple(p) for p in positions], list(strides))
    return out
