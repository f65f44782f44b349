"""Split, Slice, Pad, Expand and Gather rules alone against central finite differences through ORT."""
import numpy as np
import pytest
from onnx import helper, numpy_helper

from engine.graph.rules.indexing import slice_positions
from gradcheck import check, finish, node_model, session

X = ("N", 3, 5, 6)
BIG = np.iinfo(np.int64).max


@pytest.mark.parametrize("opset,inputs,attributes", [
    (17, [np.array([1, 4])], {"axis": 2}),
    (17, [np.array([2, 1, 3])], {"axis": -1}),
    (18, [], {"axis": 1, "num_outputs": 3}),
    (11, [], {"axis": 3, "split": [4, 2]}),
    (11, [], {"axis": 2}),  # equal pieces
])
def test_split(opset, inputs, attributes):
    outputs = attributes.get("num_outputs") or len(attributes.get("split", inputs[0] if inputs else [0] * 5))
    for out in range(outputs):
        check(lambda dt: node_model("Split", [X, *inputs], dt, opset=opset, outputs=outputs, **attributes),
              output=f"out{out}")


def test_split_with_every_output_seeded():
    """Gradients arrive from both pieces (a Concat downstream would do the same)."""

    def make(dt):
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
        nodes = [helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1),
                 helper.make_node("Tanh", ["b"], ["tb"]),
                 helper.make_node("Concat", ["tb", "a"], ["y"], axis=1)]
        graph = helper.make_graph(nodes, "s", [helper.make_tensor_value_info("x", elem, ["N", 3, 2])],
                                  [helper.make_tensor_value_info("y", elem, None)],
                                  initializer=[numpy_helper.from_array(np.array([1, 2]), "sizes")])
        return finish(graph)

    check(make)


@pytest.mark.parametrize("start,end,step", [(1, 4, 1), (-3, BIG, 1), (0, 5, 2), (4, -BIG, -1), (5, 0, -2),
                                            (-1, -6, -3), (-100, -BIG, -1), (2, 2, 1)])
def test_slice_positions_follow_onnx_runtime(start, end, step):
    """ORT clamps as the ONNX spec says (onnx's reference evaluator differs on (-100, -BIG, -1))."""
    model = node_model("Slice", [(5,), np.array([start]), np.array([end]), "", np.array([step])], np.float32)
    expected = session(model).run(None, {"in0": np.arange(5, dtype=np.float32)})[0]
    assert list(slice_positions(start, end, step, 5)) == expected.tolist()


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([1, 0], [4, -1], [2, 3], None),  # contiguous crop
    ([0, 1], [BIG, BIG], [1, 3], [2, 2]),  # strided
    ([-1], [-BIG], [3], [-1]),  # reversed
    ([4, 2], [0, -BIG], [2, 1], [-2, -1]),  # negative steps with gaps, reversed channels
    ([0, 1, 2], [BIG, 4, 6], [0, -2, -1], [1, 1, 3]),  # the whole symbolic batch axis, negative axes
    ([1], [3], None, None),  # no axes: leading axes
    ([0, 1], [BIG, BIG], [2, 3], [2, 2]),  # a YOLOv5 Focus slice: odd H cut, even W
    ([1, 0], [BIG, 5], [-2, -1], [2, 3]),  # odd H topped up, a step of 3 stopping early
    ([3, 0], [BIG, BIG], [2, 3], [2, 2]),  # a start past the step (the pick matrices)
])
def test_slice(starts, ends, axes, steps):
    inputs = [X, np.array(starts), np.array(ends), np.array(axes) if axes is not None else ""]
    inputs += [np.array(steps)] if steps is not None else []
    while isinstance(inputs[-1], str):
        inputs.pop()
    if axes is None:  # slicing the batch axis needs a static batch
        inputs[0] = (3, 3, 5, 6)
    check(lambda dt: node_model("Slice", inputs, dt))


@pytest.mark.parametrize("starts,spread", [([0, 1], True), ([1, 1], True), ([3, 0], False)])
def test_strided_spatial_slices_are_spread_back_by_one_conv_transpose(starts, spread):
    from engine.graph.autodiff import differentiate
    model = node_model("Slice", [X, np.array(starts), np.array([BIG, BIG]), np.array([2, 3]), np.array([2, 2])], np.float32)
    ops = [n.op_type for n in differentiate(model, "out0", ["in0"]).graph.node]
    assert ("ConvTranspose" in ops, "MatMul" in ops) == (spread, not spread)


def test_slice_attributes_opset9():
    check(lambda dt: node_model("Slice", [X], dt, opset=9, starts=[1, -4], ends=[3, 100], axes=[1, 3]))


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads", [[0, 0, 1, 2, 0, 0, 2, 1], [0, 1, 0, 3, 0, 2, 1, 0], [0, 0, -1, 2, 0, 0, 1, -2]])
def test_pad(mode, pads):
    opset = 19 if mode == "wrap" else 17
    check(lambda dt: node_model("Pad", [X, np.array(pads)], dt, opset=opset, mode=mode))


def test_pad_constant_value_and_axes_inputs():
    check(lambda dt: node_model("Pad", [X, np.array([1, 2, 0, 3]), np.array(0.5), np.array([2, -1])], dt, opset=18))


def test_pad_attributes_opset10():
    check(lambda dt: node_model("Pad", [X], dt, opset=10, pads=[0, 0, 2, 1, 0, 0, 0, 2], mode="reflect"))
    check(lambda dt: node_model("Pad", [X], dt, opset=10, pads=[0, 1, 2, 1, 0, 0, 0, 2], value=1.5))


@pytest.mark.parametrize("x,shape", [(("N", 1, 5, 1), [1, 4, 5, 3]), (("N", 3, 1, 1), [3, 1, 2]),
                                     ((5, 1), [2, 1, 5, 4]), (("N", 3, 5, 6), [1])])
def test_expand(x, shape):
    check(lambda dt: node_model("Expand", [x, np.array(shape)], dt))


@pytest.mark.parametrize("indices,axis", [
    (np.array([2, 0]), 1),
    (np.array([[0, 4], [4, 4], [-1, 2]]), 2),  # 2-D, repeated and negative indices
    (np.array(1), 1),  # scalar: the axis disappears
    (np.array([5, 0, 5, 1]), -1),
    (np.array([[1], [2]]), 3),
])
def test_gather(indices, axis):
    check(lambda dt: node_model("Gather", [X, indices], dt, axis=axis))


def test_gather_along_a_static_batch():
    check(lambda dt: node_model("Gather", [(4, 3, 2), np.array([3, 3, 1])], dt))


def test_computed_indices_and_starts_are_refused_clearly():
    from engine.errors import UnsupportedOpError
    from engine.graph.autodiff import differentiate

    gather = node_model("Gather", [X, (2,)], np.float64, axis=1)
    gather.graph.input[1].type.tensor_type.elem_type = 7  # int64 indices fed at run time
    with pytest.raises(UnsupportedOpError, match="Gather.*computed indices"):
        differentiate(gather, "out0", ["in0"])
    sliced = node_model("Slice", [X, np.array([1]), np.array([3]), np.array([2])], np.float64)
    sliced.graph.initializer.pop(0)
    sliced.graph.input.append(helper.make_tensor_value_info("in1", 7, [1]))
    with pytest.raises(UnsupportedOpError, match="Slice.*computed starts"):
        differentiate(sliced, "out0", ["in0"])
