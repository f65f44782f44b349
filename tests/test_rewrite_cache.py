"""The cache of rewritten models: the key follows every byte of the weights, large ones included;
cached files keep large weights as external data beside them, and a lost data file is rebuilt."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from engine.runtime import rewrite
from engine.runtime.rewrite import content_hash


def linear(weight, name="w"):
    """y = x @ weight, with ``weight`` stored as an initializer."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", name], ["y"])], "linear",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", weight.shape[0]])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", weight.shape[1]])],
        [numpy_helper.from_array(weight, name)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_hash_is_stable_and_follows_one_element_of_a_large_weight():
    weight = np.random.default_rng(0).standard_normal((128, 64)).astype(np.float32)  # 8192 ≥ 4096: hashed apart
    changed = weight.copy()
    changed[100, 50] += 1e-3
    first = content_hash(linear(weight))
    assert content_hash(linear(weight.copy())) == first
    assert content_hash(linear(changed)) != first
    assert content_hash(linear(weight, name="v")) != first
    assert content_hash(linear(weight.reshape(64, 128))) != first


def test_hash_follows_weights_stored_outside_raw_data():
    weight = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    model = linear(weight)
    model.graph.initializer[0].CopyFrom(helper.make_tensor("w", onnx.TensorProto.FLOAT, [64, 64], weight.ravel()))
    assert not model.graph.initializer[0].raw_data
    other = linear(weight)
    other.graph.initializer[0].CopyFrom(
        helper.make_tensor("w", onnx.TensorProto.FLOAT, [64, 64], weight.ravel() + np.float32(1)))
    assert content_hash(model) != content_hash(other)


def run(path_or_model, x):
    source = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else str(path_or_model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_written_model_keeps_large_weights_beside_it_and_computes_the_same(tmp_path):
    rng = np.random.default_rng(1)
    model = linear(rng.standard_normal((96, 64)).astype(np.float32))
    small = numpy_helper.from_array(rng.standard_normal((64, 3)).astype(np.float32), "small")
    model.graph.initializer.append(small)
    model.graph.node.append(helper.make_node("MatMul", ["y", "small"], ["z"]))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 3]))
    path = tmp_path / "m.onnx"
    rewrite.write(model, path)
    data = tmp_path / "m.onnx.data"
    assert data.stat().st_size >= 96 * 64 * 4 and path.stat().st_size < 96 * 64 * 4
    stored = onnx.load(str(path), load_external_data=False)
    assert {t.name: t.data_location for t in stored.graph.initializer} == {
        "w": onnx.TensorProto.EXTERNAL, "small": onnx.TensorProto.DEFAULT}
    loaded = onnx.load(str(path))
    assert [i.name for i in loaded.graph.input] == ["x"]
    for name in ("w", "small"):
        np.testing.assert_array_equal(
            numpy_helper.to_array(next(t for t in loaded.graph.initializer if t.name == name)),
            numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name)))
    x = rng.standard_normal((2, 96)).astype(np.float32)
    np.testing.assert_array_equal(run(path, x), run(model, x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]  # no .part left


def test_a_cached_model_whose_data_file_is_lost_is_rebuilt(tmp_path, monkeypatch):
    model = linear(np.random.default_rng(2).standard_normal((80, 64)).astype(np.float32))
    request = rewrite.Request(None, gradients=("x",), output="y")
    x = np.ones((1, 80), np.float32)
    seed = np.ones((1, 64), np.float32)
    expected = rewrite.session(model, request, folder=tmp_path, threads=1).run(None, {"x": x, "onnxlens_seed": seed})
    (data,) = tmp_path.glob("*.onnx.data")
    data.unlink()
    calls = []
    build = rewrite.build
    monkeypatch.setattr(rewrite, "build", lambda *a, **k: calls.append(1) or build(*a, **k))
    again = rewrite.session(model, request, folder=tmp_path, threads=1).run(None, {"x": x, "onnxlens_seed": seed})
    assert calls == [1] and data.is_file()
    for a, b in zip(again, expected, strict=True):
        np.testing.assert_array_equal(a, b)
