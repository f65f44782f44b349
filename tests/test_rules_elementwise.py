"""Each arithmetic / pass-through rule alone against central finite differences through ORT."""
import numpy as np
import pytest

from gradcheck import check, node_model

B = np.random.default_rng(1).standard_normal((3, 1, 1)) + 2.5  # a broadcast weight away from 0


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shapes", [[("N", 3, 4, 4), ("N", 3, 4, 4)], [("N", 3, 4, 4), (1, 3, 1, 4)],
                                    [(3, 1, 4), ("N", 1, 4, 1)]])
def test_binary_broadcast(op, shapes):
    def feeds(rng, dtype):
        a = rng.standard_normal((2, *shapes[0][1:]) if shapes[0][0] == "N" else shapes[0])
        b = rng.standard_normal((2, *shapes[1][1:]) if shapes[1][0] == "N" else shapes[1])
        return {"in0": a.astype(dtype), "in1": (np.sign(b) * (np.abs(b) + 1)).astype(dtype)}

    check(lambda dt: node_model(op, shapes, dt), feeds=feeds)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_binary_with_weight(op):
    check(lambda dt: node_model(op, [("N", 3, 4, 4), B], dt))


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
def test_variadic(op):
    check(lambda dt: node_model(op, [("N", 3, 4, 4), (1, 3, 1, 4), ("N", 3, 4, 4)], dt))


@pytest.mark.parametrize("op", ["Identity", "Dropout"])
def test_passthrough(op):
    check(lambda dt: node_model(op, [("N", 3, 4)], dt))


def test_cast_roundtrip():
    from onnx import TensorProto, helper

    from gradcheck import finish

    def make(dtype):
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        nodes = [helper.make_node("Cast", ["x"], ["c"], to=TensorProto.DOUBLE), helper.make_node("Tanh", ["c"], ["t"]),
                 helper.make_node("Cast", ["t"], ["y"], to=elem)]
        return finish(helper.make_graph(nodes, "cast", [helper.make_tensor_value_info("x", elem, ["N", 5])],
                                        [helper.make_tensor_value_info("y", elem, None)]))

    check(make, dtypes=(np.float32,))  # float32 input, float64 inside
