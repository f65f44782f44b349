"""LSTM and GRU rules against central finite differences, for every direction, with and without
initial states, per output: in float64 with onnx's reference evaluator (ONNX Runtime has no
float64 LSTM/GRU) and in float32 on ONNX Runtime (the runtime the engine uses). Each test runs
twice: with the per-step Jacobians of small states, and step by step as for large states."""
import sys

import numpy as np
import pytest
from onnx import helper

from engine.errors import UnsupportedOpError
from engine.graph.autodiff import differentiate
from engine.graph.rules import recurrent
from onnx.reference import ReferenceEvaluator

from gradcheck import check, finish, node_model

RNG = np.random.default_rng(17)
T, I, H = 5, 3, 4
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


@pytest.fixture(autouse=True, params=["jacobians", "step by step"])
def backward_form(request, monkeypatch):
    if request.param == "step by step":
        monkeypatch.setattr(recurrent, "JACOBIAN_MAX", 0)


def recurrent_model(op_type, direction, initial, dtype, **attributes):
    gates = {"LSTM": 4, "GRU": 3}[op_type]
    dirs = DIRECTIONS[direction]
    rng = np.random.default_rng(3)
    inputs = [(T, "N", I), rng.standard_normal((dirs, gates * H, I)) * 0.6,
              rng.standard_normal((dirs, gates * H, H)) * 0.6, rng.standard_normal((dirs, 2 * gates * H)) * 0.3, ""]
    if initial:
        inputs += [(dirs, "N", H)] + ([(dirs, "N", H)] if op_type == "LSTM" else [])
    outputs = {"LSTM": 3, "GRU": 2}[op_type]
    return node_model(op_type, inputs, dtype, outputs=outputs, hidden_size=H, direction=direction, **attributes)


def both(make, output):
    check(make, output=output, dtypes=(np.float64,), runner=ReferenceEvaluator)
    check(make, output=output, dtypes=(np.float32,))


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("output", ["out0", "out1", "out2"])
def test_lstm(direction, initial, output):
    both(lambda dt: recurrent_model("LSTM", direction, initial, dt), output=output)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("output", ["out0", "out1"])
@pytest.mark.parametrize("linear_before_reset", [0, 1])
def test_gru(direction, initial, output, linear_before_reset):
    both(lambda dt: recurrent_model("GRU", direction, initial, dt, linear_before_reset=linear_before_reset),
         output=output)


@pytest.mark.parametrize("op_type", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_one_step_sequences(op_type, direction, monkeypatch):
    """T = 1: no step before the first, no recurrence at all (every output at once)."""
    monkeypatch.setattr(sys.modules[__name__], "T", 1)
    extra = {"linear_before_reset": 1} if op_type == "GRU" else {}
    for output in ["out0", "out1", "out2"][:{"LSTM": 3, "GRU": 2}[op_type]]:
        both(lambda dt: recurrent_model(op_type, direction, True, dt, **extra), output=output)


@pytest.mark.parametrize("steps", [2, 8, 13])
@pytest.mark.parametrize("initial", [False, True])
def test_lstm_cells_of_any_length(steps, initial, monkeypatch):
    """The small-state form solves the cell recurrence by doubling (⌈log₂ T⌉ levels): lengths
    that are a power of two, one past it and the shortest with a recurrence."""
    monkeypatch.setattr(sys.modules[__name__], "T", steps)
    for output in ["out0", "out2"]:
        both(lambda dt: recurrent_model("LSTM", "bidirectional", initial, dt), output=output)


def test_lstm_all_outputs_used_together():
    """Y feeds the loss and Y_h, Y_c feed it too (gradients from three outputs at once)."""
    def make(dt):
        model = recurrent_model("LSTM", "bidirectional", True, dt)
        graph = model.graph
        graph.node.extend([helper.make_node("Transpose", ["out0"], ["y_t"], perm=[1, 0, 2, 3]),
                           helper.make_node("ReduceSum", ["y_t", "axes"], ["s0"], keepdims=0),
                           helper.make_node("Mul", ["out1", "out2"], ["hc"]),
                           helper.make_node("Add", ["s0", "hc"], ["loss"])])
        graph.initializer.append(helper.make_tensor("axes", 7, [1], [1]))
        del graph.output[:]
        elem = model.graph.input[0].type.tensor_type.elem_type
        graph.output.append(helper.make_tensor_value_info("loss", elem, None))
        return finish(graph)

    both(make, output="loss")


def test_lstm_refuses_peepholes():
    model = recurrent_model("LSTM", "forward", True, np.float32)
    model.graph.node[0].input.extend(["peep"])
    model.graph.initializer.append(helper.make_tensor("peep", 1, [1, 3 * H], [0.1] * 3 * H))
    with pytest.raises(UnsupportedOpError, match="peephole"):
        differentiate(model, "out0", ["in0"])


def test_sequence_lens_equal_to_the_length_are_accepted_shorter_ones_refused():
    def with_lens(lens):
        model = recurrent_model("GRU", "forward", False, np.float32)
        model.graph.node[0].input[4] = "lens"
        model.graph.initializer.append(helper.make_tensor("lens", 6, [2], lens))
        return model

    differentiate(with_lens([T, T]), "out0", ["in0"])
    with pytest.raises(UnsupportedOpError, match="sequence_lens"):
        differentiate(with_lens([T, T - 1]), "out0", ["in0"])
