"""Shape inference at a chosen input size, with the batch dim left symbolic (onnx + numpy only).

``infer(model, {"image": ["batch", 3, 64, 64]})`` returns every tensor's element type and shape
as ONNX's shape inference sees it once the graph inputs carry the given dims.
"""
from dataclasses import dataclass

import onnx
from onnx import TensorProto

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})


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

    >>> value_info_shape(onnx.helper.make_tensor_value_info("x", 1, ["N", 3, 8, 8]))
    ('N', 3, 8, 8)
    """
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
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
    the model passed in is not modified.

    >>> infer(model, {"image": ["batch", 3, 64, 64]})["conv1"].shape
    ('batch', 16, 32, 32)
    """
    work = onnx.ModelProto()
    work.CopyFrom(model)
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
    for init in graph.initializer:
        infos[init.name] = TensorInfo(init.data_type, tuple(init.dims))
    return infos
