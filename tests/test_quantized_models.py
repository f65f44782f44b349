"""QOperator and dynamic int8 models (made here by onnxruntime.quantization from float models
built with onnx.helper), explained through their QDQ rewriting (engine.graph.quantized)."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from engine.graph.autodiff import SEED, differentiate, grad_name
from engine.graph.normalize import normalize
from engine.graph.quantized import dequantize_operators, integer_forward
from engine.graph.taps import add_taps
from gradcheck import finish, session
from test_autodiff_qdq import linear_cnn, quantized

quantization = pytest.importorskip("onnxruntime.quantization")

QOPERATOR_OPS = {"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
                 "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QGemm"}
DYNAMIC_OPS = {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}


def mixed_cnn():
    """A float CNN with every op QOperator quantization turns into an integer op: conv-relu-maxpool,
    two branches (LeakyRelu, Sigmoid gate) multiplied, concatenated with the skip, average pool,
    residual add, global average pool, Gemm, MatMul."""
    rng = np.random.default_rng(11)
    w = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.4, "b1": rng.standard_normal(8) * 0.1,
         "w2": rng.standard_normal((8, 8, 3, 3)) * 0.2, "w3": rng.standard_normal((8, 8, 1, 1)) * 0.4,
         "w4": rng.standard_normal((16, 16, 3, 3)) * 0.15, "b4": rng.standard_normal(16) * 0.1,
         "wg": rng.standard_normal((12, 16)) * 0.4, "bg": rng.standard_normal(12) * 0.1,
         "wm": rng.standard_normal((12, 5)) * 0.4}
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1] * 4),
             helper.make_node("LeakyRelu", ["c2"], ["l2"], alpha=0.1),
             helper.make_node("Conv", ["p1", "w3"], ["c3"]),
             helper.make_node("Sigmoid", ["c3"], ["gate"]),
             helper.make_node("Mul", ["l2", "gate"], ["gated"]),
             helper.make_node("Concat", ["gated", "p1"], ["cat"], axis=1),
             helper.make_node("AveragePool", ["cat"], ["avg"], kernel_shape=[3, 3], pads=[1] * 4,
                              count_include_pad=1),
             helper.make_node("Conv", ["avg", "w4", "b4"], ["c4"], pads=[1] * 4),
             helper.make_node("Add", ["c4", "cat"], ["block"]),
             helper.make_node("GlobalAveragePool", ["block"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "wg", "bg"], ["hidden"], transB=1),
             helper.make_node("MatMul", ["hidden", "wm"], ["logits"])]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("image", 1, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("logits", 1, None)],
                              initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    return finish(graph)


def calibration_images(count=16, seed=0):
    return np.random.default_rng(seed).standard_normal((count, 3, 12, 12)).astype(np.float32)


def qoperator(float_model, folder, images, per_channel=False):
    return quantized(float_model, images, folder, "QOperator", per_channel)


def dynamic(float_model, folder, per_channel=False, weight_type="QInt8"):
    onnx.save(float_model, folder / "float.onnx")
    quantization.quantize_dynamic(str(folder / "float.onnx"), str(folder / "dyn.onnx"), per_channel=per_channel,
                                  op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                                  weight_type=getattr(quantization.QuantType, weight_type))
    return onnx.load(folder / "dyn.onnx")


def integer_weights(float_model, qmodel):
    """``float_model`` with each weight replaced by the quantized model's dequantized weight
    (``name_quantized``, ``name_scale``, ``name_zero_point``; a ``name_Transposed`` copy for a
    Gemm turned MatMul by quantize_dynamic)."""
    inits = {t.name: numpy_helper.to_array(t) for t in qmodel.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(float_model)
    for t in out.graph.initializer:
        for name, transposed in ((t.name, False), (t.name + "_Transposed", True)):
            if name + "_quantized" not in inits or inits[name + "_quantized"].dtype not in (np.int8, np.uint8):
                continue
            q, s, z = (inits[name + suffix] for suffix in ("_quantized", "_scale", "_zero_point"))
            if s.size > 1 and not transposed:  # per output channel: axis 0 (a MatMul weight: the last)
                s, z = s.reshape(-1, *[1] * (q.ndim - 1)), z.reshape(-1, *[1] * (q.ndim - 1))
            value = (q.astype(np.float64) - z) * s
            t.CopyFrom(numpy_helper.from_array((value.T if transposed else value).astype(np.float32), t.name))
    return out


def ops(model):
    return {n.op_type for n in model.graph.node}


def gradients(model, tap, images, seed):
    """(activation, gradient) at ``tap`` of Σ seed · logits, through normalize + differentiate. The
    float tensors of an integer model (the tap) exist once its integer ops are rewritten."""
    clean = normalize(add_taps(dequantize_operators(model), [tap]))
    return session(differentiate(clean, "logits", [tap])).run([tap, grad_name(tap)], {"image": images, SEED: seed})


def grad_cam(activation, gradient):
    return np.maximum(np.sum(gradient.mean(axis=(2, 3), keepdims=True) * activation, axis=1), 0)


def correlation(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def cosine(a, b):
    return float(np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("per_channel", [False, True])
def test_qoperator_model_runs_as_the_deployed_integer_arithmetic(tmp_path, per_channel):
    """Every QOperator op is rewritten away, and the rewritten model's outputs are those of the
    integer model: ONNX Runtime fuses each DequantizeLinear → op → QuantizeLinear back into the
    integer op with the model's own weights. Measured: identical (max difference 0)."""
    qmodel = qoperator(mixed_cnn(), tmp_path, calibration_images(), per_channel)
    assert QOPERATOR_OPS <= ops(qmodel)
    clean = normalize(qmodel)
    assert not ops(clean) & (QOPERATOR_OPS | DYNAMIC_OPS) and all(n.domain == "" for n in clean.graph.node)
    images = calibration_images(4, seed=1)
    want, got = (session(m).run(["logits"], {"image": images})[0] for m in (qmodel, clean))
    np.testing.assert_array_equal(got, want)


def test_qoperator_grad_cam_and_input_gradient_agree_with_the_float_model(tmp_path):
    """Straight-through gradients of the int8 model against the float model's at the calibration
    images: Grad-CAM at the residual block (requantized there) correlates > 0.9 with the float
    model's map and the input gradients point the same way (cosine > 0.8). Measured (16 images): Grad-CAM
    correlation 0.95, input-gradient cosine 0.98."""
    float_model = mixed_cnn()
    images = calibration_images()
    qmodel = qoperator(float_model, tmp_path, images)
    seed = np.eye(5, dtype=np.float32)[np.arange(16) % 5]
    (qa, qg), (fa, fg) = (gradients(m, "block", images, seed) for m in (qmodel, float_model))
    assert correlation(grad_cam(qa, qg), grad_cam(fa, fg)) > 0.9
    (_, qx), (_, fx) = (gradients(m, "image", images, seed) for m in (qmodel, float_model))
    assert cosine(qx, fx) > 0.8


@pytest.mark.parametrize("per_channel", [False, True])
def test_qoperator_gradient_is_the_float_gradient_at_the_integer_weights(tmp_path, per_channel):
    """Exact case: a network linear in its input (linear_cnn) has gradients independent of the
    activations, so the straight-through gradient of its QOperator model equals the float
    model's gradient at the dequantized integer weights (inputs are the calibration images
    halved: no activation is clipped at the low end of its range)."""
    float_model = linear_cnn()
    images = calibration_images(8)
    qmodel = qoperator(float_model, tmp_path, images, per_channel)
    assert {"QLinearConv", "QLinearGlobalAveragePool", "QGemm"} <= ops(qmodel)
    seed = np.random.default_rng(2).standard_normal((8, 5)).astype(np.float32)
    got = gradients(qmodel, "image", images / 2, seed)[1]
    want = gradients(integer_weights(float_model, qmodel), "image", images / 2, seed)[1]
    plain = gradients(float_model, "image", images / 2, seed)[1]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert not np.allclose(got, plain, rtol=1e-4, atol=1e-5 * np.abs(want).max())  # the weights did change


@pytest.mark.parametrize("per_channel,weight_type", [(False, "QInt8"), (True, "QInt8"), (False, "QUInt8")])
def test_dynamic_model_outputs_and_exact_gradient(tmp_path, per_channel, weight_type):
    """quantize_dynamic (DynamicQuantizeLinear, ConvInteger, MatMulInteger): outputs equal the
    integer model's up to float32 rounding (measured: 2e-6 where logits reach 8.6), and on linear_cnn the
    input gradient equals the float model's at the dequantized weights."""
    float_model = linear_cnn()
    qmodel = dynamic(float_model, tmp_path, per_channel, weight_type)
    assert DYNAMIC_OPS <= ops(qmodel)
    clean = normalize(qmodel)
    assert not ops(clean) & {"ConvInteger", "MatMulInteger"}
    images = calibration_images(4, seed=3)
    want, got = (session(m).run(["logits"], {"image": images})[0] for m in (qmodel, clean))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    seed = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
    got = gradients(qmodel, "image", images, seed)[1]
    want = gradients(integer_weights(float_model, qmodel), "image", images, seed)[1]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("per_channel,weight_type", [(False, "QInt8"), (True, "QInt8"), (False, "QUInt8")])
def test_dynamic_products_run_in_integers_after_differentiation(tmp_path, per_channel, weight_type):
    """integer_forward turns the differentiated graph's forward ConvInteger/MatMulInteger back into
    integer ops (the backward keeps its float weights) and reads DynamicQuantizeLinear's own
    quantized output: the logits equal the integer model's and the input gradient the all-float
    graph's, up to float32 rounding."""
    qmodel = dynamic(mixed_cnn(), tmp_path, per_channel, weight_type)
    counts = {op: sum(n.op_type == op for n in qmodel.graph.node) for op in ("ConvInteger", "MatMulInteger")}
    float_graph = differentiate(normalize(qmodel), "logits", ["image"])
    integer_graph = integer_forward(onnx.load_from_string(float_graph.SerializeToString()))
    assert {op: sum(n.op_type == op for n in integer_graph.graph.node) for op in counts} == counts
    assert "QuantizeLinear" in ops(float_graph) and "QuantizeLinear" not in ops(integer_graph)  # DynamicQuantizeLinear's
    images = calibration_images(4, seed=3)
    seed = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
    deployed = session(qmodel).run(["logits"], {"image": images})[0]
    (f_logits, f_grad), (i_logits, i_grad) = (session(m).run(["logits", grad_name("image")], {"image": images, SEED: seed})
                                              for m in (float_graph, integer_graph))
    np.testing.assert_allclose(i_logits, deployed, rtol=0, atol=1e-5 * np.abs(deployed).max())
    np.testing.assert_allclose(i_logits, f_logits, rtol=0, atol=1e-5 * np.abs(deployed).max())
    np.testing.assert_allclose(i_grad, f_grad, rtol=1e-4, atol=1e-5 * np.abs(f_grad).max())


def test_dynamic_mixed_model_agrees_with_the_float_model(tmp_path):
    """The mixed CNN through quantize_dynamic: Grad-CAM at the block correlates > 0.9 with the
    float model's and the input gradients have cosine > 0.9 (measured on 16 images: 0.9999 and 0.99)."""
    float_model = mixed_cnn()
    qmodel = dynamic(float_model, tmp_path)
    images = calibration_images(8, seed=4)
    seed = np.eye(5, dtype=np.float32)[np.arange(8) % 5]
    (qa, qg), (fa, fg) = (gradients(m, "block", images, seed) for m in (qmodel, float_model))
    assert correlation(grad_cam(qa, qg), grad_cam(fa, fg)) > 0.9
    (_, qx), (_, fx) = (gradients(m, "image", images, seed) for m in (qmodel, float_model))
    assert cosine(qx, fx) > 0.9


def test_float_models_are_left_as_they_are():
    model = mixed_cnn()
    assert dequantize_operators(model).SerializeToString() == model.SerializeToString()


def lstm_model(dtype=np.float32):
    """X (T×N×I) → bidirectional LSTM → Y_h."""
    rng = np.random.default_rng(5)
    hidden, size = 6, 4
    w = {"W": rng.standard_normal((2, 4 * hidden, size)) * 0.5, "R": rng.standard_normal((2, 4 * hidden, hidden)) * 0.5,
         "B": rng.standard_normal((2, 8 * hidden)) * 0.2}
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "y_h"], hidden_size=hidden, direction="bidirectional")
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("x", 1, [5, "N", size])],
                              [helper.make_tensor_value_info("y_h", 1, None)],
                              initializer=[numpy_helper.from_array(v.astype(dtype), k) for k, v in w.items()])
    return finish(graph, opset=14)


def test_dynamic_quantize_lstm_becomes_a_float_lstm(tmp_path):
    """quantize_dynamic turns LSTM into com.microsoft DynamicQuantizeLSTM (int8 weights, X and H
    quantized at each step). The rewrite is a standard LSTM with the dequantized weights: outputs
    within 5 % of the integer op's (it skips the per-step rounding of X and H; measured 2.0 %)
    and gradients of the float LSTM at those weights (cosine with the float model's > 0.99)."""
    float_model = lstm_model()
    onnx.save(float_model, tmp_path / "lstm.onnx")
    quantization.quantize_dynamic(str(tmp_path / "lstm.onnx"), str(tmp_path / "q.onnx"), op_types_to_quantize=["LSTM"],
                                  weight_type=quantization.QuantType.QInt8)
    qmodel = onnx.load(tmp_path / "q.onnx")
    assert "DynamicQuantizeLSTM" in ops(qmodel)
    clean = normalize(qmodel)
    assert "LSTM" in ops(clean) and all(n.domain == "" for n in clean.graph.node)
    x = np.random.default_rng(1).standard_normal((5, 3, 4)).astype(np.float32)
    want, got = (session(m).run(["y_h"], {"x": x})[0] for m in (qmodel, clean))
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    seed = np.random.default_rng(2).standard_normal(want.shape).astype(np.float32)
    got, plain = (session(differentiate(m, "y_h", ["x"])).run([grad_name("x")], {"x": x, SEED: seed})[0]
                  for m in (clean, float_model))
    assert cosine(got, plain) > 0.99


def old_dynamic_model():
    """(model, its int8 weight): DynamicQuantizeLinear → ConvInteger → Add(int32 bias quantized at
    run time) → Cast → Mul, as onnx.quantize 0.1.0 wrote them."""
    rng = np.random.default_rng(6)
    wq = rng.integers(-60, 60, (4, 3, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(wq, "w_q"), numpy_helper.from_array(np.int8(3), "w_zp"),
             numpy_helper.from_array(np.float32(0.01), "w_scale"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias"),
             numpy_helper.from_array(np.array([1, 4, 1, 1], np.int64), "bias_shape")]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["image"], ["x_q", "x_scale", "x_zp"]),
             helper.make_node("Mul", ["x_scale", "w_scale"], ["scale"]),
             helper.make_node("Div", ["bias", "scale"], ["bias_units"]),
             helper.make_node("Floor", ["bias_units"], ["bias_floor"]),
             helper.make_node("Cast", ["bias_floor"], ["bias_q"], to=onnx.TensorProto.INT32),
             helper.make_node("Reshape", ["bias_q", "bias_shape"], ["bias_4d"]),
             helper.make_node("ConvInteger", ["x_q", "w_q", "x_zp", "w_zp"], ["acc"], pads=[1] * 4),
             helper.make_node("Add", ["acc", "bias_4d"], ["acc_bias"]),
             helper.make_node("Cast", ["acc_bias"], ["acc_float"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Mul", ["acc_float", "scale"], ["y"])]
    graph = helper.make_graph(nodes, "old_dynamic", [helper.make_tensor_value_info("image", 1, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", 1, None)], initializer=inits)
    model = finish(graph)
    return model, wq


def test_runtime_quantized_bias_of_old_dynamic_models():
    """onnx.quantize 0.1.0 (e.g. ddddocr's old captcha model) adds a bias quantized at run time,
    Cast(Floor(b / (x_scale · w_scale))) in int32, to ConvInteger's output before scaling it:
    the rewrite adds it in float; outputs equal the integer model's up to float32 rounding."""
    model, wq = old_dynamic_model()
    clean = normalize(model)
    assert "ConvInteger" not in ops(clean)
    x = calibration_images(2)[:, :, :6, :6]
    want, got = (session(m).run(["y"], {"image": x})[0] for m in (model, clean))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    feeds = {"image": x, SEED: np.ones_like(want)}
    gradient = session(differentiate(clean, "y", ["image"])).run([grad_name("image")], feeds)[0]
    weight = (wq.astype(np.float32) - 3) * 0.01  # straight through: the gradient of a conv by the dequantized weight
    want = np.broadcast_to(weight.sum(axis=(0, 2, 3))[:, None, None], (2, 3, 2, 2))  # interior pixels
    np.testing.assert_allclose(gradient[:, :, 2:4, 2:4], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_runtime_quantized_bias_is_added_in_int32_after_differentiation():
    """integer_forward restores ConvInteger → Add(int32 bias) → Cast of an old dynamic model in the
    differentiated graph: outputs equal the integer model's, the gradient the all-float graph's."""
    model, _ = old_dynamic_model()
    float_graph = differentiate(normalize(model), "y", ["image"])
    integer_graph = integer_forward(onnx.load_from_string(float_graph.SerializeToString()))
    made = {o: n for n in integer_graph.graph.node for o in n.output}
    add = next(n for n in integer_graph.graph.node if n.op_type == "Add" and made[n.input[0]].op_type == "ConvInteger")
    assert made[add.input[1]].op_type == "Reshape"  # the int32 bias itself, no float Cast of it
    x = calibration_images(2)[:, :, :6, :6]
    deployed = session(model).run(["y"], {"image": x})[0]
    feeds = {"image": x, SEED: np.ones_like(deployed)}
    (_, f_grad), (i_y, i_grad) = (session(m).run(["y", grad_name("image")], feeds) for m in (float_graph, integer_graph))
    np.testing.assert_allclose(i_y, deployed, rtol=0, atol=1e-6 * np.abs(deployed).max())
    np.testing.assert_allclose(i_grad, f_grad, rtol=1e-5, atol=1e-6 * np.abs(f_grad).max())


def test_model_api_explains_a_qoperator_file(tmp_path):
    """engine.api.Model on a QOperator file: the float tensors of the rewritten model are layers
    (the residual block of the source model among them) and Grad-CAM's capture runs there."""
    from engine.api import Model

    qoperator(mixed_cnn(), tmp_path, calibration_images())
    model = Model(tmp_path / "QOperator.onnx", threads=1)
    assert "block" in [layer.name for layer in model.layers]
    images = calibration_images(2, seed=5)
    result = model.run(images, activations=[model.default_layer], gradients=[model.default_layer, "input"],
                       seed=np.eye(5, dtype=np.float32)[[0, 3]])
    assert np.abs(result.gradients["input"]).max() > 0
    np.testing.assert_array_equal(model.run(images).outputs[0],
                                  session(onnx.load(tmp_path / "QOperator.onnx")).run(["logits"], {"image": images})[0])


def test_quantized_weights_count_as_constants(tmp_path):
    """A weight read through DequantizeLinear of constants is a constant to the rules: every
    backward Conv/ConvTranspose reads a constant weight (none reads a DequantizeLinear output at
    run time), and the gradient equals the dequantized float model's."""
    float_model = linear_cnn()
    qmodel = qoperator(float_model, tmp_path, calibration_images(8))
    clean = normalize(qmodel)
    rewritten = differentiate(clean, "logits", ["image"])
    constants = {t.name for t in rewritten.graph.initializer}
    convs = [n for n in rewritten.graph.node[len(clean.graph.node):] if n.op_type in ("Conv", "ConvTranspose")]
    assert len(convs) >= 2 and all(n.input[1] in constants for n in convs), [(n.op_type, n.input[1]) for n in convs]
    x, seed = calibration_images(2, seed=7) / 2, np.eye(5, dtype=np.float32)[[0, 2]]
    got = gradients(qmodel, "image", x, seed)[1]
    want = gradients(integer_weights(float_model, qmodel), "image", x, seed)[1]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_qoperator_softmax_and_resize_on_integers(tmp_path):
    """QLinearSoftmax, and a Resize that runs on the uint8 tensor itself (it keeps the scale): the
    rewritten model's outputs equal the integer model's (measured: max difference 0)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1] * 4),
             helper.make_node("Softmax", ["c"], ["soft"], axis=1),
             helper.make_node("Resize", ["soft", "", "scales"], ["up"], mode="nearest"),
             helper.make_node("Conv", ["up", "w2"], ["logits"])]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((5, 4, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    graph = helper.make_graph(nodes, "soft", [helper.make_tensor_value_info("image", 1, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("logits", 1, None)], initializer=inits)
    qmodel = qoperator(finish(graph), tmp_path, calibration_images())
    assert {"QLinearSoftmax", "Resize"} <= ops(qmodel)
    clean = normalize(qmodel)
    assert "QLinearSoftmax" not in ops(clean)
    images = calibration_images(4, seed=1)
    want, got = (session(m).run(["logits"], {"image": images})[0] for m in (qmodel, clean))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
    seed = rng.standard_normal(want.shape).astype(np.float32)
    assert np.abs(gradients(qmodel, "image", images, seed)[1]).max() > 0


@pytest.mark.parametrize("pad_value", [None, 0.0, 0.5])
def test_pad_on_a_quantized_tensor(pad_value):
    """A constant Pad run on uint8 pads with an integer (0 when absent, i.e. −zero_point · scale
    in float): the float Pad of the rewrite pads with that float value; outputs are equal."""
    scale, zero_point = np.float32(0.05), np.uint8(100)
    inputs = ["xq", "pads"] + ([] if pad_value is None else ["value_q"])
    nodes = [helper.make_node("QuantizeLinear", ["image", "s", "z"], ["xq"]),
             helper.make_node("Pad", inputs, ["padded"], mode="constant"),
             helper.make_node("DequantizeLinear", ["padded", "s", "z"], ["y"])]
    inits = [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero_point, "z"),
             numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "pads")]
    if pad_value is not None:
        inits.append(numpy_helper.from_array(np.uint8(round(pad_value / scale) + zero_point), "value_q"))
    graph = helper.make_graph(nodes, "pad", [helper.make_tensor_value_info("image", 1, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", 1, None)], initializer=inits)
    model = finish(graph)
    clean = normalize(model)
    x = calibration_images(2)[:, :, :4, :4]
    want, got = (session(m).run(["y"], {"image": x})[0] for m in (model, clean))
    np.testing.assert_array_equal(got, want)
    feeds = {"image": x, SEED: np.ones_like(want)}
    gradient = session(differentiate(clean, "y", ["image"])).run([grad_name("image")], feeds)[0]
    inside = (x >= -float(zero_point) * scale)  # straight through above the range's low end
    np.testing.assert_array_equal(gradient, inside.astype(np.float32))
