"""Reverse-mode differentiation as ONNX → ONNX rewriting.

The rewritten model takes one more input, ``SEED``, shaped like the seeded output, and returns
d(Σ seed · output)/d(t) as output ``grad_name(t)`` for each requested tensor ``t``. Only the cone
between the requested tensors and the output is differentiated; weights never are. The rules
live in :mod:`engine.graph.rules`.
"""
from collections import defaultdict

import onnx
from onnx import helper

from engine.errors import LayerError, UnsupportedOpError
from engine.graph.editing import copy_model, default_opset
from engine.graph.quantized import dequantized_constants
from engine.graph.nodes import upstream
from engine.graph.rules import Context, first_opset, input_gradients, rules_for
from engine.graph.rules.linear import join_phases
from engine.graph.shapes import FLOAT_TYPES, constant_tensors, value_info_shape

SEED = "onnxlens_seed"
MODES = ("standard", "guided", "deconvnet")


def grad_name(tensor):
    """Name of the output carrying the gradient of ``tensor``. Example: ``grad_name("x") == "x__grad"``."""
    return tensor + "__grad"


def differentiate(model, output, wrt, mode="standard"):
    """Add gradients of Σ seed · ``output`` w.r.t. each tensor in ``wrt`` as model outputs.

    ``model`` is a normalized model (shapes in value_info); ``wrt`` holds tensor names (the
    graph input's name for the input gradient). The original outputs are kept and the model
    runs for any batch size. ``mode``: ``standard``, ``guided`` (guided backprop) or
    ``deconvnet``; only the ReLU-family rules (Relu, LeakyRelu, PRelu) change with it.
    Raises LayerError for a bad request, UnsupportedOpError for an op without a rule on the path.

    Example: ``differentiate(model, "logits", ["image", "layer4"], mode="guided")``.
    """
    if mode not in MODES:
        raise LayerError(f"unknown backward mode {mode!r}: use one of {', '.join(MODES)}")
    wrt = list(dict.fromkeys([wrt] if isinstance(wrt, str) else wrt))
    model = copy_model(model)
    graph = model.graph
    constants = constant_tensors(graph)
    dequantized = dequantized_constants(graph, constants)
    constants.update(dequantized)  # quantized weights are weights too
    shapes, types = _tensor_info(graph, constants)
    _check_request(graph, shapes, types, constants, output, wrt)

    active = gradient_cone(graph.node, output, wrt, types)
    _fold_dequantized(graph, dequantized, active)
    used = set(shapes) | set(types) | set(constants) | {n.name for n in graph.node}
    used.update(t for n in graph.node for t in list(n.input) + list(n.output))
    used.add(SEED)
    opset = default_opset(model)
    ctx = Context(opset=opset, mode=mode, shapes=shapes, types=types, constants=constants, used_names=used,
                  forward=graph.node, requested=[*wrt, output, *(o.name for o in graph.output)])

    grads = defaultdict(list)
    grads[output].append(SEED)
    types[SEED] = types[output]
    totals = {}

    def total(name):
        if name not in totals:
            parts = join_phases(ctx, grads[name], name) if len(grads[name]) > 1 else grads[name]
            totals[name] = parts[0] if len(parts) == 1 else ctx.op("Sum", *parts)
            if types.get(name, onnx.TensorProto.FLOAT) in FLOAT_TYPES:
                types[totals[name]] = types.get(name, onnx.TensorProto.FLOAT)
        return totals[name]

    for node in reversed(graph.node):
        wanted = [i for i, name in enumerate(node.input) if name in active]
        if not (wanted and any(o in active for o in node.output)):
            continue
        out_grads = [total(o) if grads.get(o) else None for o in node.output]
        if all(g is None for g in out_grads):
            continue
        rules = rules_for(node, opset)
        if not rules:
            since = first_opset(node)
            raise UnsupportedOpError(
                f"no gradient rule for op {node.op_type} (node {node.name or node.output[0]!r}) on the "
                f"path from {', '.join(wrt)} to {output}" + (f" at opset {opset} (from opset {since} on): normalize "
                "the model, pick a layer after it" if since else ": pick a layer after it or request a rule"))
        ctx.node_name = node.name or node.output[0]
        try:
            in_grads = input_gradients(ctx, node, out_grads, wanted, rules)
        except (TypeError, ValueError) as err:  # a rule that needs a shape nothing could infer
            unknown = [t for t in (*node.input, *node.output) if t and ctx.shape(t) is None and ctx.value(t) is None]
            if not unknown:
                raise
            raise UnsupportedOpError(
                f"the gradient of {node.op_type} node {ctx.node_name!r} needs the shape of {unknown[0]!r}, which "
                "shape inference cannot find (a custom op, a Loop or a symbolic shape before it): pick a layer "
                "after it, or export the model with static shapes") from err
        for i, g in in_grads.items():
            grads[node.input[i]].append(g)

    for t in wrt:
        ctx.node_name = t
        g = total(t) if grads.get(t) else ctx.zeros_like(t)
        ctx.nodes.append(helper.make_node("Identity", [g], [grad_name(t)], name=ctx.fresh(grad_name(t))))

    read_by_forward = [t for rewrite in ctx.forward_rewrites.values() for n in rewrite for t in n.input]
    nodes, initializers = _prune(ctx.nodes, ctx.initializers, [*(grad_name(t) for t in wrt), *read_by_forward])
    graph.value_info.extend(_gradient_shapes(graph, nodes, grads, totals, shapes, types))
    if ctx.forward_rewrites:  # forward nodes a rule split (a HardSwish into its gate and a Mul)
        forward = [m for n in graph.node for m in ctx.forward_rewrites.get(n.output[0], [n])]
        del graph.node[:]
        graph.node.extend(forward)
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    graph.input.append(_value_info(SEED, types[output], shapes.get(output)))
    graph.output.extend(_value_info(grad_name(t), types.get(t, onnx.TensorProto.FLOAT), shapes.get(t)) for t in wrt)
    return model



def _tensor_info(graph, constants):
    shapes, types = {}, {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
            dims = value_info_shape(vi)
            if dims is not None:
                shapes[vi.name] = dims
    for name, t in constants.items():
        types[name] = t.data_type
        shapes[name] = tuple(t.dims)
    return shapes, types


def _check_request(graph, shapes, types, constants, output, wrt):
    if any(i.name == SEED for i in graph.input):
        raise LayerError("the model is already differentiated: pass the original (normalized) model")
    known = set(types) | {t for n in graph.node for t in n.output}
    for name in [output, *wrt]:
        if name not in known:
            raise LayerError(f"unknown tensor {name!r}: pick a name from the model's layer list")
        if name in constants:
            raise LayerError(f"{name!r} is a weight/constant: gradients are taken w.r.t. activations only")
        if types.get(name, onnx.TensorProto.FLOAT) not in FLOAT_TYPES:
            raise LayerError(f"{name!r} is not a float tensor: gradients exist for float tensors only")
    taken = [grad_name(t) for t in wrt if grad_name(t) in known]
    if taken:
        raise LayerError(f"the model already has a tensor named {taken[0]!r}: rename it before differentiating")
    if output not in shapes:
        raise LayerError(f"no shape known for output {output!r} (shape inference cannot see through a Loop or a "
                         "custom op before it): explain a layer before that op, or export the model with static shapes")


def gradient_cone(nodes, output, wrt, types):
    """Tensors that depend on some ``wrt`` tensor and feed ``output``: where gradients flow.
    ``types``: element type by tensor name (integer tensors carry no gradient).

    >>> sorted(gradient_cone(model.proto.graph.node, "logits", ["/Flatten_output_0"], {}))
    ['/Flatten_output_0', 'logits']
    """
    return _depends(nodes, wrt, types) & upstream(nodes, output)


def _depends(nodes, wrt, types):
    """Float tensors computed from some ``wrt`` tensor (and ``wrt`` itself)."""
    depends = set(wrt)
    for node in nodes:
        if any(i in depends for i in node.input):
            for o in node.output:
                # Integer tensors carry no gradient, except QuantizeLinear → DequantizeLinear pairs.
                if types.get(o, onnx.TensorProto.FLOAT) in FLOAT_TYPES or node.op_type == "QuantizeLinear":
                    depends.add(o)
    return depends


def _fold_dequantized(graph, dequantized, active):
    """Replace each DequantizeLinear of constants that feeds a node on the gradient cone by its
    float value (``dequantized``: from :func:`dequantized_constants`, the same float32 arithmetic).
    The backward reads the tensors those nodes feed (e.g. a Conv output's quantizer mask), so ORT
    cannot fuse them into integer kernels anyway, and would dequantize every weight on every run."""
    feeds_cone = {i for n in graph.node if any(t in active for t in n.input) for i in n.input}
    folded = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in dequantized
              and n.output[0] in feeds_cone]
    for node in folded:
        graph.node.remove(node)
        graph.initializer.append(dequantized[node.output[0]])
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unread = {i for n in folded for i in n.input} - read  # the quantized weights, scales, zero points
    kept = [t for t in graph.initializer if t.name not in unread]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _prune(nodes, initializers, outputs):
    """Drop backward nodes and constants that none of ``outputs`` (the requested gradients, the
    tensors rewritten forward nodes read) uses."""
    live = set(outputs)
    kept = []
    for node in reversed(nodes):
        if any(o in live for o in node.output):
            kept.append(node)
            live.update(node.input)
    return kept[::-1], [t for t in initializers if t.name in live]


def _gradient_shapes(graph, nodes, grads, totals, shapes, types):
    """value_info for each gradient a rule returned, and each sum of them: the shape of the tensor
    it is the gradient of. ONNX Runtime's own inference loses dims a rule computes (a Reshape to
    [-1, C, H, W]), and its NCHWc layout then cannot prove a gradient and its forward tensor the same
    shape: every Mul of the two went back to NCHW with reorders around it."""
    made = {o for n in nodes for o in n.output}
    declared = {vi.name for vi in [*graph.input, *graph.value_info, *graph.output]}
    gradients = {g: name for name, parts in grads.items() for g in parts}
    gradients.update({g: name for name, g in totals.items()})
    return [_value_info(g, types[name], shapes[name]) for g, name in gradients.items()
            if g in made and g not in declared and shapes.get(name) is not None and types.get(name) in FLOAT_TYPES]


def _value_info(name, elem_type, dims):
    return helper.make_tensor_value_info(name, elem_type, None if dims is None else list(dims))
