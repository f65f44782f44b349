"""The rule table's contract: arity checked, rules asked only for inputs on the cone, versions
chosen by the model's opset, elementwise rules from their derivative alone."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.errors import UnsupportedOpError
from engine.graph.autodiff import differentiate
from engine.graph.rules import ALL, RULES, RuleContractError, derivative, rule, rules_for
from gradcheck import check, node_model

X = ("N", 3, 4, 5)


@pytest.fixture
def spy_op(monkeypatch):
    """An op type "Spy" (x, w) → y that the test registers rules for; the table is restored after."""
    monkeypatch.setitem(RULES, "Spy", [])
    w = numpy_helper.from_array(np.ones(3, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Spy", ["x", "w"], ["y"])], "spy",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_rule_returning_a_list_for_one_input_names_the_op(spy_op):
    rule("Spy")(lambda ctx, node, dy: [dy, None])  # the old all-inputs form, registered per input
    with pytest.raises(RuleContractError, match="Spy rule"):
        differentiate(spy_op, "y", ["x"])


def test_an_all_inputs_rule_of_the_wrong_length_names_the_op(spy_op):
    rule("Spy", wrt=ALL)(lambda ctx, node, dy: [dy])
    with pytest.raises(RuleContractError, match=r"Spy rule .*one gradient \(or None\) per input is due, 2 here"):
        differentiate(spy_op, "y", ["x"])


def test_rules_are_asked_only_for_inputs_on_the_cone(spy_op):
    asked = []

    def gradient_of(index):
        def fn(ctx, node, dy):
            asked.append(index)
            return dy
        return fn

    rule("Spy", wrt=0)(gradient_of(0))
    rule("Spy", wrt=1)(gradient_of(1))
    rewritten = differentiate(spy_op, "y", ["x"])
    assert asked == [0]  # the weight w is not on the cone
    assert "x__grad" in [o.name for o in rewritten.graph.output]


def test_a_gradient_at_an_output_the_rule_does_not_take_is_a_user_error():
    """LayerNormalization's rule differentiates Y only: a gradient arriving at Mean is refused."""
    model = node_model("LayerNormalization", [X, np.ones(5), np.zeros(5)], np.float32, outputs=2, axis=-1)
    with pytest.raises(UnsupportedOpError, match="output 'out1' has no gradient rule"):
        differentiate(model, "out1", ["in0"])


def test_versions_follow_the_model_opset():
    softmax = helper.make_node("Softmax", ["x"], ["y"])
    assert [r.fn.__name__ for r in rules_for(softmax, 17)] == ["softmax"]
    assert [r.fn.__name__ for r in rules_for(softmax, 12)] == ["softmax_1"]
    assert rules_for(helper.make_node("Softmax", ["x"], ["y"], domain="com.microsoft"), 17) == []


def test_an_op_whose_rules_start_later_names_the_opset():
    """MaxPool's rule needs ScatterElements with reduction (opset 16): an opset-12 model the
    version converter refused is told so."""
    model = node_model("MaxPool", [X], np.float32, opset=12, kernel_shape=[2, 2])
    with pytest.raises(UnsupportedOpError, match="MaxPool .* at opset 12 \\(from opset 16 on\\)"):
        differentiate(model, "out0", ["in0"])


def test_an_elementwise_rule_from_its_derivative_alone(monkeypatch):
    """A rule written as its derivative (with an attribute as a keyword) against central
    differences; ThresholdedRelu has no rule in the table, so this one is the test's own."""
    monkeypatch.setitem(RULES, "ThresholdedRelu", [])

    @derivative("ThresholdedRelu")
    def thresholded_relu(x, y, alpha=1.0):
        return (x > alpha) * 1.0

    check(lambda dt: node_model("ThresholdedRelu", [X], dt, alpha=0.5),
          feeds=lambda rng, dt: {"in0": rng.choice([-1.0, 0.2, 1.0, 2.0], (2, 3, 4, 5)).astype(dt)})


def test_an_elementwise_rule_emits_its_derivative_op_for_op():
    """Tanh: dx = dy · (1 − y·y), three nodes (Mul, Sub, Mul) and one shared scalar."""
    rewritten = differentiate(node_model("Tanh", [X], np.float32), "out0", ["in0"])
    backward = [n.op_type for n in rewritten.graph.node][1:-1]  # between the forward Tanh and the output
    assert backward == ["Mul", "Sub", "Mul"]
    onnx.checker.check_model(rewritten)
