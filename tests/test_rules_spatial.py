"""Resize / Upsample and DepthToSpace / SpaceToDepth rules alone against central finite
differences through ORT (ORT's Resize has a float64 kernel; scales stay float32 as ONNX wants)."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from gradcheck import check, finish, node_model

X = ("N", 3, 5, 4)


def resize_model(dtype, roi=None, scales=None, sizes=None, x=X, opset=17, **attributes):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits, names = [], []
    for name, value, kind in (("roi", roi, np.float32), ("scales", scales, np.float32), ("sizes", sizes, np.int64)):
        if value is None:
            names.append("")
        else:
            inits.append(numpy_helper.from_array(np.array(value, kind), name))
            names.append(name)
    while not names[-1]:
        names.pop()
    graph = helper.make_graph([helper.make_node("Resize", ["x", *names], ["y"], **attributes)], "resize",
                              [helper.make_tensor_value_info("x", elem, list(x))],
                              [helper.make_tensor_value_info("y", elem, None)], initializer=inits)
    return finish(graph, opset)


CASES = {
    "nearest-x2": dict(scales=[1, 1, 2, 2], mode="nearest"),
    "nearest-asym-floor": dict(scales=[1, 1, 1.5, 2.5], mode="nearest", coordinate_transformation_mode="asymmetric",
                               nearest_mode="floor"),
    "nearest-down-sizes": dict(sizes=[2, 3, 3, 3], mode="nearest", x=(2, 3, 5, 4)),
    "linear-x2": dict(scales=[1, 1, 2, 2], mode="linear"),
    "linear-align-corners": dict(sizes=[2, 3, 7, 9], mode="linear", coordinate_transformation_mode="align_corners",
                                 x=(2, 3, 5, 4)),
    "linear-pytorch-half-pixel-down": dict(scales=[1, 1, 0.6, 0.5], mode="linear",
                                           coordinate_transformation_mode="pytorch_half_pixel"),
    "linear-channels-too": dict(scales=[1, 2, 2, 1], mode="linear"),
    "tf-half-pixel-nn": dict(scales=[1, 1, 2, 1.5], mode="nearest",
                             coordinate_transformation_mode="tf_half_pixel_for_nn"),  # tf2onnx; ORT runs it
    "tf-half-pixel-nn-ceil-sizes": dict(sizes=[2, 3, 7, 3], mode="nearest", x=(2, 3, 5, 4), nearest_mode="ceil",
                                        coordinate_transformation_mode="tf_half_pixel_for_nn"),
    "cubic-x2": dict(scales=[1, 1, 2, 2], mode="cubic"),
    "cubic-exclude-outside": dict(scales=[1, 1, 1.6, 2], mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1),
    "crop-and-resize": dict(roi=[0, 0, 0.2, 0.1, 1, 1, 0.9, 0.7], scales=[1, 1, 2, 2], mode="linear",
                            coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=3.0),
}


@pytest.mark.parametrize("case", CASES)
def test_resize(case):
    check(lambda dt: resize_model(dt, **CASES[case]))


@pytest.mark.parametrize("case,summed", [("nearest-x2", True), ("nearest-asym-floor", False), ("linear-x2", False)])
def test_integer_nearest_upsampling_sums_blocks_by_one_conv(case, summed):
    """Nearest ×2 (a YOLO neck's): the gradient is the sum over each 2×2 block, one depthwise Conv;
    other maps keep their MatMuls (the values are checked above)."""
    from engine.graph.autodiff import differentiate
    ops = [n.op_type for n in differentiate(resize_model(np.float32, **CASES[case]), "y", ["x"]).graph.node]
    assert ("Conv" in ops, "MatMul" in ops) == (summed, not summed)


def test_resize_axes_opset18():
    check(lambda dt: resize_model(dt, scales=[2, 3], opset=18, axes=[3, 2], mode="linear"))
    check(lambda dt: resize_model(dt, sizes=[9], opset=19, axes=[-2], mode="nearest",
                                  coordinate_transformation_mode="half_pixel_symmetric"))


def test_resize_linear_antialias_opset18():
    check(lambda dt: resize_model(dt, scales=[1, 1, 0.5, 0.75], x=("N", 2, 8, 8), opset=18, mode="linear",
                                  antialias=1))


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("op,opset", [("Upsample", 7), ("Upsample", 9), ("Resize", 10)])
def test_before_resize11(op, opset, mode):
    """Upsample (scales as attribute at opset 7, as input at 9) and Resize-10: asymmetric coordinates."""
    scales = [1.0, 1.0, 2.0, 3.0]

    def make(dt):
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dt))
        as_input = opset >= 9
        node = helper.make_node(op, ["x", "scales"] if as_input else ["x"], ["y"], mode=mode,
                                **({} if as_input else {"scales": scales}))
        inits = [numpy_helper.from_array(np.array(scales, np.float32), "scales")] if as_input else []
        graph = helper.make_graph([node], "up", [helper.make_tensor_value_info("x", elem, list(X))],
                                  [helper.make_tensor_value_info("y", elem, ["N", 3, 10, 12])], initializer=inits)
        return finish(graph, opset)

    check(make)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode):
    check(lambda dt: node_model("DepthToSpace", [("N", 8, 3, 2)], dt, blocksize=2, mode=mode))


def test_space_to_depth():
    check(lambda dt: node_model("SpaceToDepth", [("N", 2, 6, 4)], dt, blocksize=2))


def test_resizing_the_symbolic_batch_is_refused_clearly():
    from engine.errors import UnsupportedOpError
    from engine.graph.autodiff import differentiate

    with pytest.raises(UnsupportedOpError, match="Resize.*symbolic axis"):
        differentiate(resize_model(np.float32, scales=[2, 1, 2, 2]), "y", ["x"])


COMPUTED_CASES = {
    "linear-half-pixel": dict(mode="linear"),  # torch's F.interpolate(size=..., mode="bilinear")
    "nearest-asymmetric-floor": dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    "linear-align-corners": dict(mode="linear", coordinate_transformation_mode="align_corners"),
    "cubic": dict(mode="cubic", cubic_coeff_a=-0.75),
}


def computed_resize_model(dtype, static, **attributes):
    """Resize x to the spatial size of a second input ``ref`` (sizes = Shape(ref), as torchvision's
    LRASPP/FCN heads export); H and W are static or symbolic."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    x, ref = (("N", 3, 5, 4), ("N", 3, 9, 7)) if static else (("N", 3, "H", "W"), ("N", 3, "H2", "W2"))
    nodes = [helper.make_node("Shape", ["ref"], ["ref_shape"]),
             helper.make_node("Slice", ["ref_shape", "two", "four"], ["ref_size"]),
             helper.make_node("Shape", ["x"], ["x_shape"]),
             helper.make_node("Slice", ["x_shape", "zero", "two"], ["x_lead"]),
             helper.make_node("Concat", ["x_lead", "ref_size"], ["sizes"], axis=0),
             helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], **attributes)]
    inits = [numpy_helper.from_array(np.array([v], np.int64), name) for name, v in (("zero", 0), ("two", 2), ("four", 4))]
    graph = helper.make_graph(nodes, "computed", [helper.make_tensor_value_info("x", elem, list(x)),
                                                  helper.make_tensor_value_info("ref", elem, list(ref))],
                              [helper.make_tensor_value_info("y", elem, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, data_prop=True)  # as normalization does


@pytest.mark.parametrize("case", COMPUTED_CASES)
@pytest.mark.parametrize("static", [True, False])
def test_resize_with_sizes_computed_from_shapes(case, static):
    """Static H and W: the constant matrices; symbolic: matrices built at run time by resizing an
    identity. Checked at x 2×3×5×4 → 9×7 (batch and channels kept: the Slice of Shape(x))."""
    def feeds(rng, dtype):
        return {"x": rng.standard_normal((2, 3, 5, 4)).astype(dtype), "ref": np.zeros((2, 3, 9, 7), dtype)}

    check(lambda dt: computed_resize_model(dt, static, **COMPUTED_CASES[case]), wrt=["x"], feeds=feeds)


def test_resize_with_computed_scales_uses_the_shapes():
    """Scales computed at run time (here an Identity of a constant: not folded in the test)."""
    def make(dt):
        model = resize_model(dt, scales=[1, 1, 2, 2], mode="linear")
        graph = model.graph
        graph.node.insert(0, helper.make_node("Identity", ["scales"], ["scales_computed"]))
        graph.node[1].input[2] = "scales_computed"
        return finish(graph)

    check(make)
