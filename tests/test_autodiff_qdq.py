"""A QDQ model made by onnxruntime.quantization: straight-through gradients."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from engine.graph.autodiff import SEED, differentiate, grad_name
from gradcheck import finish, node_model, session
from test_autodiff import small_cnn

quantization = pytest.importorskip("onnxruntime.quantization")


def dequantized_weights(qmodel):
    """{output name: float value} of every DequantizeLinear fed by initializers, computed in numpy."""
    inits = {t.name: numpy_helper.to_array(t) for t in qmodel.graph.initializer}
    out = {}
    for node in qmodel.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            q, scale = inits[node.input[0]], inits[node.input[1]]
            zp = inits[node.input[2]] if len(node.input) > 2 else np.zeros_like(scale)
            if scale.ndim == 1 and q.ndim > 1:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                shape = [-1 if i == axis else 1 for i in range(q.ndim)]
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            out[node.output[0]] = (q.astype(np.float64) - zp) * scale
    return out


def quantized(float_model, images, folder, fmt="QDQ", per_channel=False):
    """``float_model`` quantized by quantize_static (uint8 activations, int8 weights), calibrated on
    ``images``, in ``fmt`` QDQ (QuantizeLinear/DequantizeLinear pairs) or QOperator (QLinearConv ...)."""
    onnx.save(float_model, folder / "float.onnx")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(images[:, None])

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"image": x}

    quantization.quantize_static(str(folder / "float.onnx"), str(folder / f"{fmt}.onnx"), Reader(),
                                 quant_format=getattr(quantization.QuantFormat, fmt), per_channel=per_channel,
                                 activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8)
    return onnx.load(folder / f"{fmt}.onnx")


def qdq(float_model, images, folder):
    """The QDQ model of :func:`quantized`, shape-inferred, checked to hold QuantizeLinear nodes."""
    qmodel = onnx.shape_inference.infer_shapes(quantized(float_model, images, folder))
    assert sum(n.op_type == "QuantizeLinear" for n in qmodel.graph.node) >= 4
    return qmodel


def at_dequantized_weights(float_model, qmodel):
    """``float_model`` with each weight replaced by the QDQ model's dequantized weight."""
    weights = dequantized_weights(qmodel)
    out = onnx.ModelProto()
    out.CopyFrom(float_model)
    for t in out.graph.initializer:
        value = weights.get(t.name, weights.get(t.name + "_DequantizeLinear_Output"))
        if value is not None:  # BatchNormalization mean/var stay float
            t.CopyFrom(numpy_helper.from_array(value.astype(np.float32), t.name))
    return out


def linear_cnn():
    """Conv → strided Conv → GAP → Gemm: no ReLU or max, so gradients do not depend on activations."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("w1", rng.standard_normal((6, 3, 3, 3)) * 0.4), ("b1", rng.standard_normal(6) * 0.1),
        ("w2", rng.standard_normal((6, 6, 3, 3)) * 0.3), ("wf", rng.standard_normal((5, 6)))]]
    nodes = [onnx.helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1] * 4),
             onnx.helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1] * 4, strides=[2, 2]),
             onnx.helper.make_node("GlobalAveragePool", ["c2"], ["gap"]),
             onnx.helper.make_node("Flatten", ["gap"], ["flat"]),
             onnx.helper.make_node("Gemm", ["flat", "wf"], ["logits"], transB=1)]
    graph = onnx.helper.make_graph(nodes, "linear", [onnx.helper.make_tensor_value_info("image", 1, ["N", 3, 12, 12])],
                                   [onnx.helper.make_tensor_value_info("logits", 1, None)], initializer=inits)
    return finish(graph)


def input_gradients(models, images, seed, tensor="image"):
    feeds = {"image": images, SEED: seed}
    return [session(differentiate(m, "logits", [tensor])).run([grad_name(tensor)], feeds)[0] for m in models]


def test_qdq_straight_through_equals_float_gradient_at_dequantized_weights(tmp_path):
    """Exact case. A network linear in its input has gradients that do not depend on the
    activations, so the QDQ model's straight-through input gradient must equal the float
    model's input gradient at the dequantized weights, up to float32 rounding. Inputs are the
    calibration images halved, so no activation reaches the edge of its quantization range."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((8, 3, 12, 12)).astype(np.float32)
    float_model = linear_cnn()
    qmodel = qdq(float_model, images, tmp_path)
    seed = rng.standard_normal((8, 5)).astype(np.float32)
    got, want, plain = input_gradients(
        [qmodel, at_dequantized_weights(float_model, qmodel), float_model], images / 2, seed)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert not np.allclose(got, plain, rtol=1e-4, atol=1e-5 * np.abs(want).max())  # weights did change


def test_qdq_relu_folded_into_quantization_range(tmp_path):
    """With ReLUs the quantizer drops the Relu nodes and clips at 0 through the activation's
    quantization range; the straight-through rule blocks the gradient outside that range, so
    ReLU masks survive. Compared at the residual block's output (between them: a depthwise conv,
    a folded ReLU, GAP, Gemm) with the float model at the dequantized weights, at the calibration
    images: masks differ only for units within one quantization step of 0 (or rounded past the
    calibrated maximum), so we require 95 % of entries to agree to 1e-4 and the input gradients to
    point the same way (cosine > 0.9). Measured: 98.8 % and 0.975; a plain identity backward
    for QuantizeLinear (no range clipping) gets 34 % of the entries right."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((8, 3, 12, 12)).astype(np.float32)
    float_model = small_cnn()
    qmodel = qdq(float_model, images, tmp_path)
    assert not any(n.op_type == "Relu" for n in qmodel.graph.node)
    seed = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 8)]
    reference = at_dequantized_weights(float_model, qmodel)
    got, want = input_gradients([qmodel, reference], images, seed, tensor="block")
    close = np.isclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert close.mean() > 0.95, close.mean()
    got, want = input_gradients([qmodel, reference], images, seed)
    assert np.sum(got * want) / np.linalg.norm(got) / np.linalg.norm(want) > 0.9


@pytest.mark.parametrize("zero_point,axis", [(np.uint8(128), None), (np.array([0, 5, -3], np.int8), 1)])
def test_quantize_linear_passes_gradient_above_its_low_end_only(zero_point, axis):
    scale = np.float32(0.02) if axis is None else np.array([0.02, 0.01, 0.05], np.float32)
    extra = {} if axis is None else {"axis": axis}
    pair = node_model("QuantizeLinear", [("N", 3, 4), scale, zero_point], np.float32, **extra)
    # Append the DequantizeLinear that completes the pair.
    pair.graph.node.append(onnx.helper.make_node("DequantizeLinear", ["out0", "in1", "in2"], ["y"], **extra))
    pair.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info("y", onnx.TensorProto.UNDEFINED, None))
    pair = finish(pair.graph)
    x = np.random.default_rng(1).uniform(-4, 4, (2, 3, 4)).astype(np.float32)
    dy = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    got = session(differentiate(pair, "y", ["in0"])).run([grad_name("in0")], {"in0": x, SEED: dy})[0]
    info = np.iinfo(np.asarray(zero_point).dtype)
    s = np.broadcast_to(scale, (3,)).reshape(1, 3, 1)
    z = np.broadcast_to(zero_point, (3,)).reshape(1, 3, 1).astype(np.float64)
    above_low = x >= (info.min - z) * s
    saturated_high = x > (info.max - z) * s
    assert 0 < above_low.mean() < 1 and saturated_high.any()  # both ends are exercised
    np.testing.assert_array_equal(got, np.where(above_low, dy, 0))


@pytest.mark.parametrize("channels,zero_point", [(3, np.uint8(0)), (3, np.uint8(137)), (16, np.uint8(0)),
                                                 (16, np.arange(16, dtype=np.uint8) * 9)])
def test_quantize_linear_mask_is_exact_at_its_low_end(channels, zero_point):
    """The mask is one step op (HardSigmoid; for 16 channels per axis a clipped depthwise Conv):
    it must equal [x >= low] at low itself, at the floats on either side of it, at 0 and at
    tiny normal and huge values (negative subnormals are the one documented exception)."""
    scale = np.float32(0.0371) if zero_point.ndim == 0 else np.linspace(0.001, 0.007, 16).astype(np.float32)
    extra = {} if zero_point.ndim == 0 else {"axis": 1}
    pair = node_model("QuantizeLinear", [("N", channels, 3, 4), scale, zero_point], np.float32, **extra)
    pair.graph.node.append(onnx.helper.make_node("DequantizeLinear", ["out0", "in1", "in2"], ["y"], **extra))
    pair.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info("y", onnx.TensorProto.UNDEFINED, None))
    rewritten = differentiate(finish(pair.graph), "y", ["in0"])
    assert not {"Less", "Not"} & {n.op_type for n in rewritten.graph.node}
    low = (-np.broadcast_to(zero_point, (channels,)).astype(np.float64) * scale).astype(np.float32)[:, None]
    below = np.where(low == 0, -np.finfo(np.float32).tiny, np.nextafter(low, np.float32(-9)))  # not subnormal
    values = [low, below, np.nextafter(low, np.float32(9))]
    values += [np.full_like(low, v) for v in (0.0, 1.2e-38, -1.2e-38, 1e30, -1e30, 7.0, -7.0, 0.02, -0.02)]
    x = np.concatenate(values, axis=1).reshape(1, channels, 3, 4)
    dy = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    (got,) = session(rewritten).run([grad_name("in0")], {"in0": x, SEED: dy})
    np.testing.assert_array_equal(got, np.where(x >= low.reshape(1, channels, 1, 1), dy, 0))


def test_dequantized_weights_on_the_cone_become_float_initializers(tmp_path):
    """No DequantizeLinear of a weight is left to run on every gradient call; the forward output
    of the rewritten model still matches the QDQ model's."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((8, 3, 12, 12)).astype(np.float32)
    qmodel = qdq(linear_cnn(), images, tmp_path)
    rewritten = differentiate(qmodel, "logits", ["image"])
    weights = {t.name for t in rewritten.graph.initializer}
    assert not [n for n in rewritten.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]
    seed = np.zeros((8, 5), np.float32)
    got = session(rewritten).run(["logits"], {"image": images, SEED: seed})[0]
    np.testing.assert_allclose(got, session(qmodel).run(["logits"], {"image": images})[0], rtol=1e-5, atol=1e-5)
