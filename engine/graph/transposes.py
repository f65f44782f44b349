"""Transpose first: an NHWC input's per-channel normalization computed after its Transpose.

Exporters of channels-last models write ``Transpose(Div(Sub(Cast(x), mean), std), perm)``, the
constants shaped 1×1×1×C. ONNX Runtime's CPU kernels broadcast such a constant along the
innermost axis one span of C values at a time: on a 64×64×3 input each of those ops cost 85–95 µs,
against about 5 µs for the same op on the transposed tensor with a 1×C×1×1 constant (the
whole forward pass of that model took 390 µs). Elementwise ops commute with a transpose, so
moving the Transpose to the front computes the very same values.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from engine.graph.editing import DEFAULT_DOMAINS, copy_model, prune, subgraph_reads, unique_name
from engine.graph.nodes import attrs

BINARY = ("Add", "Sub", "Mul", "Div")


def transpose_first(model: onnx.ModelProto, inplace=False) -> onnx.ModelProto:
    """Move each Transpose above the chain of Cast and Add/Sub/Mul/Div-by-a-constant nodes that
    feeds it, when one of the constants varies along the last axis only and each tensor of the
    chain is read by the next node alone (not a graph output: a tapped tensor keeps its layout).
    The chain's tensors get new names (their layout changed); the Transpose's output keeps its own.

    >>> x, y = helper.make_tensor_value_info("x", 1, [1, 8, 8, 3]), helper.make_tensor_value_info("y", 1, None)
    >>> mean = numpy_helper.from_array(np.full((1, 1, 1, 3), 0.5, np.float32), "mean")
    >>> nodes = [helper.make_node("Sub", ["x", "mean"], ["c"]),
    ...          helper.make_node("Transpose", ["c"], ["y"], perm=[0, 3, 1, 2])]
    >>> moved = transpose_first(helper.make_model(helper.make_graph(nodes, "g", [x], [y], [mean])))
    >>> [(n.op_type, n.output[0]) for n in moved.graph.node], [tuple(t.dims) for t in moved.graph.initializer]
    ([('Transpose', 'y_early'), ('Sub', 'y')], [(1, 3, 1, 1)])
    """
    out = model if inplace else copy_model(model)
    graph = out.graph
    constants = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    reads = Counter(i for n in graph.node for i in [*n.input, *subgraph_reads(n)])
    reads.update(o.name for o in graph.output)
    moves = {}
    for node in graph.node:
        if node.op_type == "Transpose" and node.domain in DEFAULT_DOMAINS and attrs(node).get("perm"):
            chain = _chain(node, producers, constants, reads)
            if chain:
                moves[id(chain[0][0])] = (node, chain)
    if not moves:
        return out
    taken = {t for n in graph.node for t in [*n.input, *n.output]} | set(constants)
    moved = {id(n) for transpose, chain in moves.values() for n in [transpose, *(step[0] for step in chain)]}
    nodes = []
    for node in graph.node:
        if id(node) in moves:
            nodes.extend(_rebuilt(*moves[id(node)], graph, taken))
        if id(node) not in moved:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return prune(out)  # the constants only the old chain read


def _chain(transpose, producers, constants, reads):
    """``[(node, data input index, constant or None), ...]`` from the first op of the chain
    feeding ``transpose`` to the last, or [] when there is nothing worth moving."""
    rank = len(attrs(transpose)["perm"])
    chain, name = [], transpose.input[0]
    while reads[name] == 1 and name in producers:
        node = producers[name]
        if node.domain not in DEFAULT_DOMAINS:
            break
        if node.op_type == "Cast":
            chain.append((node, 0, None))
        elif node.op_type in BINARY and len(node.input) == 2:
            step = next(((node, i, constants[node.input[1 - i]]) for i in (0, 1)
                         if _channels_last(constants.get(node.input[1 - i]), rank)), None)
            if step is None:
                break
            chain.append(step)
        else:
            break
        name = chain[-1][0].input[chain[-1][1]]
    worth = any(c is not None and np.prod(c.dims) > 1 for _, _, c in chain)
    return chain[::-1] if worth else []


def _channels_last(tensor, rank):
    """Whether ``tensor`` is a constant (stored in the model) that broadcasts against a rank-``rank``
    tensor, varying along the last axis at most."""
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return False
    dims = list(tensor.dims)
    return len(dims) <= rank and all(d == 1 for d in dims[:-1])


def _rebuilt(transpose, chain, graph, taken):
    """The Transpose on the chain's input, then the chain's ops with permuted constants."""
    perm = [int(p) for p in attrs(transpose)["perm"]]
    first, index, _ = chain[0]

    def fresh(hint):
        name = unique_name(hint, taken)
        taken.add(name)
        return name

    current = fresh(transpose.output[0] + "_early")
    nodes = [helper.make_node("Transpose", [first.input[index]], [current], name=fresh(transpose.name or "transpose"),
                              perm=perm)]
    for step, (node, index, constant) in enumerate(chain):
        inputs = list(node.input)
        inputs[index] = current
        if constant is not None and len(constant.dims) > 0:
            value = numpy_helper.to_array(constant)
            value = np.transpose(value.reshape((1,) * (len(perm) - value.ndim) + value.shape), perm)
            permuted = fresh(constant.name + "_transposed")
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), permuted))
            inputs[1 - index] = permuted
        current = transpose.output[0] if step == len(chain) - 1 else fresh(node.output[0] + "_transposed")
        moved = helper.make_node(node.op_type, inputs, [current], name=fresh(node.name or node.op_type))
        moved.attribute.extend(node.attribute)
        nodes.append(moved)
    return nodes
