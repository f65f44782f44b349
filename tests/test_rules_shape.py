"""Each element-moving rule alone against central finite differences through ORT."""
import numpy as np
import pytest

from onnx import helper, numpy_helper

from engine.graph.autodiff import differentiate
from gradcheck import check, finish, node_model

X = ("N", 3, 4, 2)


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("op,extra,attributes", [
    ("Flatten", [], {"axis": 2}),
    ("Reshape", [np.array([0, 6, 4])], {}),
    ("Reshape", [np.array([-1, 2, 4])], {}),  # batch folded into the first dim
    ("Transpose", [], {"perm": [0, 2, 3, 1]}),
    ("Transpose", [], {}),
])
def test_reshapes(op, extra, attributes, opset):
    check(lambda dt: node_model(op, [X, *extra], dt, opset=opset, **attributes))


def test_squeeze_unsqueeze_axes_input_and_attribute():
    check(lambda dt: node_model("Squeeze", [("N", 1, 4, 1), np.array([1, 3])], dt))
    check(lambda dt: node_model("Squeeze", [("N", 1, 4, 1)], dt, opset=11, axes=[1]))
    check(lambda dt: node_model("Unsqueeze", [("N", 4), np.array([0, 3])], dt))
    check(lambda dt: node_model("Unsqueeze", [("N", 4)], dt, opset=11, axes=[2]))


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("axis", [1, -1])
def test_concat(axis, opset):
    pieces = [("N", 2, 3, 2), ("N", 2, 3, 2), ("N", 2, 3, 2)]
    pieces[1] = ("N", 5, 3, 2) if axis == 1 else ("N", 2, 3, 4)
    check(lambda dt: node_model("Concat", pieces, dt, opset=opset, axis=axis))


def test_concat_gradient_for_one_piece_only():
    check(lambda dt: node_model("Concat", [("N", 2, 3), ("N", 1, 3)], dt, axis=1), wrt=["in0"])


def relu_concat_model(dtype, shared=False, channels=(8, 8)):
    """Two ReLUs (of two Convs on one input, a fire module's expand branches) joined by a Concat
    and scaled; ``shared``: the first ReLU's output is read by another node too."""
    rng = np.random.default_rng(4)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    weights = [numpy_helper.from_array(rng.standard_normal((c, 4, k, k)).astype(dtype), f"w{i}")
               for i, (c, k) in enumerate(zip(channels, (1, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"]), helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4),
             helper.make_node("Relu", ["c0"], ["r0"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Concat", ["r0", "r1"], ["cat"], axis=1), helper.make_node("Mul", ["cat", "cat"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", elem, None)]
    if shared:
        nodes.append(helper.make_node("Neg", ["r0"], ["other"]))
        outputs.append(helper.make_tensor_value_info("other", elem, None))
    graph = helper.make_graph(nodes, "fire", [helper.make_tensor_value_info("x", elem, ["N", 4, 6, 5])], outputs, weights)
    return finish(graph)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("channels", [(8, 8), (16, 16)])
def test_concat_of_relus_masks_once(shared, channels):
    """A Concat of ReLU outputs only applies their masks as one [y > 0] on the joined y, and no
    mask reads a ReLU's output; a ReLU whose output something else reads too keeps its own mask
    and the Concat applies none. Against central differences either way."""
    check(lambda dt: relu_concat_model(dt, shared, channels), wrt=["x"], output="y")
    rewritten = differentiate(relu_concat_model(np.float32, shared, channels), "y", ["x"])
    backward = rewritten.graph.node[len(relu_concat_model(np.float32, shared, channels).graph.node):]
    mask_readers = {r for n in backward for r in ("r0", "r1", "cat") if r in n.input and n.op_type != "Mul"}  # Mul: y's own rule
    assert mask_readers == ({"r0", "r1"} if shared else {"cat"}), mask_readers


def test_concat_of_relus_keeps_guided_masks():
    """Guided backprop keeps each ReLU's own rule."""
    rewritten = differentiate(relu_concat_model(np.float32), "y", ["x"], mode="guided")
    backward = rewritten.graph.node[len(relu_concat_model(np.float32).graph.node):]
    assert {r for n in backward for r in ("r0", "r1") if r in n.input} == {"r0", "r1"}, "each ReLU masks its own gradient"
