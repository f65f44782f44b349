"""What a node says and what it is connected to: attributes as plain values, the padding an
``auto_pad=SAME_*`` implies, and the tensors an output is computed from. Shared by every module
of :mod:`engine.graph` that reads nodes (the gradient rules, receptive fields, rewriting passes).
"""
from onnx import helper, numpy_helper


def attrs(node):
    """Attributes of ``node`` as a dict of plain Python values (strings decoded).

    >>> attrs(onnx.helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2]))
    {'auto_pad': 'SAME_UPPER', 'strides': [2, 2]}
    """
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[a.name] = v
    return out


def split_pads(totals, auto_pad):
    """Split each axis' total padding into (begins, ends) as ``auto_pad`` SAME_UPPER (the odd one
    at the end) or SAME_LOWER (at the beginning) does.

    >>> split_pads([3, 2], "SAME_UPPER")
    ([1, 1], [2, 1])
    """
    small = [t // 2 for t in totals]
    big = [t - h for t, h in zip(totals, small)]
    return (small, big) if auto_pad == "SAME_UPPER" else (big, small)


def same_pads(sizes, strides, extents, auto_pad):
    """(begins, ends) pads of a sliding window with ``auto_pad`` SAME_UPPER / SAME_LOWER: the
    output has ceil(size / stride) positions. ``extents`` are the dilated kernel spans
    (k − 1)·d + 1; a size that is None (symbolic) counts as a multiple of its stride.

    >>> same_pads([7, None], [2, 2], [3, 3], "SAME_LOWER")
    ([1, 1], [1, 0])
    """
    totals = [max(0, (-(-x // s) - 1) * s + e - x) if isinstance(x, int) else max(0, e - s)
              for x, s, e in zip(sizes, strides, extents)]
    return split_pads(totals, auto_pad)


def upstream(nodes, output):
    """Tensors ``output`` is computed from (and ``output`` itself); ``nodes`` in graph order.

    >>> sorted(upstream([onnx.helper.make_node("Relu", ["x"], ["y"])], "y"))
    ['x', 'y']
    """
    feeds = {output}
    for node in reversed(nodes):
        if any(o in feeds for o in node.output):
            feeds.update(node.input)
    return feeds


def constant_axes(node, constants, rank):
    """The axes a Reduce* ``node`` reduces (its attribute, or from opset 18 its input, constant in
    ``constants``: name → TensorProto), non-negative for an input of ``rank`` and sorted; None when
    none are given or they are computed at run time.

    >>> constant_axes(onnx.helper.make_node("ReduceMean", ["x"], ["y"], axes=[-1, -2]), {}, 4)
    [2, 3]
    """
    axes = attrs(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        tensor = constants.get(node.input[1])
        if tensor is None:
            return None
        axes = numpy_helper.to_array(tensor).ravel().tolist()
    return sorted(int(a) % rank for a in axes) if axes else None


__all__ = ["attrs", "constant_axes", "same_pads", "split_pads", "upstream"]
