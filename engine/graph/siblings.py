"""Sibling convolutions merged before differentiation: a Concat of Convs that all read one tensor
(each through the same activation, or none) becomes one Conv whose kernels are the siblings'
zero-padded to a common window, as a SqueezeNet Fire module's expand 1×1 and 3×3. The gradient
graph then has one Conv and no Concat in its forward, one Conv gradient and no Split or Sum in its
backward, and ORT keeps the merged output in its NCHWc layout where the siblings' channel counts
made it reorder around the Concat. On a small model ORT's per-node cost is what counts, on a large
one the zeros' multiply-adds: merged only while they add at most ``MERGE_EXTRA_MACS`` per image.

Measured (ORT 1.32, 1 thread, whole input gradient of squeeze Conv → Fire → 1×1 Conv, time merged
/ apart): squeeze 4 → expand 8 + 8 at 15×15 (58 k extra multiply-adds) 0.79–0.84×, squeeze 8 → 8 + 8
(115 k) 0.85×, squeeze 4 → 16 + 16 (115 k) 0.95×; squeeze 8 → 16 + 16 (230 k) 1.05–1.2×, squeeze 16
→ 64 + 64 at 15×15 to 55×55 (1.8–25 M) 1.22–1.31×. At batch 16 the first three took 0.86×, 0.87× and
0.97×, squeeze 8 → 16 + 16 at 7×7 (50 k) 1.02×. The small SqueezeNet of the wild corpus (all six
Fire modules merged) took 0.90× the time at batch 1.
"""
import numpy as np
import onnx
from onnx import helper, numpy_helper

from engine.graph.editing import unique_name
from engine.graph.nodes import attrs
from engine.graph.shapes import declared_shapes

MERGE_EXTRA_MACS = 128_000  # multiply-adds per image that a merged kernel's zeros may add
_ACTIVATIONS = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Clip")


def merge_sibling_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Merge, in place, each Concat of sibling Convs that qualifies; returns ``model``. The
    Concat's output keeps its name and its values (the zero taps add exact zeros). Siblings
    qualify with constant weights and biases, group 1, the same strides and dilations, explicit
    pads that line their windows up, and outputs (and activations' outputs) that only the Concat
    reads and that are not graph outputs: a requested layer is never merged away.

    Example: Concat(Relu(Conv 1×1 (x)), Relu(Conv 3×3 pad 1 (x))) → Relu(Conv 3×3 pad 1 (x)), the
    1×1 kernel at the centre of the first output channels' 3×3 kernels."""
    graph = model.graph
    nodes = list(graph.node)
    producers = {o: n for n in nodes for o in n.output}
    readers = {}
    for node in nodes:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    weights = {t.name: t for t in graph.initializer}
    shapes = declared_shapes(model)
    taken = set(producers) | set(weights) | {i.name for i in graph.input} | {n.name for n in nodes}
    replaced, dropped, freed = {}, set(), set()  # by the Concat's output name; by output name
    for concat in nodes:
        found = _siblings(concat, producers, readers, outputs, weights, shapes)
        if found is None:
            continue
        convs, activations = found
        kernels = [numpy_helper.to_array(weights[c.input[1]]) for c in convs]
        plan = _common_window([attrs(c) for c in convs], [k.shape[2:] for k in kernels])
        if plan is None or _extra_macs(kernels, plan[0], shapes[concat.output[0]]) > MERGE_EXTRA_MACS:
            continue
        replaced[concat.output[0]] = _merged(concat, convs, kernels, activations, plan, graph, weights, taken)
        dropped.update(n.output[0] for n in [*convs, *activations])
        freed.update(t for n in [*convs, *activations] for t in (*n.input[1:], *n.output))
    if replaced:
        kept = [new for node in nodes if node.output[0] not in dropped
                for new in replaced.get(node.output[0], [node])]
        del graph.node[:]
        graph.node.extend(kept)
        _forget(graph, freed - {t for n in graph.node for t in n.input})
    return model


def _siblings(concat, producers, readers, outputs, weights, shapes):
    """(Convs, their activations: all or none) that ``concat`` joins along channels, or None."""
    shape = shapes.get(concat.output[0]) if concat.op_type == "Concat" else None
    if shape is None or len(shape) < 3 or attrs(concat).get("axis") not in (1, 1 - len(shape)):
        return None
    if len(concat.input) < 2 or len(set(concat.input)) < len(concat.input):
        return None
    convs, activations = [], []
    for name in concat.input:
        node = producers.get(name)
        if node is not None and node.op_type in _ACTIVATIONS:
            activations.append(node)
            node = producers.get(node.input[0])
        if (node is None or node.op_type != "Conv" or attrs(node).get("group", 1) != 1
                or any(t and t not in weights for t in node.input[1:])):
            return None
        convs.append(node)
    private = [t for n in [*convs, *activations] for t in n.output]
    if any(readers.get(t) != 1 or t in outputs for t in private) or len({c.input[0] for c in convs}) != 1:
        return None
    if activations and (len(activations) != len(convs) or len({_signature(a) for a in activations}) != 1):
        return None
    if len({weights[c.input[1]].data_type for c in convs}) != 1:
        return None
    return convs, activations


def _signature(node):
    """What makes two activation nodes compute the same function."""
    return node.op_type, node.domain, tuple(node.input[1:]), str(attrs(node))


def _common_window(conv_attrs, kernels):
    """(kernel, pads, per-Conv offsets of its taps in that kernel) of one Conv whose output
    positions read where each sibling's did; None when strides, dilations or output sizes differ,
    or a sibling pads by ``auto_pad=SAME_*``."""
    rank = len(kernels[0])
    if any(a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") for a in conv_attrs):
        return None
    if len({tuple(a.get("strides") or [1] * rank) for a in conv_attrs}) != 1:
        return None
    dilations = {tuple(a.get("dilations") or [1] * rank) for a in conv_attrs}
    if len(dilations) != 1:
        return None
    (dilation,) = dilations
    pads = [(a.get("pads") or [0] * 2 * rank) if a.get("auto_pad", "NOTSET") == "NOTSET" else [0] * 2 * rank
            for a in conv_attrs]
    begin = [max(p[axis] for p in pads) for axis in range(rank)]
    if any((b - p[axis]) % d for p in pads for axis, (b, d) in enumerate(zip(begin, dilation))):
        return None
    offsets = [[(b - p[axis]) // d for axis, (b, d) in enumerate(zip(begin, dilation))] for p in pads]
    kernel = [max(o[axis] + k[axis] for o, k in zip(offsets, kernels)) for axis in range(rank)]
    ends = {tuple(p[rank + axis] + d * (kernel[axis] - k[axis] - o[axis]) for axis, d in enumerate(dilation))
            for p, o, k in zip(pads, offsets, kernels)}  # the end pad that keeps each sibling's output size
    if len(ends) != 1 or min(next(iter(ends))) < 0:
        return None
    return kernel, begin + list(next(iter(ends))), offsets


def _extra_macs(kernels, kernel, shape):
    """Multiply-adds per image that the zero taps of a merged ``kernel`` add (inf for symbolic sizes)."""
    if not all(isinstance(d, int) for d in shape[2:]):
        return float("inf")
    taps = sum(k.shape[0] * k.shape[1] * (np.prod(kernel) - np.prod(k.shape[2:])) for k in kernels)
    return taps * int(np.prod(shape[2:]))


def _merged(concat, convs, kernels, activations, plan, graph, weights, taken):
    """The merged Conv (and the activation after it) writing the Concat's output."""
    kernel, pads, offsets = plan
    padded = []
    for k, offset in zip(kernels, offsets):
        whole = np.zeros(k.shape[:2] + tuple(kernel), k.dtype)
        whole[(slice(None), slice(None), *(slice(o, o + n) for o, n in zip(offset, k.shape[2:])))] = k
        padded.append(whole)
    base = concat.name or concat.output[0]

    def fresh(role):
        name = unique_name(f"{base}_merged_{role}", taken)
        taken.add(name)
        return name

    def constant(array, role):
        name = fresh(role)
        graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    inputs = [convs[0].input[0], constant(np.concatenate(padded), "weight")]
    if any(len(c.input) > 2 and c.input[2] for c in convs):
        inputs.append(constant(np.concatenate([
            numpy_helper.to_array(weights[c.input[2]]) if len(c.input) > 2 and c.input[2] else np.zeros(len(k), k.dtype)
            for c, k in zip(convs, kernels)]), "bias"))
    window = {k: v for k, v in attrs(convs[0]).items() if k in ("strides", "dilations")}
    if not activations:
        return [helper.make_node("Conv", inputs, list(concat.output), name=fresh("conv"), kernel_shape=kernel,
                                 pads=pads, **window)]
    before = fresh("conv_output")
    info = next((v for v in (*graph.value_info, *graph.output) if v.name == concat.output[0]), None)
    if info is not None:
        graph.value_info.add().CopyFrom(info)
        graph.value_info[-1].name = before
    activation = onnx.NodeProto()
    activation.CopyFrom(activations[0])
    activation.input[0] = before
    del activation.output[:]
    activation.output.extend(concat.output)
    activation.name = fresh(activation.op_type.lower())
    return [helper.make_node("Conv", inputs, [before], name=fresh("conv"), kernel_shape=kernel, pads=pads, **window),
            activation]


def _forget(graph, names):
    """Remove the initializers and value_info of ``names`` (tensors no node reads any more)."""
    for field in (graph.initializer, graph.value_info):
        kept = [item for item in field if item.name not in names]
        del field[:]
        field.extend(kept)
