"""Shape inference at a chosen input size, with the batch dim left symbolic (onnx + numpy only).

``infer(model, {"image": ["batch", 3, 64, 64]})`` returns every tensor's element type and shape
as ONNX's shape inference sees it once the graph inputs carry the given dims.
"""
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.errors import ModelLoadError
from engine.graph.nodes import attrs
from engine.graph.weightless import without_weights

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})
INTEGER_PIXELS = frozenset({TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT16})  # images fed as raw pixels


@dataclass(frozen=True)
class TensorInfo:
    """Element type (``onnx.TensorProto`` enum) and shape: ints, symbolic names (str) or None."""

    elem_type: int
    shape: tuple | None

    @property
    def is_float(self):
        return self.elem_type in FLOAT_TYPES


def value_info_shape(value_info):
    """Return a ``ValueInfoProto``'s dims as a tuple of int / str / None, or None if rank is unknown.

    Unnamed dims and legacy negative sizes (``dim_value: -1``) are dynamic: None.

    >>> value_info_shape(onnx.helper.make_tensor_value_info("x", 1, ["N", 3, 8, 8]))
    ('N', 3, 8, 8)
    """
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return tuple(
        (d.dim_value if d.dim_value >= 0 else None) if d.HasField("dim_value") else (d.dim_param or None)
        for d in tensor_type.shape.dim
    )


def _set_dims(value_info, dims):
    shape = value_info.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif d:
            dim.dim_param = d


def infer(model, input_dims=None):
    """Infer the shapes of all tensors of the main graph; returns ``{name: TensorInfo}``.

    ``input_dims`` maps graph-input names to the dims to assume (int, symbolic name or None);
    the model passed in is not modified. Large weights are left out of the inference (they
    only count as typed graph inputs), so a 100 MB model is never copied or serialized whole.

    >>> infer(model.proto, {"image": ["batch", 3, 64, 64]})["/stem/stem.0/Conv_output_0"].shape
    ('batch', 24, 32, 32)
    """
    work, _ = without_weights(model)
    for value_info in work.graph.input:
        if input_dims and value_info.name in input_dims:
            _set_dims(value_info, input_dims[value_info.name])
    work.graph.ClearField("value_info")
    try:
        work = onnx.shape_inference.infer_shapes(work, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError):
        pass  # keep whatever the graph declares itself
    graph = work.graph
    infos = {}
    for value_info in (*graph.input, *graph.value_info, *graph.output):
        if value_info.type.HasField("tensor_type"):
            infos[value_info.name] = TensorInfo(value_info.type.tensor_type.elem_type, value_info_shape(value_info))
    for init in model.graph.initializer:
        infos[init.name] = TensorInfo(init.data_type, tuple(init.dims))
    return infos


@dataclass(frozen=True)
class ImageInput:
    """The model's image input: layout ``NCHW`` or ``NHWC``, channels (1 or 3), declared shape."""

    name: str
    layout: str
    channels: int
    dtype: np.dtype
    shape: tuple

    @property
    def size(self):
        """Declared (H, W); an entry is None where that dim is dynamic."""
        h, w = self.spatial_axes
        return tuple(d if isinstance(d, int) else None for d in (self.shape[h], self.shape[w]))

    @property
    def spatial_axes(self):
        """The axes of H and W: (2, 3) for NCHW, (1, 2) for NHWC."""
        return (2, 3) if self.layout == "NCHW" else (1, 2)

    @property
    def batch(self):
        """The declared batch size, or None when the batch dim is dynamic."""
        return self.shape[0] if isinstance(self.shape[0], int) else None

    @property
    def dynamic(self):
        """Letters (N, C, H, W) of the dims that are dynamic."""
        return tuple(axis for axis, d in zip(self.layout, self.shape) if not isinstance(d, int))


def image_input(model, source="the model"):
    """Find the image input and its layout: the first 4-D float graph input (else the first 4-D
    uint8/int8/uint16 one: raw pixels); any other input is an extra input the caller feeds.
    ``source`` names the model in errors.

    The layout is where a channel dim of 1 or 3 sits (NCHW wins when both fit); with a dynamic
    channel dim, RGB is assumed; with neither (e.g. 4 channels), NCHW.

    >>> image_input(onnx.load("model.onnx")).layout
    'NCHW'
    """
    initializers = {init.name for init in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    four_d = [vi for vi in inputs if len(value_info_shape(vi) or ()) == 4]
    images = [vi for vi in four_d if vi.type.tensor_type.elem_type in FLOAT_TYPES] \
        or [vi for vi in four_d if vi.type.tensor_type.elem_type in INTEGER_PIXELS]
    if not images:
        listed = ", ".join(f"{vi.name} {value_info_shape(vi)}" for vi in inputs) or "none"
        raise ModelLoadError(f"'{source}' has no 4-D float input (nor uint8) (inputs: {listed}): "
                             "onnxlens needs an N×C×H×W or N×H×W×C image input")
    vi = images[0]
    shape = value_info_shape(vi)
    channel_dims = {"NCHW": shape[1], "NHWC": shape[3]}
    fitting = [layout for layout, dim in channel_dims.items() if dim in (1, 3)]  # NCHW first when both fit
    unknown = [layout for layout, dim in channel_dims.items() if not isinstance(dim, int)]
    if fitting:
        layout, channels = fitting[0], channel_dims[fitting[0]]
    elif unknown:
        layout, channels = unknown[0], 3  # a dynamic channel dim: assume RGB
    else:
        layout, channels = "NCHW", shape[1]  # not an RGB/gray image: graph passes still apply
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    return ImageInput(vi.name, layout, channels, dtype, shape)


def declared_shapes(model):
    """``{tensor: [int | symbolic name | None, ...]}`` from the graph's inputs, value_info and
    outputs (run shape inference first for the intermediate tensors).

    >>> declared_shapes(model.proto)["image"]
    ['batch', 3, 64, 64]
    """
    graph = model.graph
    return {info.name: list(dims) for info in (*graph.input, *graph.value_info, *graph.output)
            if (dims := value_info_shape(info)) is not None}


def constant_tensors(graph):
    """name → TensorProto of every initializer and Constant output (any Constant attribute form).

    >>> onnx.numpy_helper.to_array(constant_tensors(model.proto.graph)["fc.weight"]).shape
    (8, 96)
    """
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            ((kind, value),) = attrs(node).items()
            if kind in ("value_float", "value_floats"):
                value = numpy_helper.from_array(np.array(value, np.float32))
            elif kind in ("value_int", "value_ints"):
                value = numpy_helper.from_array(np.array(value, np.int64))
            if isinstance(value, onnx.TensorProto):
                constants[node.output[0]] = value
    return constants
