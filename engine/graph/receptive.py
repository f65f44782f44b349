"""Receptive-field arithmetic through an ONNX graph (for maximally activating patches).

For every tensor that depends on the image, a field is tracked per spatial axis as
``size`` (r), ``stride`` (j, input pixels between neighbouring positions) and ``offset`` (u, the
input coordinate of the top-left pixel seen by position 0; negative where padding was added).
A window op with kernel k, dilation d, stride s and leading padding p maps (r, j, u) to
``(r + (d*(k-1))*j, s*j, u - p*j)`` (Araujo et al., "Computing receptive fields of CNNs", 2019).

Rules:
- Conv, MaxPool, AveragePool, LpPool: the formula above (auto_pad SAME_UPPER/SAME_LOWER/VALID
  resolved with the input size; ceil_mode changes only the output length, not the field).
- Element-wise ops, channel-wise ops (BatchNormalization, LRN, Softmax/LayerNormalization and
  reductions over channels, MatMul over channels) and Concat/Split over channels keep the field;
  Transpose moves the spatial axes with the data; Pad and Slice on spatial axes shift it.
- Mixed branches (Add, Concat, ...) take the union of the branch fields: smallest offset, largest
  end. Branch strides are equal in practice; if they differ, the largest stride is kept and the
  union is that of position 0 (an approximation). An input broadcast from 1x1 spatial size onto a
  larger output (a squeeze-excitation gate, a global-context scale) counts as a per-channel
  modulation and does not widen the field.
- Global pooling, reductions/normalization over spatial axes (InstanceNormalization,
  GroupNormalization), Resize/Upsample, ConvTranspose, DepthToSpace/SpaceToDepth, Flatten,
  Reshape, Gemm, MatMul over a spatial axis and any op not listed make the field the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from engine.graph.shapes import declared_shapes, image_input


@dataclass(frozen=True)
class Field:
    """Receptive field of a feature map in input pixels, as ``(h, w)`` pairs.

    ``offset`` is the top-left input pixel seen by feature position (0, 0) (negative where the
    field reaches into padding). ``whole_image`` fields see every pixel; their ``size`` is the
    image size (None when the model's input size is symbolic) and their offset (0, 0).
    """

    size: tuple
    stride: tuple
    offset: tuple
    whole_image: bool = False


def receptive_fields(model: onnx.ModelProto) -> dict:
    """Field of every 4-D tensor computed from the image input of a normalized model.

    >>> from engine.graph.normalize import normalize
    >>> receptive_fields(normalize(model.proto, input_size=(64, 64)))["/layer1/relu_1/Relu_output_0"]
    Field(size=(15, 15), stride=(4, 4), offset=(-7, -7), whole_image=False)
    """
    graph = model.graph
    if not model.graph.value_info:
        model = onnx.shape_inference.infer_shapes(model)
    shapes = declared_shapes(model)
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                   if n.op_type == "Constant" and n.attribute[0].name == "value"})
    image = image_input(model)
    dims = shapes.get(image.name, [None] * 4)
    axes = image.spatial_axes
    image_size = tuple(dims[a] if isinstance(dims[a], int) and dims[a] > 0 else None for a in axes)
    states = {image.name: _State((1, 1), (1, 1), (0, 0), False, axes)}
    for node in graph.node:
        inputs = [states.get(name) for name in node.input]
        if not any(inputs):
            continue
        try:
            state = _propagate(node, inputs, shapes, consts)
        except (ValueError, IndexError, KeyError, TypeError, ZeroDivisionError):  # unknown → whole image
            state = _any(inputs).whole_image()
        for name in node.output:
            if name:
                states[name] = state
    return {name: state.field(image_size) for name, state in states.items()
            if len(shapes.get(name, ())) == 4}


def box(field: Field, y: int, x: int, image_size) -> tuple:
    """Input-space crop ``(y0, x0, y1, x1)`` (half-open, unclipped) seen by position (y, x).

    Coordinates may fall outside the image at borders; pad the image when cropping.

    Example:
        >>> box(Field((7, 7), (2, 2), (-3, -3)), 1, 0, (32, 32))
        (-1, -3, 6, 4)
    """
    if field.whole_image:
        return (0, 0, int(image_size[0]), int(image_size[1]))
    y0 = field.offset[0] + y * field.stride[0]
    x0 = field.offset[1] + x * field.stride[1]
    return (y0, x0, y0 + field.size[0], x0 + field.size[1])


# ------------------------------------------------------------------------------------ internals
@dataclass(frozen=True)
class _State:
    size: tuple
    stride: tuple
    offset: tuple
    whole: bool
    axes: tuple  # positions of the H and W axes in the tensor

    def field(self, image_size):
        if self.whole:
            return Field(image_size, _ints(self.stride), (0, 0), True)
        return Field(_ints(self.size), _ints(self.stride), _ints(self.offset), False)

    def whole_image(self, stride=None):
        return _State(self.size, stride or self.stride, (0, 0), True, self.axes)

    def with_axes(self, axes):
        return _State(self.size, self.stride, self.offset, self.whole, axes)


_WINDOW = {"Conv", "MaxPool", "AveragePool", "LpPool"}
_ELEMENTWISE = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softplus", "Softsign", "Mish", "Erf", "Gelu", "Exp", "Log", "Sqrt", "Pow",
    "Reciprocal", "Abs", "Neg", "Clip", "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean",
    "BatchNormalization", "Cast", "Identity", "Dropout", "QuantizeLinear", "DequantizeLinear",
    "Where", "Sign", "Floor", "Ceil", "Round", "ThresholdedRelu", "Shrink", "Sin", "Cos",
    "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Not", "Xor",
    "Expand", "LRN", "IsNaN", "IsInf", "Mod", "BitShift",
}
_AXIS_OPS = {"Softmax", "LogSoftmax", "Hardmax", "LayerNormalization"}


def _propagate(node, inputs, shapes, consts):
    op = node.op_type
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    data = inputs[0]
    if op in _WINDOW and data and not any(inputs[1:]):
        return _window(node, data, attrs, shapes, consts)
    if op in _ELEMENTWISE:
        return _union(node, inputs, shapes)
    if op == "Concat" or op == "Split":
        axis = attrs.get("axis", 0)
        rank = len(shapes.get(node.input[0], ())) or 4
        if axis % rank in _any(inputs).axes:
            return _any(inputs).whole_image()
        return _union(node, inputs, shapes)
    if data is None:
        return _any(inputs).whole_image()
    if op == "Transpose":
        rank = len(shapes.get(node.input[0], ())) or 4
        perm = list(attrs.get("perm") or reversed(range(rank)))
        if not all(a in perm for a in data.axes):  # axes of the tensor before a rank change
            return data.whole_image()
        return data.with_axes(tuple(perm.index(a) for a in data.axes))
    if op in _AXIS_OPS:
        rank = len(shapes.get(node.input[0], ())) or 4
        axis = attrs.get("axis", -1) % rank
        covered = range(axis, rank) if op == "LayerNormalization" else [axis]
        return data.whole_image() if set(covered) & set(data.axes) else data
    if op.startswith("Reduce"):
        return _reduce(node, data, attrs, shapes, consts)
    if op == "MatMul":
        rank = len(shapes.get(node.input[0], ())) or 4
        if inputs[1] is not None or (rank - 1) in data.axes:
            return data.whole_image()
        return data
    if op == "Pad":
        return _pad(node, data, attrs, shapes, consts)
    if op == "Slice":
        return _slice(node, data, shapes, consts)
    if op == "Resize" or op == "Upsample":
        return data.whole_image(_resized_stride(node, data, shapes))
    return data.whole_image()


def _any(inputs):
    return next(s for s in inputs if s is not None)


def _union(node, inputs, shapes):
    out_hw = _spatial(shapes.get(node.output[0]), _any(inputs).axes)
    branches = []
    for name, state in zip(node.input, inputs):
        if state is None:
            continue
        hw = _spatial(shapes.get(name), state.axes)
        if hw == (1, 1) and out_hw is not None and out_hw != (1, 1):
            continue  # a per-channel modulation (e.g. squeeze-excitation gate)
        branches.append(state)
    if not branches:
        return _any(inputs).whole_image()
    if len({b.axes for b in branches}) > 1 or any(b.whole for b in branches):
        return branches[0].whole_image()
    if len(branches) == 1:
        return branches[0]
    size, stride, offset = [], [], []
    for k in range(2):
        start = min(b.offset[k] for b in branches)
        end = max(b.offset[k] + b.size[k] for b in branches)
        size.append(end - start)
        stride.append(max(b.stride[k] for b in branches))
        offset.append(start)
    return _State(tuple(size), tuple(stride), tuple(offset), False, branches[0].axes)


def _window(node, data, attrs, shapes, consts):
    if data.axes != (2, 3):
        return data.whole_image()
    if node.op_type == "Conv":
        weight = consts.get(node.input[1])
        kernel = attrs.get("kernel_shape") or (
            weight.shape[2:] if weight is not None else shapes.get(node.input[1], [None] * 4)[2:])
    else:
        kernel = attrs["kernel_shape"]
    if len(kernel) != 2 or not all(isinstance(k, (int, np.integer)) for k in kernel):
        return data.whole_image()
    strides = attrs.get("strides", [1, 1])
    dilations = attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    in_hw = _spatial(shapes.get(node.input[0]), data.axes) or (None, None)
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    size, stride, offset = [], [], []
    for k in range(2):
        extent = dilations[k] * (kernel[k] - 1) + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            n = in_hw[k]
            total = (max((-(-n // strides[k]) - 1) * strides[k] + extent - n, 0)
                     if isinstance(n, int) else max(extent - strides[k], 0))
            begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        else:
            begin = 0 if auto_pad == "VALID" else pads[k]
        if data.whole:
            size.append(data.size[k])
        else:
            size.append(data.size[k] + (extent - 1) * data.stride[k])
        offset.append(data.offset[k] - begin * data.stride[k])
        stride.append(data.stride[k] * strides[k])
    return _State(tuple(size), tuple(stride), tuple(offset), data.whole, data.axes)


def _reduce(node, data, attrs, shapes, consts):
    rank = len(shapes.get(node.input[0], ())) or 4
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = consts.get(node.input[1])
        if axes is None:
            return data.whole_image()
    if axes is None or len(axes) == 0:
        return data if attrs.get("noop_with_empty_axes", 0) else data.whole_image()
    axes = {int(a) % rank for a in axes}
    if axes & set(data.axes):
        return data.whole_image()
    if attrs.get("keepdims", 1):
        return data
    return data.with_axes(tuple(a - sum(r < a for r in axes) for a in data.axes))


def _pad(node, data, attrs, shapes, consts):
    rank = len(shapes.get(node.input[0], ())) or 4
    pads = attrs.get("pads")
    if pads is None:
        pads = consts.get(node.input[1]) if len(node.input) > 1 else None
    if pads is None:
        return data.whole_image()
    pads = [int(p) for p in pads]
    pad_axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        given = consts.get(node.input[3])
        if given is None:
            return data.whole_image()
        pad_axes = [int(a) % rank for a in given]
    begins = dict(zip(pad_axes, pads[:len(pad_axes)]))
    offset = tuple(data.offset[k] - begins.get(data.axes[k], 0) * data.stride[k]
                   for k in range(2))
    return _State(data.size, data.stride, offset, data.whole, data.axes)


def _slice(node, data, shapes, consts):
    values = [consts.get(name) if name else None for name in node.input[1:]]
    starts, ends = values[0], values[1] if len(values) > 1 else None
    if starts is None or ends is None or any(
            name and value is None for name, value in zip(node.input[3:], values[2:])):
        return data.whole_image()
    dims = shapes.get(node.input[0], [])
    rank = len(dims) or 4
    axes = values[2] if len(values) > 2 and values[2] is not None else range(len(starts))
    steps = values[3] if len(values) > 3 and values[3] is not None else [1] * len(starts)
    offset, stride = list(data.offset), list(data.stride)
    for axis, start, step in zip(axes, starts, steps):
        axis = int(axis) % rank
        if axis not in data.axes:
            continue
        k = data.axes.index(axis)
        length = dims[axis] if axis < len(dims) else None
        if step < 1 or (start < 0 and not isinstance(length, int)):
            return data.whole_image()
        start = int(start) + (length if start < 0 else 0)
        if isinstance(length, int):
            start = min(max(start, 0), length)
        offset[k] += start * stride[k]
        stride[k] *= int(step)
    return _State(data.size, tuple(stride), tuple(offset), data.whole, data.axes)


def _resized_stride(node, data, shapes):
    before = _spatial(shapes.get(node.input[0]), data.axes)
    after = _spatial(shapes.get(node.output[0]), data.axes)
    if before is None or after is None:
        return None
    return tuple(data.stride[k] * before[k] / after[k] for k in range(2))


def _spatial(dims, axes):
    if not dims or max(axes) >= len(dims):
        return None
    hw = tuple(dims[a] for a in axes)
    return hw if all(isinstance(v, int) and v > 0 for v in hw) else None


def _ints(pair):
    if pair is None:
        return None
    return tuple(int(v) if float(v).is_integer() else float(v) for v in pair)


