"""Integer (uint8) image inputs: where the float arithmetic starts, a float-input copy to
differentiate, and a uint8 input for a float model (its normalization moved into the graph)
(onnx only).

A model that takes uint8 pixels casts them to float in the graph (often after a Transpose, before
its own Sub/Div normalization). Gradients are taken with respect to that first float tensor; to
return them per input pixel, :func:`float_image` feeds the image as float32 instead: the layout
ops before the Cast carry floats unchanged and the Cast becomes float → float, so the gradient of
the new float input is the gradient of the first float tensor, moved back to the input's layout.
"""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from engine.errors import UnsupportedOpError
from engine.graph.editing import copy_model
from engine.graph.nodes import attrs
from engine.graph.shapes import FLOAT_TYPES
# Ops that move or select pixels whatever their type (each has a gradient rule).
LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Slice", "Identity", "Flatten", "Gather",
                        "Split", "Concat", "Pad", "Resize"})
SIZE_OPS = frozenset({"Shape", "Size"})  # read only the dims


def first_float(model, image):
    """The first float tensor computed from integer graph input ``image``: the output of the (first)
    Cast that ends its chain of layout ops. Raises UnsupportedOpError when the pixels reach the
    float arithmetic any other way (e.g. integer arithmetic first) or never do.

    >>> nhwc = onnx.helper.make_tensor_value_info("image", onnx.TensorProto.UINT8, [1, 8, 8, 3])
    >>> g = onnx.helper.make_graph([onnx.helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2]),
    ...                             onnx.helper.make_node("Cast", ["t"], ["pixels"], to=1)], "g", [nhwc], [])
    >>> first_float(onnx.helper.make_model(g), "image")
    'pixels'
    """
    casts, _ = _float_casts(model, image)
    if not casts:
        raise UnsupportedOpError(f"the integer image '{image}' is never cast to float: no gradient reaches it; "
                                 "explain a layer instead")
    return casts[0].output[0]


def float_image(model, image, inplace=False):
    """``model`` with its integer input ``image`` as float32 (its Casts to float stay, float → float;
    the declared types of the tensors before them are dropped). ``inplace=True`` edits ``model``.

    >>> nhwc = onnx.helper.make_tensor_value_info("image", onnx.TensorProto.UINT8, [1, 8, 8, 3])
    >>> g = onnx.helper.make_graph([onnx.helper.make_node("Cast", ["image"], ["pixels"], to=1)], "g", [nhwc], [])
    >>> float_image(onnx.helper.make_model(g), "image").graph.input[0].type.tensor_type.elem_type
    1
    """
    _, on_path = _float_casts(model, image)  # raises where the pixels do anything but move before their Cast
    out = model if inplace else copy_model(model)
    for vi in out.graph.input:
        if vi.name == image:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    kept = [vi for vi in out.graph.value_info if vi.name not in on_path]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept)
    return out


PIXELS = "onnxlens_pixels"


def normalized_pixels(model, image, scale, offset, bgr=False, layout="NCHW"):
    """Replace, in place, the float32 image input ``image`` (3 channels, ``layout``) of ``model``
    by the uint8 N×H×W×3 RGB input ``PIXELS``, normalized in the graph as
    :class:`engine.data.preprocess.Preprocess` does it: channels reversed for ``bgr``, moved to
    NCHW while still uint8, then float(value)·scale − offset per channel (the same float32 ops in
    the same order, so the same values). Returns ``model``.

    >>> g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["image"], ["out"])], "g",
    ...     [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 3, 2, 2])], [])
    >>> [i.name for i in normalized_pixels(onnx.helper.make_model(g), "image", [1, 1, 1], [0, 0, 0]).graph.input]
    ['onnxlens_pixels']
    """
    graph = model.graph
    shape = (-1, 1, 1) if layout == "NCHW" else (-1,)
    graph.initializer.extend(numpy_helper.from_array(np.asarray(v, np.float32).reshape(shape), PIXELS + suffix)
                             for v, suffix in ((scale, "_scale"), (offset, "_offset")))
    values, nodes = PIXELS, []
    if bgr:
        graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), PIXELS + "_bgr"))
        nodes.append(helper.make_node("Gather", [values, PIXELS + "_bgr"], [PIXELS + "_reversed"], axis=3))
        values = PIXELS + "_reversed"
    if layout == "NCHW":
        nodes.append(helper.make_node("Transpose", [values], [PIXELS + "_nchw"], perm=[0, 3, 1, 2]))
        values = PIXELS + "_nchw"
    nodes += [helper.make_node("Cast", [values], [PIXELS + "_float"], to=TensorProto.FLOAT),
              helper.make_node("Mul", [PIXELS + "_float", PIXELS + "_scale"], [PIXELS + "_scaled"]),
              helper.make_node("Sub", [PIXELS + "_scaled", PIXELS + "_offset"], [image])]
    forward = [*nodes, *graph.node]
    del graph.node[:]
    graph.node.extend(forward)
    next(vi for vi in graph.input if vi.name == image).CopyFrom(
        helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, ["N", None, None, 3]))
    return model


def _float_casts(model, image):
    """The Casts to a float type that the integer pixels of ``image`` reach through layout ops, and
    the tensors on the way (``image`` included)."""
    on_path, casts = {image}, []
    for node in model.graph.node:
        if not on_path.intersection(node.input) or node.op_type in SIZE_OPS:
            continue
        if node.op_type == "Cast" and attrs(node).get("to") in FLOAT_TYPES:
            casts.append(node)
        elif node.op_type in LAYOUT_OPS and (node.op_type != "Gather" or node.input[0] in on_path):
            on_path.update(name for name in node.output if name)
        else:
            raise UnsupportedOpError(
                f"the integer image '{image}' goes through {node.op_type} ({node.name or node.output[0]!r}) "
                "before its Cast to float: gradients w.r.t. the image are not available; explain a layer instead")
    return casts, on_path
