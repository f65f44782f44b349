"""Torch-free access to the wild corpus (`tests/fixtures/wild/`, made by `models/make_wild.py`).

`index.json` describes every model: where it comes from (own export or a PyPI package, with
version, sha256 and licence), its conventions, inputs, outputs and their meaning, the output a
user explains, a suggested Grad-CAM layer and its reference. Own exports come with an .npz of
torch-autograd references; PyPI files are checked against float64 central differences. PyPI files
too big to vendor are read from their installed package, else `locate` returns None.

Example:
    >>> import wild
    >>> ref = wild.reference("regnet_dynbatch")
    >>> ref.input.shape, ref.grad_input.shape
    ((2, 3, 64, 64), (2, 3, 64, 64))
"""
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx.reference.op_run import OpRun

DIR = Path(__file__).resolve().parent / "fixtures" / "wild"


@dataclass(frozen=True)
class Reference:
    """Torch references of one own export (float32, the model in eval mode)."""

    input: np.ndarray  # the batch fed (uint8 for uint8-input models)
    seed: np.ndarray  # random normal, shaped like the explained (first) output
    output: np.ndarray
    grad_input: np.ndarray  # d(Σ seed · output)/d(input), or d/d(the Cast's float output) for uint8
    layer: str  # the ONNX tensor of the suggested Grad-CAM layer
    act_layer: np.ndarray
    grad_layer: np.ndarray  # d(Σ seed · output)/d(layer)
    extras: dict  # {input name: array} for inputs beyond the image


def index():
    """{name: entry} for every model the generator made (failed ones left out)."""
    entries = json.loads((DIR / "index.json").read_text())
    return {name: e for name, e in entries.items() if "failed" not in e}


def names(origin=None):
    """Sorted model names; ``origin``: "own export" or "pypi" to keep only those."""
    return sorted(n for n, e in index().items() if origin is None or e["origin"] == origin)


def locate(name):
    """The model's file: vendored here, else inside its installed package; None when absent."""
    entry = index()[name]
    vendored = DIR / entry["file"]
    if vendored.exists():
        return vendored
    if entry["origin"] != "pypi":
        return None
    top = entry["package_file"].split("/")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.parent / entry["package_file"]
    return path if path.exists() else None


def reference(name):
    """The torch references of an own export, or of the float model it was converted from."""
    entry = index()[name]
    with np.load(DIR / entry["reference"].split()[0]) as z:
        data = {k: z[k] for k in z.files}
    return Reference(
        input=data["input"], seed=data["seed"], output=data["output"], grad_input=data["grad_input"],
        layer=str(data["layer"]), act_layer=data["act_layer"], grad_layer=data["grad_layer"],
        extras={k.removeprefix("extra_"): v for k, v in data.items() if k.startswith("extra_")})


def float64_copy(model, input_name):
    """``model`` computing in float64, its image input renamed "image" (as tests/gradcheck.py
    expects): float initializers, Constants, Casts and declared types become double."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float64)))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
        node.input[:] = ["image" if i == input_name else i for i in node.input]
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    for vi in graph.input:
        if vi.name == input_name:
            vi.name = "image"
    return out


def quantization_points(model):
    """(DequantizeLinear(QuantizeLinear(a)) nodes, DynamicQuantizeLinear nodes, the tensors whose
    values :func:`frozen_quantization` needs) of a dequantized form (see engine.graph.quantized)."""
    made = {o: n for n in model.graph.node for o in n.output}
    pairs = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in made
             and made[n.input[0]].op_type == "QuantizeLinear"]
    dynamic = [n for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"]
    names = [t for n in pairs for t in (made[n.input[0]].input[0], n.output[0])] + [t for n in dynamic for t in n.output[1:]]
    return pairs, dynamic, list(dict.fromkeys(names))


def frozen_quantization(model, values):
    """``model`` (a dequantized form) with its quantization frozen at the forward ``values``
    ({tensor: array} of :func:`quantization_points`' tensors, from the run whose gradient is checked):
    each DequantizeLinear(QuantizeLinear(a)) becomes a + r, r its rounding there, and each
    DynamicQuantizeLinear's scale and zero point their values there. Its forward is the quantized
    one at that input and its derivative the straight-through one, so float64 central differences
    of it (forward passes only) check a straight-through gradient."""
    pairs, dynamic, _ = quantization_points(model)
    made = {o: n for n in model.graph.node for o in n.output}
    rounded = {n.output[0]: made[n.input[0]].input[0] for n in pairs}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    frozen, nodes = [], []
    for node in out.graph.node:
        if node.op_type == "DynamicQuantizeLinear":
            frozen += [numpy_helper.from_array(np.asarray(values[t]), t) for t in node.output[1:]]
        elif node.op_type == "DequantizeLinear" and node.output[0] in rounded:
            a = rounded[node.output[0]]
            residual = numpy_helper.from_array(values[node.output[0]] - values[a], node.output[0] + "_rounding")
            frozen.append(residual)
            nodes.append(onnx.helper.make_node("Add", [a, residual.name], [node.output[0]]))
        else:
            nodes.append(node)
    used = {i for n in nodes for i in n.input} | {o.name for o in out.graph.output}
    nodes = [n for n in nodes if n.op_type != "QuantizeLinear" or n.output[0] in used]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(frozen)
    del out.graph.value_info[:]
    return out


class BatchNormalization(OpRun):
    """Inference-mode BatchNormalization as the spec writes it (onnx 1.23's reference gives other
    values on the opset-12 nodes of PP-OCRv4 rec, where ONNX Runtime agrees with the formula)."""

    op_domain = ""

    def _run(self, x, scale, bias, mean, var, epsilon=1e-5, momentum=None, training_mode=None, spatial=None):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + epsilon) * scale.reshape(shape)
        return (y + bias.reshape(shape),)


NEW_OPS = [BatchNormalization]  # new_ops of onnx's ReferenceEvaluator for the float64 references
