"""rewrite.content_hash: the cache key follows every byte of the weights, large ones included."""
import numpy as np
import onnx
from onnx import helper, numpy_helper

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
