"""Normalization rules and LRN alone against central finite differences through ORT
(float32 where ORT has no float64 kernel: InstanceNormalization, GroupNormalization, LRN)."""
import numpy as np
import pytest
from onnx import helper, numpy_helper

from engine.graph.autodiff import SEED, differentiate, grad_name
from gradcheck import check, finish, node_model, session

RNG = np.random.default_rng(7)
SCALE, BIAS = RNG.uniform(0.5, 1.5, 4), RNG.standard_normal(4)


def typed(model):
    """Shape inference leaves GroupNormalization's output type unset: copy the input's."""
    model.graph.output[0].type.CopyFrom(model.graph.input[0].type)
    return model


@pytest.mark.parametrize("shape", [("N", 4, 3, 5), ("N", 4, 6)])
def test_instance_norm(shape):
    check(lambda dt: node_model("InstanceNormalization", [shape, SCALE, BIAS], dt, epsilon=1e-3))


def scale_fed(shape):
    """Feeds for a model whose scale is a graph input ``in1`` (computed, not a weight)."""
    def feeds(rng, dt):
        return {"in0": rng.standard_normal((2, *shape[1:])).astype(dt), "in1": rng.uniform(0.5, 1.5, 4).astype(dt)}

    return feeds


def test_instance_norm_computed_scale():
    check(lambda dt: node_model("InstanceNormalization", [("N", 4, 3, 5), (4,), BIAS], dt), wrt=["in0"],
          feeds=scale_fed(("N", 4, 3, 5)))


@pytest.mark.parametrize("axis,scale_shape", [(-1, (5,)), (1, (4, 3, 5)), (2, (3, 5)), (2, (1, 5))])
def test_layer_norm(axis, scale_shape):
    scale = RNG.uniform(0.5, 1.5, scale_shape)
    check(lambda dt: node_model("LayerNormalization", [("N", 4, 3, 5), scale, np.zeros(scale_shape)], dt,
                                axis=axis, epsilon=1e-3))


def test_layer_norm_without_bias_float32():
    check(lambda dt: node_model("LayerNormalization", [("N", 4, 3, 5), RNG.uniform(0.5, 1.5, 5)], dt),
          dtypes=(np.float32,))


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_group_norm(groups):
    # stash_type: the statistics' precision (float32 by default, even for float64 inputs).
    check(lambda dt: typed(node_model("GroupNormalization", [("N", 4, 3, 3), SCALE, BIAS], dt, opset=21,
                                      num_groups=groups, epsilon=1e-3,
                                      stash_type=helper.np_dtype_to_tensor_dtype(np.dtype(dt)))))


def test_group_norm_computed_scale():
    check(lambda dt: typed(node_model("GroupNormalization", [("N", 4, 3, 3), (4,), BIAS], dt, opset=21,
                                      num_groups=2, stash_type=helper.np_dtype_to_tensor_dtype(np.dtype(dt)))),
          wrt=["in0"], feeds=scale_fed(("N", 4, 3, 3)))


def input_gradient(model, x, seed, **feeds):
    name, out = model.graph.input[0].name, model.graph.output[0].name
    rewritten = differentiate(model, out, [name])
    return session(rewritten).run([out, grad_name(name)], {name: x, SEED: seed, **feeds})


@pytest.mark.parametrize("computed", [False, True])
def test_group_norm_opset18_scales_per_group(computed):
    """Opset 18 scales per group (onnx's checker now rejects that version, so no gradcheck): it
    must agree with opset 21 given each group's scale repeated over its channels."""
    x, seed = np.random.default_rng(0).standard_normal((2, 2, 4, 3, 3)).astype(np.float32)
    scale, bias = SCALE[:2], BIAS[:2]
    per_group = typed(node_model("GroupNormalization", [("N", 4, 3, 3), (2,) if computed else scale, bias],
                                 np.float32, opset=18, num_groups=2))
    per_channel = typed(node_model("GroupNormalization", [("N", 4, 3, 3), scale.repeat(2), bias.repeat(2)],
                                   np.float32, opset=21, num_groups=2))
    fed = {"in1": scale.astype(np.float32)} if computed else {}
    (y18, g18), (y21, g21) = input_gradient(per_group, x, seed, **fed), input_gradient(per_channel, x, seed)
    np.testing.assert_allclose(y18, y21, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g18, g21, rtol=1e-5, atol=1e-6)


def decomposed_group_norm(dtype, groups=2):
    """GroupNorm as the TorchScript exporter writes it: Reshape → InstanceNormalization with unit
    scale → Reshape → Mul → Add."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array(np.array([0, groups, -1]), "grouped"),
             numpy_helper.from_array(np.ones(groups, dtype), "ones"),
             numpy_helper.from_array(np.zeros(groups, dtype), "zeros"),
             numpy_helper.from_array(SCALE.astype(dtype).reshape(4, 1, 1), "gamma"),
             numpy_helper.from_array(BIAS.astype(dtype).reshape(4, 1, 1), "beta")]
    nodes = [helper.make_node("Reshape", ["x", "grouped"], ["g"]),
             helper.make_node("InstanceNormalization", ["g", "ones", "zeros"], ["n"], epsilon=1e-5),
             helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Reshape", ["n", "shape"], ["r"]),
             helper.make_node("Mul", ["r", "gamma"], ["m"]),
             helper.make_node("Add", ["m", "beta"], ["y"])]
    graph = helper.make_graph(nodes, "gn", [helper.make_tensor_value_info("x", elem, ["N", 4, 3, 3])],
                              [helper.make_tensor_value_info("y", elem, None)], initializer=inits)
    return finish(graph)


def test_decomposed_group_norm_uses_existing_rules():
    check(decomposed_group_norm)


def test_group_norm_matches_its_decomposed_form():
    """Same gradient from the GroupNormalization op and from the exporter's decomposition."""
    x, seed = np.random.default_rng(0).standard_normal((2, 3, 4, 3, 3)).astype(np.float32)
    whole = typed(node_model("GroupNormalization", [("N", 4, 3, 3), SCALE, BIAS], np.float32, opset=21,
                             num_groups=2))
    (y1, g1), (y2, g2) = input_gradient(whole, x, seed), input_gradient(decomposed_group_norm(np.float32), x, seed)
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(size):
    # ORT runs LRN only for odd sizes on 4-D inputs. A large alpha makes the window term count.
    check(lambda dt: node_model("LRN", [("N", 6, 3, 4)], dt, size=size, alpha=0.5, beta=0.75, bias=1.5))
    check(lambda dt: node_model("LRN", [("N", 7, 2, 3)], dt, size=size))  # defaults


def primitive_norm(dtype, opset=13, square="Pow", eps_first=False, axes=(-1,), centered=True, extra_reader=None):
    """A LayerNorm (or an RMSNorm: ``centered`` False) written with primitives, as exporters
    before opset 17 do: [x − ReduceMean(x)] / √(ReduceMean(c²) + ε) · γ + β. ``extra_reader``:
    "centered" or "divisor" adds a Mul reading that tensor into the output, so the pattern must
    leave that path's gradient to the ordinary rules."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array(np.array(2.0, dtype), "two"), numpy_helper.from_array(np.array(1e-2, dtype), "eps"),
             numpy_helper.from_array(RNG.uniform(0.5, 1.5, 5).astype(dtype), "gamma"),
             numpy_helper.from_array(RNG.standard_normal(5).astype(dtype), "beta")]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))

    def mean(x, y):
        return (helper.make_node("ReduceMean", [x, "axes"], [y]) if opset >= 18 else
                helper.make_node("ReduceMean", [x], [y], axes=list(axes)))

    nodes = [mean("x", "m"), helper.make_node("Sub", ["x", "m"], ["c"])] if centered else [
        helper.make_node("Identity", ["x"], ["c"])]
    squared = helper.make_node("Pow", ["c", "two"], ["sq"]) if square == "Pow" else helper.make_node("Mul", ["c", "c"], ["sq"])
    nodes += [squared,
              mean("sq", "var"),
              helper.make_node("Add", ["eps", "var"] if eps_first else ["var", "eps"], ["ve"]),
              helper.make_node("Sqrt", ["ve"], ["sd"]),
              helper.make_node("Div", ["c", "sd"], ["n"]),
              helper.make_node("Mul", ["n", "gamma"], ["ng"]),
              helper.make_node("Add", ["ng", "beta"], ["y0" if extra_reader else "y"])]
    if extra_reader:
        nodes += [helper.make_node("Mul", ["y0", {"centered": "c", "divisor": "sd"}[extra_reader]], ["y"])]
    graph = helper.make_graph(nodes, "norm", [helper.make_tensor_value_info("x", elem, ["N", 3, 4, 5])],
                              [helper.make_tensor_value_info("y", elem, None)], initializer=inits)
    return finish(graph, opset)


@pytest.mark.parametrize("options", [
    {}, {"square": "Mul", "eps_first": True}, {"opset": 18, "axes": (2, 3)}, {"centered": False},
    {"extra_reader": "centered"}, {"extra_reader": "divisor"}])
def test_primitive_layer_norm(options):
    """The primitive LayerNorm/RMSNorm patterns (centering, then scaling by the RMS) against
    central differences, also where another node reads a tensor inside the pattern."""
    check(lambda dt: primitive_norm(dt, **options))


@pytest.mark.parametrize("extra_reader, patterns", [(None, True), ("divisor", False)])
def test_primitive_layer_norm_backward_skips_the_variance_chain(extra_reader, patterns):
    """With the pattern, no gradient goes through Pow, Sqrt or the divisor (no Neg, no Pow);
    a divisor read elsewhere turns the scaling pattern off."""
    model = primitive_norm(np.float32, extra_reader=extra_reader)
    ops = [n.op_type for n in differentiate(model, "y", ["x"]).graph.node[len(model.graph.node):]]
    assert ("Neg" not in ops and "Pow" not in ops) == patterns, ops
