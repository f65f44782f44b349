"""Rules for ops that only move elements: reshapes, transposes, concatenation."""
import numpy as np

from engine.errors import UnsupportedOpError
from engine.graph.rules import ALL, attrs, rule


@rule("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape(ctx, node, dy):
    return ctx.reshape_like(dy, node.input[0], node.output[0])


@rule("Transpose")
def transpose(ctx, node, dy):
    perm = attrs(node).get("perm") or list(range(ctx.rank(node.input[0])))[::-1]
    return ctx.op("Transpose", dy, perm=[int(p) for p in np.argsort(perm)])


@rule("Concat", wrt=ALL)
def concat(ctx, node, dy):
    """Split the gradient back into the pieces (their sizes along the axis must be static); one
    Split for all of them. Pieces that are all ReLU outputs (:func:`concatenates_relus`) get
    their masks here, as one [y > 0] on the whole."""
    axis = attrs(node)["axis"] % ctx.rank(node.output[0])
    sizes = [ctx.shape(x)[axis] for x in node.input]
    if not all(isinstance(s, int) for s in sizes):
        raise UnsupportedOpError(f"Concat {node.name!r} joins along a symbolic axis: gradients need static sizes; pick a layer after it")
    if concatenates_relus(ctx, node):
        dy = ctx.where_positive(node.output[0], dy)
    pieces = ctx.op_with_ints("Split", dy, "split", sizes, 13, axis=axis, outputs=len(sizes))
    return [pieces] if len(sizes) == 1 else pieces


def concatenates_relus(ctx, node):
    """Whether the Concat ``node`` joins only outputs of Relus that only it reads, in standard
    mode (SqueezeNet's fire modules, Inception blocks): each Relu's mask is then [y > 0] of the
    joined y, applied once by the Concat rule, and the Relu rules pass their gradients through
    (one mask for the block instead of one per branch)."""
    return len(node.input) > 1 and ctx.private_relus(node.input)
