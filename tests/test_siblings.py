"""Sibling Convs merged before differentiation (engine/graph/siblings.py): the merged graph computes
the same outputs, its gradients match central differences, and nothing merges that should not."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.graph import siblings
from engine.graph.autodiff import SEED, grad_name
from engine.graph.siblings import merge_sibling_convs
from engine.runtime import rewrite
from gradcheck import check, finish, session

FIRE = [dict(kernel=(1, 1), pads=[0, 0, 0, 0]), dict(kernel=(3, 3), pads=[1, 1, 1, 1])]
INCEPTION = [dict(kernel=(1, 1), pads=[0, 0, 0, 0]), dict(kernel=(5, 5), pads=[2, 2, 2, 2]),
             dict(kernel=(1, 3), pads=[0, 1, 0, 1]), dict(kernel=(3, 1), pads=[1, 0, 1, 0])]
STRIDED = [dict(kernel=(1, 1), pads=[0, 0, 0, 0], strides=[2, 2]),
           dict(kernel=(3, 3), pads=[1, 1, 1, 1], strides=[2, 2])]
DILATED = [dict(kernel=(1, 1), pads=[0, 0, 0, 0], dilations=[2, 2]),
           dict(kernel=(3, 3), pads=[2, 2, 2, 2], dilations=[2, 2])]


def fire(branches, dtype=np.float32, activation="Tanh", channels=3, size=(7, 6), outputs=(), bias=True):
    """x → each branch's Conv (4 outputs, through ``activation`` unless None) → Concat → 1×1 Conv → y;
    ``outputs`` names more graph outputs."""
    rng = np.random.default_rng(0)
    inits, nodes, joined = [], [], []

    def constant(name, shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(dtype), name))
        return name

    for i, b in enumerate(branches):
        inputs = ["x", constant(f"w{i}", (4, channels, *b["kernel"]))] + ([constant(f"b{i}", (4,))] if bias else [])
        options = {k: b[k] for k in ("strides", "dilations") if k in b}
        nodes.append(helper.make_node("Conv", inputs, [f"conv{i}"], kernel_shape=list(b["kernel"]), pads=b["pads"],
                                      **options))
        if activation:
            nodes.append(helper.make_node(activation, [f"conv{i}"], [f"act{i}"]))
        joined.append(f"act{i}" if activation else f"conv{i}")
    nodes.append(helper.make_node("Concat", joined, ["joined"], axis=1))
    nodes.append(helper.make_node("Conv", ["joined", constant("head", (2, 4 * len(branches), 1, 1))], ["y"]))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(nodes, "fire", [helper.make_tensor_value_info("x", elem, ["N", channels, *size])],
                              [helper.make_tensor_value_info(o, elem, None) for o in ["y", *outputs]], inits)
    return finish(graph)


def ops(model):
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("branches,activation", [(FIRE, "Relu"), (FIRE, None), (INCEPTION, "Tanh"),
                                                 (STRIDED, "Tanh"), (DILATED, "Relu")])
def test_siblings_become_one_conv_with_the_same_outputs(branches, activation):
    model = fire(branches, activation=activation)
    merged = merge_sibling_convs(fire(branches, activation=activation))
    assert ops(merged) == ["Conv"] + ([activation] if activation else []) + ["Conv"]
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 6)).astype(np.float32)
    want, got = session(model).run(["y"], {"x": x})[0], session(merged).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("branches", [FIRE, INCEPTION, STRIDED])
def test_gradients_through_merged_siblings_match_central_differences(branches):
    check(lambda dtype: merge_sibling_convs(fire(branches, dtype)))


def test_the_gradient_graph_merges_and_keeps_the_concat_name(monkeypatch):
    """A Fire module's gradient graph has no Concat, Split or Sum; its gradients are those of the
    graph built apart, and the Concat's output stays readable as a layer."""
    request = rewrite.Request((7, 6), activations=("joined",), gradients=("x", "joined"), output="y")
    merged = rewrite.build(fire(FIRE, activation="Relu"), request)
    monkeypatch.setattr(siblings, "MERGE_EXTRA_MACS", 0)
    apart = rewrite.build(fire(FIRE, activation="Relu"), request)
    assert {"Concat", "Split", "Sum"} <= set(ops(apart)) and not {"Concat", "Split", "Sum"} & set(ops(merged))
    assert ops(merged).count("Conv") + ops(merged).count("ConvTranspose") < ops(apart).count("Conv") + ops(
        apart).count("ConvTranspose")
    x = np.random.default_rng(2).standard_normal((2, 3, 7, 6)).astype(np.float32)
    feeds = {"x": x, SEED: np.random.default_rng(3).standard_normal((2, 2, 7, 6)).astype(np.float32)}
    names = ["joined", grad_name("x"), grad_name("joined")]
    for got, want in zip(session(merged).run(names, feeds), session(apart).run(names, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change", ["a sibling is a graph output", "strides differ", "activations differ",
                                    "a sibling is read twice", "too many extra multiply-adds", "SAME padding"])
def test_not_merged(change, monkeypatch):
    branches, outputs = FIRE, ()
    if change == "a sibling is a graph output":
        outputs = ("act0",)
    if change == "strides differ":  # both 4 × 3
        branches = [dict(FIRE[0], strides=[2, 2]), dict(kernel=(4, 4), pads=[0, 0, 0, 0])]
    model = fire(branches, outputs=outputs)
    if change == "activations differ":
        model.graph.node[3].op_type = "Sigmoid"
    if change == "a sibling is read twice":
        model.graph.node.append(helper.make_node("Neg", ["conv1"], ["negated"]))
        model.graph.output.append(helper.make_tensor_value_info("negated", TensorProto.FLOAT, None))
    if change == "too many extra multiply-adds":
        monkeypatch.setattr(siblings, "MERGE_EXTRA_MACS", 8 * 4 * 3 * 7 * 6 - 1)
    if change == "SAME padding":
        del model.graph.node[2].attribute[:]
        model.graph.node[2].attribute.extend([helper.make_attribute("kernel_shape", [3, 3]),
                                              helper.make_attribute("auto_pad", "SAME_UPPER")])
    before = [str(n) for n in model.graph.node]
    assert [str(n) for n in merge_sibling_convs(model).graph.node] == before


def test_merged_at_the_threshold(monkeypatch):
    """8 zero taps for each of 4 × 3 weights of the 1×1 kernel, at 7 × 6 positions."""
    monkeypatch.setattr(siblings, "MERGE_EXTRA_MACS", 8 * 4 * 3 * 7 * 6)
    assert "Concat" not in ops(merge_sibling_convs(fire(FIRE)))
