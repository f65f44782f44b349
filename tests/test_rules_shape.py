"""Each element-moving rule alone against central finite differences through ORT."""
import numpy as np
import pytest

from gradcheck import check, node_model

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
