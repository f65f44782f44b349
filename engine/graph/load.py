"""Reading an ONNX file safely: external data is allowed only inside the model's own folder."""
from pathlib import Path

import onnx
from onnx import numpy_helper
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


MAX_LOOP_TRIPS = 10**6  # a Loop with a constant trip count above this is refused before it runs


def _check_loops(model, path):
    """Refuse Loop nodes whose trip count is a constant above MAX_LOOP_TRIPS (they would run
    until killed)."""
    constants = {t.name: t for t in model.graph.initializer}
    constants.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value"})
    for node in model.graph.node:
        if node.op_type != "Loop" or not node.input or node.input[0] not in constants:
            continue
        trips = numpy_helper.to_array(constants[node.input[0]])
        if trips.size == 1 and int(trips.reshape(())) > MAX_LOOP_TRIPS:
            raise ModelLoadError(f"Loop node '{node.name or node.output[0]}' of '{path}' runs {int(trips.reshape(()))} "
                                 f"iterations, more than onnxlens runs ({MAX_LOOP_TRIPS}): export it with fewer")


def load(path):
    """Load an ONNX model with its external data, refusing data files outside the model's folder.

    >>> load("model.onnx").graph.input[0].name
    'image'
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
        try:
            info = ExternalDataInfo(tensor)
        except (ValueError, TypeError) as err:
            raise ModelLoadError(f"'{path}' describes the external data of '{tensor.name}' wrongly ({err}): "
                                 "export it to ONNX again") from err
        if min(info.offset or 0, info.length or 0) < 0:
            raise ModelLoadError(f"'{path}' gives tensor '{tensor.name}' a negative external data offset or length: "
                                 "export it to ONNX again")
        location = info.location
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
    _check_loops(model, path)
    return model
