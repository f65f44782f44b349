"""Reading an ONNX file safely: external data is allowed only inside the model's own folder."""
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_model, uses_external_data

from engine.errors import ModelLoadError


def _tensors(graph):
    """Yield every TensorProto of a graph: initializers, sparse ones, Constant attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for subgraph in attr.graphs:
                yield from _tensors(subgraph)


def load(path):
    """Load an ONNX model with its external data, refusing data files outside the model's folder.

    >>> model = load("models/shapes-resnet.onnx")
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ModelLoadError(f"model '{path}' {what}: pass the path of an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"'{path}' is not a readable ONNX model ({type(err).__name__}): export it to ONNX again") from err
    if model.ir_version < 1 or not model.graph.node:
        raise ModelLoadError(f"'{path}' is not an ONNX model (no graph inside): export it to ONNX again")
    folder = path.parent.resolve()
    for tensor in _tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        target = (folder / location).resolve()
        if not target.is_relative_to(folder):
            raise ModelLoadError(
                f"'{path}' reads external data from '{location}', outside the model's folder: "
                "move the data file next to the model and re-save it with a relative location"
            )
        if not target.is_file():
            raise ModelLoadError(f"external data file '{location}' of '{path}' is missing: copy it next to the model")
    try:
        load_external_data_for_model(model, str(folder))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read the external data of '{path}': {err}") from err
    return model
