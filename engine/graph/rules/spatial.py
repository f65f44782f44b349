"""Rules for Resize / Upsample and DepthToSpace / SpaceToDepth."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from engine.errors import UnsupportedOpError
from engine.graph.rules import attrs, rule
from engine.graph.rules.indexing import along_axis


COMPUTED = "computed"  # a scales/sizes input known only at run time


def _resize_request(ctx, node, rank, legacy):
    """Full-rank (roi, scales, sizes) of a Resize/Upsample node (``legacy``: Upsample or
    Resize-10, scales only); unused ones are None.

    Sizes computed in the graph (e.g. from the input's shape, torchvision's LRASPP) are read
    from the output's inferred shape when the input size is fixed, else they are ``COMPUTED``
    (known only at run time)."""
    a = attrs(node)

    def given(index):
        if len(node.input) <= index or not node.input[index]:
            return None
        value = ctx.value(node.input[index])
        if value is None and index == 3 and "axes" not in a:
            value = _output_sizes(ctx, node)
        if value is None:
            return COMPUTED
        return value.tolist() if value.size else None

    if legacy:
        scales = list(a["scales"]) if "scales" in a else given(1)
        if scales is COMPUTED:
            raise UnsupportedOpError(f"{node.op_type} {node.name!r} has computed scales: fold constants first")
        return None, scales, None
    if a.get("keep_aspect_ratio_policy", "stretch") != "stretch" and given(3) is not None:
        raise UnsupportedOpError(f"Resize {node.name!r}: keep_aspect_ratio_policy has no gradient rule; use stretch")
    roi, scales, sizes = given(1), given(2), given(3)
    if a.get("coordinate_transformation_mode") != "tf_crop_and_resize":
        roi = None  # read by that mode only
    if COMPUTED in (roi, scales, sizes):
        if roi is COMPUTED or a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise UnsupportedOpError(f"Resize {node.name!r} has a computed roi or aspect policy: fold constants first")
        return None, None, COMPUTED
    axes = [ax % rank for ax in a.get("axes", range(rank))]
    if len(axes) < rank:  # opset 18 `axes`: the others keep their size
        full_roi, full_scales, full_sizes = [0.0] * rank + [1.0] * rank, [1.0] * rank, list(ctx.shape(node.input[0]))
        for i, ax in enumerate(axes):
            if roi is not None:
                full_roi[ax], full_roi[rank + ax] = roi[i], roi[len(axes) + i]
            if scales is not None:
                full_scales[ax] = scales[i]
            if sizes is not None:
                full_sizes[ax] = sizes[i]
        roi, scales, sizes = (full_roi if roi is not None else None, full_scales if scales is not None else None,
                              full_sizes if sizes is not None else None)
    return roi, scales, sizes


def _output_sizes(ctx, node):
    """The sizes a Resize produces, from its inferred output shape, or None when one is unknown.
    A symbolic batch (axis 0, symbolic in the input too) is taken as left alone."""
    x, y = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if x is None or y is None or len(x) != len(y):
        return None
    sizes = [d if isinstance(d, int) else (i if axis == 0 and not isinstance(i, int) else None)
             for axis, (d, i) in enumerate(zip(y, x))]
    if any(s is None for s in sizes):
        return None
    return np.array(sizes, dtype=object)  # a symbol equals the input's dim: that axis is skipped


def _axis_matrix(ctx, node, axis, dim, roi, scales, sizes, legacy=False):
    """The matrix M (output size × ``dim``) of the node's 1-D map along ``axis``: the same op
    run by onnx's reference evaluator on each basis vector of a rank-1 input, minus its value
    at 0 (the extrapolation value of tf_crop_and_resize). Upsample and Resize-10 run as their
    Resize-11 equivalent."""
    keep = {k: v for k, v in attrs(node).items() if k not in ("axes", "keep_aspect_ratio_policy")}
    rank = len(scales) if scales is not None else len(sizes)
    inits = []

    def add(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    if keep.get("coordinate_transformation_mode") == "tf_half_pixel_for_nn":
        out = sizes[axis] if sizes is not None else int(np.floor(dim * scales[axis]))
        return _tf_half_pixel_nearest(dim, out, out / dim if sizes is not None else scales[axis],
                                      keep.get("nearest_mode", "round_prefer_floor"))
    opset = ctx.opset
    if legacy:  # as the Resize-11 equivalent (asymmetric coordinates)
        opset = 13
        keep = {"mode": keep.get("mode", "nearest"), "coordinate_transformation_mode": "asymmetric",
                "nearest_mode": "floor"}
    inputs = ["x", add("roi", np.array([roi[axis], roi[rank + axis]], np.float32)) if roi is not None else "",
              add("scales", np.array([scales[axis]], np.float32)) if scales is not None else "",
              add("sizes", np.array([sizes[axis]], np.int64)) if sizes is not None else ""]
    graph = helper.make_graph([helper.make_node("Resize", inputs, ["y"], **keep)], "axis_map",
                              [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [dim])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)], initializer=inits)
    try:
        evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
        base = evaluator.run(None, {"x": np.zeros(dim)})[0]
        columns = [evaluator.run(None, {"x": e})[0] - base for e in np.eye(dim)]
    except Exception as error:  # the reference refuses modes it does not implement
        raise UnsupportedOpError(f"{node.op_type} {node.name!r}: no gradient rule for its attributes; pick a layer after it ({error})")
    return np.stack(columns, axis=1)


def _tf_half_pixel_nearest(dim, out, scale, nearest_mode):
    """Pick matrix of nearest Resize with the tf_half_pixel_for_nn mode (Resize-11, still run by
    ONNX Runtime, which the reference evaluator lacks): x_original = (x_resized + 0.5) / scale."""
    original = (np.arange(out) + 0.5) / scale
    rounded = {"round_prefer_floor": np.ceil(original - 0.5), "round_prefer_ceil": np.floor(original + 0.5),
               "floor": np.floor(original), "ceil": np.ceil(original)}[nearest_mode]
    matrix = np.zeros((out, dim))
    matrix[np.arange(out), np.clip(rounded, 0, dim - 1).astype(int)] = 1
    return matrix


@rule("Resize", since=11)
def resize(ctx, node, dy, legacy=False):
    """Resizing is separable: per resized axis, the transposed interpolation matrix (built at
    rewrite time from the reference implementation, any mode) applied with one MatMul."""
    x, y = node.input[0], node.output[0]
    rank = ctx.rank(x)
    roi, scales, sizes = _resize_request(ctx, node, rank, legacy)
    if sizes is COMPUTED:
        return _resize_by_shapes(ctx, node, dy)
    if scales is None and sizes is None:
        raise UnsupportedOpError(f"{node.op_type} {node.name!r} has neither scales nor sizes; pick a layer after it")
    matrices = {}
    for axis, (dim, out) in enumerate(zip(ctx.shape(x), ctx.shape(y))):
        same = scales[axis] == 1 if scales is not None else sizes[axis] == dim
        if same and (roi is None or roi[axis::rank] == [0, 1]):
            continue  # an identity in every mode (e.g. batch and channels)
        if not isinstance(dim, int):
            raise UnsupportedOpError(
                f"{node.op_type} {node.name!r} resizes a symbolic axis: give an input size: input_size=(H, W)")
        matrices[axis] = _axis_matrix(ctx, node, axis, dim, roi, scales, sizes, legacy)
        if isinstance(out, int) and matrices[axis].shape[0] != out:
            raise UnsupportedOpError(f"{node.op_type} {node.name!r}: axis {axis} map disagrees with the output size; pick a layer after it")
    summed = _block_sums(ctx, dy, matrices, x)
    if summed is not None:
        return summed
    dx = dy
    for axis, matrix in matrices.items():
        dx = along_axis(ctx, dx, matrix.T, axis, like=x)
    return dx


def _block_sums(ctx, dy, matrices, like):
    """The gradient of an integer-factor nearest upsampling of an N×C×H×W tensor ``like`` (every
    map in ``matrices``, by axis, repeats each input f times): the sum over each f_h×f_w block,
    one depthwise Conv of ones with stride f that ORT CPU runs in its NCHWc layout, instead of a
    MatMul with the transposed map per axis. None for other resizes."""
    shape = ctx.shape(like)
    if not matrices or shape is None or len(shape) != 4 or not isinstance(shape[1], int) or min(matrices) < 2:
        return None
    factors = [1, 1]
    for axis, matrix in matrices.items():
        factor, rest = divmod(matrix.shape[0], matrix.shape[1])
        if rest or not np.array_equal(matrix, np.repeat(np.eye(matrix.shape[1]), factor, axis=0)):
            return None
        factors[axis - 2] = factor
    ones = np.ones((shape[1], 1, *factors), ctx.dtype(like))
    return ctx.op("Conv", dy, ctx.const(ones, "block_sum"), kernel_shape=factors, strides=factors, group=shape[1])


@rule("Upsample")
@rule("Resize", since=10)
def upsample(ctx, node, dy):
    """Upsample and Resize-10: scales only, asymmetric coordinates (Resize-11's with them)."""
    return resize(ctx, node, dy, legacy=True)


def _resize_by_shapes(ctx, node, dy):
    """Backward of a Resize whose scales/sizes are computed: only the input and output sizes
    matter (scales count as output size / input size). An axis whose sizes are static gets the
    constant matrix of :func:`_axis_matrix`; one known only at run time gets the matrix built by
    the same Resize applied to an identity matrix at run time (:func:`_runtime_axis_matrix`), as
    does an axis whose output size shape inference could not tell (e.g. channels: 3×3 then)."""
    x, y = node.input[0], node.output[0]
    rank = ctx.rank(x)
    dx = dy
    for axis, (dim, out) in enumerate(zip(ctx.shape(x), ctx.shape(y) or [None] * rank)):
        if dim == out and dim is not None:
            continue  # same size (static, or the same symbol): an identity in every mode
        if isinstance(dim, int) and isinstance(out, int):
            sizes = [out if i == axis else 1 for i in range(rank)]
            dx = along_axis(ctx, dx, _axis_matrix(ctx, node, axis, dim, None, None, sizes).T, axis, like=x)
            continue
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]
        moved = ctx.op("Transpose", dx, perm=perm) if axis != rank - 1 else dx
        moved = ctx.op("MatMul", moved, ctx.op("Transpose", _runtime_axis_matrix(ctx, node, axis)))
        dx = ctx.op("Transpose", moved, perm=perm) if axis != rank - 1 else moved
    return dx


def _runtime_axis_matrix(ctx, node, axis):
    """Mᵀ (input size × output size along ``axis``) of the node's 1-D map, built at run time:
    the node's Resize, with sizes (n, m), applied to the n×n identity (row j becomes M·e_j)."""
    x, y = node.input[0], node.output[0]
    keep = {k: v for k, v in attrs(node).items() if k not in ("axes", "keep_aspect_ratio_policy")}
    n, m = (ctx.op("Slice", ctx.shape_of(t), ctx.ints([axis]), ctx.ints([axis + 1])) for t in (x, y))
    zero = numpy_helper.from_array(np.zeros(1, ctx.dtype(x)))
    eye = ctx.op("EyeLike", ctx.op("ConstantOfShape", ctx.op("Concat", n, n, axis=0), value=zero))
    return ctx.op("Resize", eye, "", "", ctx.op("Concat", n, m, axis=0), **keep)


@rule("SpaceToDepth")
def space_to_depth(ctx, node, dy):
    """A permutation whose inverse is DepthToSpace in DCR mode."""
    return ctx.op("DepthToSpace", dy, blocksize=attrs(node)["blocksize"])  # DCR: the default


@rule("DepthToSpace")
def depth_to_space(ctx, node, dy):
    """DCR is undone by SpaceToDepth; CRD by the inverse reshape–transpose–reshape."""
    x = node.input[0]
    a = attrs(node)
    block = a["blocksize"]
    if a.get("mode", "DCR") == "DCR":
        return ctx.op("SpaceToDepth", dy, blocksize=block)
    _, channels, height, width = ctx.shape(x)
    if not all(isinstance(d, int) for d in (channels, height, width)):
        raise UnsupportedOpError(f"DepthToSpace {node.name!r} has symbolic channel/spatial dims; pick a layer after it")
    blocks = ctx.op("Reshape", dy, ctx.ints([-1, channels // block**2, height, block, width, block]))
    return ctx.reshape_like(ctx.op("Transpose", blocks, perm=[0, 1, 3, 5, 2, 4]), x)
