"""Adapters from an :class:`engine.Model` to what the pure methods take: one capture of
activations and gradients, gradient and score callables, the FC head for CAM, and the network
from a layer to an output for Ablation-CAM.

>>> layer, x = model.default_layer, model.preprocess(images[:1])
>>> outputs, acts, grads = capture(model, x, [layer], seeds=np.eye(8)[[3]])
>>> grads[layer].shape
(1, 96, 8, 8)
"""
import functools
import weakref

import numpy as np
from onnx import helper, numpy_helper

from engine.errors import LayerError
from engine.explain.outputs import OutputView, forward
from engine.graph.autodiff import SEED, differentiate, grad_name
from engine.graph.gradcam import CAM_EMPTY, CAM_MAPS, CAM_RAW, CAM_SIZE, CLASSES, TOP_CLASS
from engine.graph.nodes import attrs, constant_axes
from engine.graph.normalize import normalize
from engine.graph.pixels import PIXELS
from engine.graph.shapes import constant_tensors
from engine.runtime import rewrite
from engine.runtime.batch import in_chunks
from engine.runtime.session import RUN_ERRORS, create_session, run_error


def per_model(build):
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


def layers_of(model, layer, output=None):
    """Resolve ``layer``: "auto" (the default layer for ``output``, first output by default), a
    name, a comma-separated list or a list, to tensor names; a module path (``layer4``) stands for
    its last 4-D tensor (see ``model.layer``).

    Unknown names raise LayerError (through ``model.layer``).

    >>> layers_of(model, "layer2, layer3")
    ['/layer2/relu_1/Relu_output_0', '/layer3/relu_1/Relu_output_0']
    """
    if layer in (None, "auto"):
        return [model.default_layer_for(output) if output else model.default_layer]
    names = [s.strip() for s in layer.split(",")] if isinstance(layer, str) else list(layer)
    return [model.layer(name).name for name in names]


def capture(model, x, layers, seeds=None, output=None):
    """One pass: model outputs, activations at ``layers`` and, with ``seeds``, their gradients.

    ``seeds`` (one row per row of ``x``) seed Σ seed·``output`` (the first output by default; any
    tensor, e.g. the logits before a Softmax, whose values then join the activations; or an
    :class:`OutputView`, whose seeds are batch first whatever the tensor's layout).
    Returns (outputs, {layer: A}, {layer: G} or None).

    >>> outputs, acts, grads = capture(model, model.preprocess(images[:1]), [model.default_layer], np.eye(8)[[3]])
    >>> outputs[0].shape, acts[model.default_layer].shape
    ((1, 8), (1, 96, 8, 8))
    """
    output, to_model, _ = _explained(model, output)
    layers = tuple(layers)
    wanted = _wanted(model, layers, output)
    if seeds is None:
        result = model.run(x, activations=wanted)
        return result.outputs, result.activations, None
    result = model.run(x, activations=wanted, gradients=layers, seed={output: to_model(seeds)})
    return result.outputs, result.activations, {n: result.gradients[n] for n in layers}


@per_model
def _wanted(model, layers, output):
    """The activations a capture asks for: ``layers``, and ``output`` unless it is a graph output."""
    return tuple(dict.fromkeys([*layers, *([] if output in output_names(model) else [output])]))


def _explained(model, output):
    """(tensor name, seeds → the tensor's layout, values → batch first) of ``output``: a name
    (None: the first output), taken as is, or an :class:`OutputView`."""
    if isinstance(output, OutputView):
        if output.perm == tuple(range(len(output.perm))):  # batch first already: nothing to move
            return output.name, np.ascontiguousarray, np.asarray
        return output.name, output.seeds, output.rows
    return output or output_names(model)[0], np.asarray, np.asarray


@per_model
def gradcam_fn(model, layer, output, seed, pixels=False):
    """``gradcam(x, size, *fed)`` → [``output`` N×…, the raw Grad-CAM maps N×h×w at ``layer``,
    the maps N×H×W at ``size`` (H, W) in [0, 1], N flags for the maps zero everywhere (see
    :mod:`engine.graph.gradcam`), and for the top class the classes N] in one session run. ``seed``
    (as :class:`engine.runtime.rewrite.Request`'s): "top", each image's top class of graph output
    ``output``, found in the graph; "class", one class index per image fed (N int64); "given",
    seed rows fed (shaped like ``output``). ``x``: a preprocessed batch, or with ``pixels`` the
    uint8 batch of ``model.pixels``, normalized in the graph
    (:func:`engine.graph.pixels.normalized_pixels`; float32 3-channel inputs).

    >>> gradcam = gradcam_fn(model, model.default_layer, "logits", "top")
    >>> scores, raw, maps, empty, classes = gradcam(model.preprocess(images[:2]), (96, 96))
    >>> raw.shape, maps.shape, classes.tolist() == scores.argmax(axis=1).tolist()
    ((2, 8, 8), (2, 96, 96), True)
    """
    image = PIXELS if pixels else model.input.name
    nhwc = pixels or model.input.layout == "NHWC"
    normalization = (model.input.name, *(tuple(v.tolist()) for v in model.preprocessing.affine()),
                     model.preprocessing.channel_order == "BGR", model.input.layout) if pixels else ()
    sessions = {}  # input size → (session, the model's extra inputs it reads)
    fetch = [output, CAM_RAW, CAM_MAPS, CAM_EMPTY, *([TOP_CLASS] if seed == "top" else [])]
    fed = {"given": [SEED], "class": [CLASSES], "top": []}[seed]

    def run(size, x, *fed_values):
        spatial = x.shape[1:3] if nhwc else x.shape[2:4]
        if spatial not in sessions:  # one rewritten model per input size (a dynamic-size model's too)
            request = rewrite.Request(model.input_size or tuple(spatial), (), (), output, seed=seed, cam=layer,
                                      pixels=normalization)
            session = model.rewritten_session(request)
            sessions[spatial] = session, [i.name for i in session.get_inputs() if i.name not in (image, *fed, CAM_SIZE)]
        session, extras = sessions[spatial]
        feeds = {image: x, CAM_SIZE: np.array([len(x), 1, *size], np.int64), **dict(zip(fed, fed_values)),
                 **_extra_feeds(model, extras, len(x))}
        try:
            values = session.run(fetch, feeds)
        except RUN_ERRORS as err:  # e.g. a dynamic-size model given a size its graph cannot take
            raise run_error(err, model.path.name, "×".join(map(str, x.shape))) from err
        return [values[0], values[1][:, 0], values[2][:, 0], *values[3:]]  # maps N×1×… as N×…

    return lambda x, size, *fed_values: _any_batch(model, functools.partial(run, size))(x, *fed_values)


def gradient_fn(model, output=None):
    """``gradient(x, seeds, mode)`` = ∂(Σ seed·output)/∂x through ``model.run``.

    >>> x = model.preprocess(images[:1])
    >>> gradient_fn(model)(x, np.eye(8)[[3]], "guided").shape == x.shape
    True
    """
    output, to_model, _ = _explained(model, output)

    def gradient(x, seeds, mode="standard"):
        return model.run(x, gradients=["input"], seed={output: to_model(seeds)}, mode=mode).gradients["input"]

    return gradient


def scores_fn(model, output=None):
    """``scores(x)`` = the model's ``output`` (first by default; any tensor) for a batch ``x``; forward only.

    >>> scores_fn(model)(model.preprocess(images[:1])).shape
    (1, 8)
    """
    output, _, to_rows = _explained(model, output)
    return lambda x: to_rows(forward(model, x, [output])[output])


def fc_head(model, output=None):
    """Find ``A → global average (GlobalAveragePool, or ReduceMean over axes 2, 3) →
    (Flatten | Reshape | Squeeze)* → Gemm | MatMul (+Add) → output``
    (optionally → Softmax → output) and return (layer name of A, FC weights classes×K).

    Raises LayerError, suggesting Grad-CAM, when the model has no such head.

    >>> layer, weights = fc_head(model)
    >>> layer, weights.shape
    ('/layer3/relu_1/Relu_output_0', (8, 96))
    """
    proto = model.proto
    output = output or output_names(model)[0]
    consumers = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tensors = constant_tensors(proto.graph)
    consts = {name: numpy_helper.to_array(t) for name, t in tensors.items()}

    def only_consumer(name):
        nodes = consumers.get(name, [])
        return nodes[0] if len(nodes) == 1 else None

    for gap in proto.graph.node:
        if not _is_global_average(gap, tensors):
            continue
        node, tensor = only_consumer(gap.output[0]), gap.output[0]
        while node is not None and node.op_type in ("Flatten", "Reshape", "Squeeze"):
            tensor = node.output[0]
            node = only_consumer(tensor)
        if node is None or node.op_type not in ("Gemm", "MatMul") or node.input[1] not in consts:
            continue
        w = consts[node.input[1]].astype(np.float64)
        if node.op_type == "Gemm":
            gemm = attrs(node)
            if gemm.get("transA", 0):
                continue
            w = (w if gemm.get("transB", 0) else w.T) * gemm.get("alpha", 1.0)
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


def _is_global_average(node, tensors):
    return node.op_type == "GlobalAveragePool" or (
        node.op_type == "ReduceMean" and constant_axes(node, tensors, 4) == [2, 3])


@per_model
def head_fn(model, layer, output=None):
    """``head(A)`` runs the network from tensor ``layer`` to ``output`` (first by default).

    The layer must cut the graph: everything ``output`` depends on has to pass through it.
    Raises LayerError otherwise (Ablation-CAM needs such a layer).

    >>> head = head_fn(model, model.default_layer)
    >>> head(np.ones((2, 96, 8, 8), np.float32)).shape
    (2, 8)
    """
    output, _, to_rows = _explained(model, output)
    sub = _cut(model, layer, output)
    session = create_session(sub, provider=model.provider, threads=model.threads)
    extras = _extra_names(sub, layer)
    return _any_batch(model, lambda acts: to_rows(session.run([output], {layer: np.asarray(acts, np.float32),
                                                                          **_extra_feeds(model, extras, len(acts))})[0]))


@per_model
def head_gradient_fn(model, layer, output=None):
    """``head_gradient(A, seeds)`` = ∂(Σ seed·output)/∂A, differentiating only the network after
    ``layer`` (which must cut the graph, else LayerError).

    With activations from one forward pass this gives Grad-CAM for the top-1 class without a
    second pass over the whole network.

    >>> head_gradient = head_gradient_fn(model, model.default_layer)
    >>> head_gradient(np.ones((1, 96, 8, 8), np.float32), np.eye(8)[[3]]).shape
    (1, 96, 8, 8)
    """
    output, to_model, _ = _explained(model, output)
    sub = differentiate(normalize(_cut(model, layer, output)), output, [layer])
    session = create_session(sub, provider=model.provider, threads=model.threads)
    extras = _extra_names(sub, layer)
    fetch = [grad_name(layer)]
    return _any_batch(model, lambda acts, seeds: session.run(fetch, {
        layer: np.asarray(acts, np.float32), SEED: np.asarray(to_model(seeds), np.float32),
        **_extra_feeds(model, extras, len(acts))})[0])


def _any_batch(model, fn):
    """``fn`` (arrays with one row per image → array) for any number of rows: in blocks of the
    model's static batch when it has one that could not be freed (see engine.runtime.batch)."""
    fixed = getattr(model.input, "batch", None)  # duck-typed models (tests) may leave it out
    return fn if fixed is None else lambda *arrays: in_chunks(fn, fixed, *arrays)


def _extra_names(sub, layer):
    """The inputs of sub-model ``sub`` besides ``layer`` (and the seed): the model's extra inputs it reads."""
    return [vi.name for vi in sub.graph.input if vi.name not in (layer, SEED)]


def _extra_feeds(model, names, batch):
    """Values of the extra inputs ``names`` for ``batch`` rows (none asked of a model without them)."""
    return model.extra_feeds(batch, names) if names else {}


def _cut(model, layer, output):
    """The sub-model from tensor ``layer`` to ``output``; the model's extra inputs (inputs besides
    the image) that the sub-model reads stay inputs of it."""
    proto = model.proto
    producer = {name: node for node in proto.graph.node for name in node.output}
    weights = {init.name for init in proto.graph.initializer}
    extras = {vi.name: vi for vi in proto.graph.input if vi.name != model.input.name and vi.name not in weights}
    needed, stack, nodes = set(), [output], []
    while stack:
        name = stack.pop()
        if name in needed or name == layer or name in weights or name == "":
            continue
        needed.add(name)
        if name in extras:
            continue
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
        [helper.make_tensor_value_info(layer, 1, [d if isinstance(d, int) else None for d in shape]),
         *(vi for name, vi in extras.items() if name in needed)],
        [next((vi for vi in proto.graph.output if vi.name == output), None)
         or helper.make_tensor_value_info(output, 1, None)],
        [init for init in proto.graph.initializer if init.name in used],
    )
    return helper.make_model(graph, opset_imports=proto.opset_import, ir_version=proto.ir_version)
