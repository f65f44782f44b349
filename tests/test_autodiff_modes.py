"""Backward modes (standard, guided backprop, deconvnet) against a plain-numpy reference."""
import numpy as np
import pytest
from onnx import helper, numpy_helper

from engine.graph.autodiff import SEED, differentiate, grad_name
from gradcheck import finish, session

RNG = np.random.default_rng(2)
W1, W2 = RNG.standard_normal((4, 3, 3, 3)) * 0.5, RNG.standard_normal((4, 4, 3, 3)) * 0.3
SLOPE = np.array([0.1, 0.3, -0.2, 0.5])
WF = RNG.standard_normal((4, 3))
ALPHA = 0.1


def net():
    """conv → Relu → conv → LeakyRelu → PRelu → GAP → MatMul (stride 1, pad 1 convs)."""
    inits = [numpy_helper.from_array(a.astype(np.float32), n)
             for n, a in [("w1", W1), ("w2", W2), ("slope", SLOPE.reshape(4, 1, 1)), ("wf", WF)]]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["a1"]),
             helper.make_node("Conv", ["a1", "w2"], ["c2"], pads=[1] * 4),
             helper.make_node("LeakyRelu", ["c2"], ["a2"], alpha=ALPHA),
             helper.make_node("PRelu", ["a2", "slope"], ["a3"]),
             helper.make_node("GlobalAveragePool", ["a3"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "wf"], ["y"])]
    graph = helper.make_graph(nodes, "modes", [helper.make_tensor_value_info("x", 1, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", 1, None)], initializer=inits)
    return finish(graph)


def conv(x, w):
    h, wd = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    return sum(np.einsum("nchw,mc->nmhw", padded[:, :, i:i + h, j:j + wd], w[:, :, i, j])
               for i in range(3) for j in range(3))


def conv_input_grad(g, w):
    """Adjoint of ``conv`` by scattering each kernel tap back (no flipping, no transposed conv)."""
    n, _, h, wd = g.shape
    out = np.zeros((n, w.shape[1], h + 2, wd + 2))
    for i in range(3):
        for j in range(3):
            out[:, :, i:i + h, j:j + wd] += np.einsum("nmhw,mc->nchw", g, w[:, :, i, j])
    return out[:, :, 1:-1, 1:-1]


def reference(x, seed, mode):
    c1 = conv(x, W1)
    a1 = np.maximum(c1, 0)
    c2 = conv(a1, W2)
    a2 = np.where(c2 > 0, c2, ALPHA * c2)
    slope = SLOPE.reshape(1, 4, 1, 1)

    def back(pre, g, leak):
        if mode == "guided":
            return g * (pre > 0) * (g > 0)
        if mode == "deconvnet":
            return np.maximum(g, 0)
        return np.where(pre > 0, g, leak * g)

    g = np.broadcast_to((seed @ WF.T)[:, :, None, None] / 36, a2.shape)
    g = back(a2, g, slope)
    g = back(c2, g, ALPHA)
    g = conv_input_grad(g, W2)
    g = back(c1, g, 0)
    return conv_input_grad(g, W1), g


@pytest.mark.parametrize("mode", ["standard", "guided", "deconvnet"])
def test_modes_match_numpy_reference(mode):
    x = RNG.standard_normal((3, 3, 6, 6))
    seed = RNG.standard_normal((3, 3))
    rewritten = session(differentiate(net(), "y", ["x", "c1"], mode=mode))
    gx, gc1 = rewritten.run([grad_name("x"), grad_name("c1")],
                            {"x": x.astype(np.float32), SEED: seed.astype(np.float32)})
    ref_x, ref_c1 = reference(x, seed, mode)
    np.testing.assert_allclose(gc1, ref_c1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gx, ref_x, rtol=1e-4, atol=1e-5)


def test_modes_differ():
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    seed = RNG.standard_normal((2, 3)).astype(np.float32)
    grads = [session(differentiate(net(), "y", ["x"], mode=m)).run(None, {"x": x, SEED: seed})[-1]
             for m in ("standard", "guided", "deconvnet")]
    assert not np.allclose(grads[0], grads[1]) and not np.allclose(grads[1], grads[2])
