"""Adapters from an :class:`engine.Model` to what the pure methods take: one capture of
activations and gradients, gradient and score callables, the FC head for CAM, and the network
from a layer to an output for Ablation-CAM.

>>> outputs, acts, grads = capture(model, x, ["layer4"], seeds)
"""
import functools
import weakref

import numpy as np
from onnx import helper, numpy_helper

from engine.errors import LayerError
from engine.graph.autodiff import SEED, differentiate, grad_name
from engine.graph.normalize import normalize
from engine.graph.shapes import constant_tensors
from engine.runtime.batch import in_chunks
from engine.runtime.session import create_session


def _per_model(build):
    """Cache what ``build(model, *args)`` returns for as long as ``model`` lives (sessions on
    rewritten sub-graphs are built once per model, not once per call)."""
    cache = weakref.WeakKeyDictionary()

    @functools.wraps(build)
    def cached(model, *args):
        per_model = cache.setdefault(model, {})
        if args not in per_model:
            per_model[args] = build(model, *args)
        return per_model[args]

    return cached


def output_names(model):
    """The model's output names, in order.

    >>> output_names(model)
    ['logits']
    """
    return [t.name for t in model.outputs]


def layers_of(model, layer):
    """Resolve ``layer``: "auto" (the model's default layer), a name, a comma-separated list or a list.

    Unknown names raise LayerError (through ``model.layer``).

    >>> layers_of(model, "layer3, layer4")
    ['layer3', 'layer4']
    """
    if layer in (None, "auto"):
        return [model.default_layer]
    names = [s.strip() for s in layer.split(",")] if isinstance(layer, str) else list(layer)
    for name in names:
        model.layer(name)
    return names


def capture(model, x, layers, seeds=None, output=None):
    """One pass: model outputs, activations at ``layers`` and, with ``seeds``, their gradients.

    ``seeds`` (one row per row of ``x``) seed Σ seed·``output`` (the first output by default).
    Returns (outputs, {layer: A}, {layer: G} or None).

    >>> outputs, acts, grads = capture(model, x, ["layer4"], seeds=np.eye(8)[[3]])
    """
    output = output or output_names(model)[0]
    if seeds is None:
        result = model.run(x, activations=list(layers))
        return result.outputs, {n: result.activations[n] for n in layers}, None
    result = model.run(x, activations=list(layers), gradients=list(layers), seed={output: seeds})
    return (result.outputs, {n: result.activations[n] for n in layers},
            {n: result.gradients[n] for n in layers})


def gradient_fn(model, output=None):
    """``gradient(x, seeds, mode)`` = ∂(Σ seed·output)/∂x through ``model.run``.

    >>> gradient_fn(model)(x, seeds, "guided").shape == x.shape
    True
    """
    output = output or output_names(model)[0]

    def gradient(x, seeds, mode="standard"):
        return model.run(x, gradients=["input"], seed={output: seeds}, mode=mode).gradients["input"]

    return gradient


def scores_fn(model, output=None):
    """``scores(x)`` = the model's ``output`` (first by default) for a batch ``x``; forward only.

    >>> scores_fn(model)(x).shape
    (1, 8)
    """
    index = output_names(model).index(output) if output else 0
    return lambda x: model.run(x).outputs[index]


def fc_head(model, output=None):
    """Find ``A → global average (GlobalAveragePool, or ReduceMean over axes 2, 3) →
    (Flatten | Reshape | Squeeze)* → Gemm | MatMul (+Add) → output``
    (optionally → Softmax → output) and return (layer name of A, FC weights classes×K).

    Raises LayerError, suggesting Grad-CAM, when the model has no such head.

    >>> layer, weights = fc_head(model)
    """
    proto = model.proto
    output = output or output_names(model)[0]
    consumers = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    consts = {name: numpy_helper.to_array(t) for name, t in constant_tensors(proto.graph).items()}

    def only_consumer(name):
        nodes = consumers.get(name, [])
        return nodes[0] if len(nodes) == 1 else None

    for gap in proto.graph.node:
        if not _is_global_average(gap, consts):
            continue
        node, tensor = only_consumer(gap.output[0]), gap.output[0]
        while node is not None and node.op_type in ("Flatten", "Reshape", "Squeeze"):
            tensor = node.output[0]
            node = only_consumer(tensor)
        if node is None or node.op_type not in ("Gemm", "MatMul") or node.input[1] not in consts:
            continue
        w = consts[node.input[1]].astype(np.float64)
        if node.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transA", 0):
                continue
            w = (w if attrs.get("transB", 0) else w.T) * attrs.get("alpha", 1.0)
        else:
            w = w.T
        end = node.output[0]
        nxt = only_consumer(end)
        if nxt is not None and nxt.op_type == "Add" and any(i in consts for i in nxt.input):
            end, nxt = nxt.output[0], only_consumer(nxt.output[0])
        if end != output and not (nxt is not None and nxt.op_type == "Softmax" and nxt.output[0] == output):
            continue
        return gap.input[0], w.astype(np.float32)
    raise LayerError(f"CAM needs a GlobalAveragePool → linear head before '{output}' and "
                     f"'{model.path.name}' has none: use --method gradcam")


def _is_global_average(node, consts):
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean":
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1:
        axes = consts.get(node.input[1])
    return axes is not None and sorted(int(a) % 4 for a in np.ravel(axes)) == [2, 3]


@_per_model
def head_fn(model, layer, output=None):
    """``head(A)`` runs the network from tensor ``layer`` to ``output`` (first by default).

    The layer must cut the graph: everything ``output`` depends on has to pass through it.
    Raises LayerError otherwise (Ablation-CAM needs such a layer).

    >>> head = head_fn(model, "layer4"); logits = head(acts)
    """
    output = output or output_names(model)[0]
    session = create_session(_cut(model, layer, output), provider=model.provider, threads=model.threads)
    return _any_batch(model, lambda acts: session.run([output], {layer: np.asarray(acts, np.float32)})[0])


@_per_model
def head_gradient_fn(model, layer, output=None):
    """``head_gradient(A, seeds)`` = ∂(Σ seed·output)/∂A, differentiating only the network after
    ``layer`` (which must cut the graph, else LayerError).

    With activations from one forward pass this gives Grad-CAM for the top-1 class without a
    second pass over the whole network.

    >>> grads = head_gradient_fn(model, "layer4")(acts, seeds)
    """
    output = output or output_names(model)[0]
    sub = differentiate(normalize(_cut(model, layer, output)), output, [layer])
    session = create_session(sub, provider=model.provider, threads=model.threads)
    return _any_batch(model, lambda acts, seeds: session.run([grad_name(layer)], {
        layer: np.asarray(acts, np.float32), SEED: np.asarray(seeds, np.float32)})[0])


def _any_batch(model, fn):
    """``fn`` (arrays with one row per image → array) for any number of rows: in blocks of the
    model's static batch when it has one that could not be freed (see engine.runtime.batch)."""
    fixed = getattr(model.input, "batch", None)  # duck-typed models (tests) may leave it out
    return fn if fixed is None else lambda *arrays: in_chunks(fn, fixed, *arrays)


def _cut(model, layer, output):
    """The sub-model from tensor ``layer`` (its only input) to ``output``."""
    proto = model.proto
    producer = {name: node for node in proto.graph.node for name in node.output}
    weights = {init.name for init in proto.graph.initializer}
    needed, stack, nodes = set(), [output], []
    while stack:
        name = stack.pop()
        if name in needed or name == layer or name in weights or name == "":
            continue
        needed.add(name)
        node = producer.get(name)
        if node is None:
            raise LayerError(f"'{output}' depends on '{name}' without passing through '{layer}': "
                             "this needs a layer that cuts the network (try the default layer)")
        if node not in nodes:
            nodes.append(node)
            stack.extend(node.input)
    order = [node for node in proto.graph.node if node in nodes]
    used = {i for node in order for i in node.input}
    shape = model.layer(layer).shape
    graph = helper.make_graph(
        order, "head",
        [helper.make_tensor_value_info(layer, 1, [d if isinstance(d, int) else None for d in shape])],
        [vi for vi in proto.graph.output if vi.name == output],
        [init for init in proto.graph.initializer if init.name in used],
    )
    return helper.make_model(graph, opset_imports=proto.opset_import, ir_version=proto.ir_version)
