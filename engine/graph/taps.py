"""Expose intermediate tensors of an ONNX model as extra graph outputs ("taps")."""

from __future__ import annotations

import difflib

import onnx

from engine.errors import LayerError
from engine.graph.weightless import without_weights


def add_taps(model: onnx.ModelProto, names) -> onnx.ModelProto:
    """Return a copy of ``model`` whose outputs also include the tensors ``names``.

    Each tapped tensor becomes a graph output with the same name, appended after the existing
    outputs in the order given; outputs already present and repeated names are added once.
    Type and shape come from the model's value_info (shape inference fills gaps).
    A name that no node produces and no graph input carries raises LayerError with close names.

    >>> [o.name for o in add_taps(model.proto, ["/layer1/relu_1/Relu_output_0"]).graph.output]
    ['logits', '/layer1/relu_1/Relu_output_0']
    """
    names = list(dict.fromkeys([names] if isinstance(names, str) else names))
    graph = model.graph
    known = [i.name for i in graph.input] + [o for n in graph.node for o in n.output if o]
    known_set = set(known)
    for name in names:
        if name not in known_set:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
            hint = f" Close names: {', '.join(close)}." if close else ""
            raise LayerError(f"No tensor named {name!r} in the model.{hint} "
                             "List the tensors with `onnxlens inspect MODEL`.")
    present = {o.name for o in graph.output}
    wanted = [n for n in names if n not in present]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not wanted:
        return out
    infos = _value_infos(out)
    if any(n not in infos for n in wanted):  # infer on the weightless skeleton: no 100 MB round trip
        infos.update(_value_infos(onnx.shape_inference.infer_shapes(without_weights(out)[0])))
    for name in wanted:
        info = infos.get(name) or onnx.helper.make_empty_tensor_value_info(name)
        out.graph.output.append(info)
    return out


def _value_infos(model: onnx.ModelProto) -> dict:
    graph = model.graph
    infos = {}
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            infos[info.name] = info
    return infos
