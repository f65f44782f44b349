"""Each activation / softmax rule alone against central finite differences through ORT."""
import numpy as np
import pytest

from gradcheck import check, node_model

X = ("N", 3, 5, 5)


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Sigmoid", {}), ("Tanh", {}),
                                      ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {})])
def test_pointwise(op, attrs):
    # Spread inputs so HardSwish / HardSigmoid see all three pieces.
    check(lambda dt: node_model(op, [X], dt, **attrs),
          feeds=lambda rng, dt: {"in0": (rng.standard_normal((2, 3, 5, 5)) * 3).astype(dt)})


def test_prelu_per_channel():
    slope = np.array([0.1, -0.5, 2.0]).reshape(3, 1, 1)
    check(lambda dt: node_model("PRelu", [X, slope], dt))


@pytest.mark.parametrize("bounds", [(-0.5, 0.7), (0.0, None), (None, 0.3)])
def test_clip_bounds_as_inputs(bounds):
    inputs = [X] + [np.array(b) if b is not None else "" for b in bounds]
    while inputs[-1] == "":
        inputs.pop()
    check(lambda dt: node_model("Clip", inputs, dt))


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis", [(17, 1), (17, -1), (11, 1), (11, 2)])
def test_softmax_semantics(op, opset, axis):
    # opset 11: softmax over the flattened trailing axes from `axis` on.
    check(lambda dt: node_model(op, [("N", 3, 4, 2)], dt, opset=opset, axis=axis))
