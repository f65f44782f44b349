"""The new rules together in two small CNNs, differentiated end to end: a U-Net-like net
(ConvTranspose, Resize, Concat, Slice, reflect Pad) and a GoogLeNet-like one (LRN, ceil_mode
pools, Concat, Split). Gradients of the float32 rewritten model on ORT are compared with float64
central differences by onnx's reference evaluator (float32 differences through hundreds of ReLU
and max kinks are too noisy), at the input and at intermediate tensors. Taps sit where a small
move crosses no tie: not right after a ReLU that feeds a max pool (all-zero windows)."""
import numpy as np
import pytest
from onnx import helper, numpy_helper
from onnx.reference.op_run import OpRun

from engine.graph.autodiff import SEED, differentiate, grad_name
from gradcheck import assert_slopes_match, finish, session


def _model(name, nodes, weights, input_shape, output, dtype):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array(v.astype(dtype) if v.dtype == np.float64 else v, k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("image", elem, ["N", *input_shape])],
                              [helper.make_tensor_value_info(output, elem, None)], initializer=inits)
    return finish(graph)


def unet(dtype=np.float32):
    """16×16 image → two 14×14 class maps: encoder with a pool, decoder by ConvTranspose and by a
    linear Resize, skip Concat, crop by Slice, reflect Pad before the last Conv."""
    rng = np.random.default_rng(1)
    w = {"w1": rng.standard_normal((4, 3, 3, 3)) * 0.4, "b1": rng.standard_normal(4) * 0.1,
         "w2": rng.standard_normal((8, 4, 3, 3)) * 0.3, "b2": rng.standard_normal(8) * 0.1,
         "wt": rng.standard_normal((8, 4, 2, 2)) * 0.3, "wr": rng.standard_normal((2, 8, 1, 1)) * 0.4,
         "w3": rng.standard_normal((2, 10, 3, 3)) * 0.3,
         "scales": np.array([1, 1, 2, 2], np.float32), "starts": np.array([1, 1]), "ends": np.array([-1, -1]),
         "axes": np.array([2, 3]), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])}
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["e1"]),
             helper.make_node("MaxPool", ["e1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["e2"]),
             helper.make_node("ConvTranspose", ["e2", "wt"], ["up"], strides=[2, 2], kernel_shape=[2, 2]),
             helper.make_node("Conv", ["e2", "wr"], ["narrow"]),
             helper.make_node("Resize", ["narrow", "", "scales"], ["resized"], mode="linear"),
             helper.make_node("Concat", ["up", "e1", "resized"], ["cat"], axis=1),
             helper.make_node("Slice", ["cat", "starts", "ends", "axes"], ["crop"]),
             helper.make_node("Pad", ["crop", "pads"], ["padded"], mode="reflect"),
             helper.make_node("Conv", ["padded", "w3"], ["seg"])]
    return _model("unet", nodes, w, (3, 16, 16), "seg", dtype)


def googlenet(dtype=np.float32):
    """23×23 image → 5 logits: stem conv, ceil_mode max pools, two LRNs, an inception block
    (1×1, 1×1→3×3, pool→1×1 branches) concatenated, then split in two heads."""
    rng = np.random.default_rng(2)
    w = {"w1": rng.standard_normal((8, 3, 5, 5)) * 0.3, "b1": rng.standard_normal(8) * 0.1,
         "w2": rng.standard_normal((12, 8, 3, 3)) * 0.3,
         "wa": rng.standard_normal((4, 12, 1, 1)) * 0.4, "wb1": rng.standard_normal((4, 12, 1, 1)) * 0.4,
         "wb2": rng.standard_normal((6, 4, 3, 3)) * 0.3, "wc": rng.standard_normal((2, 12, 1, 1)) * 0.4,
         "split": np.array([5, 7]), "wf": rng.standard_normal((5, 12)), "bf": rng.standard_normal(5) * 0.1}
    lrn = dict(alpha=0.1, beta=0.75, bias=1.0)
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], strides=[2, 2], pads=[2] * 4),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             helper.make_node("LRN", ["p1"], ["n1"], size=5, **lrn),
             helper.make_node("Conv", ["n1", "w2"], ["c2"], pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("LRN", ["r2"], ["n2"], size=3, **lrn),
             helper.make_node("MaxPool", ["n2"], ["p2"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             helper.make_node("Conv", ["p2", "wa"], ["a"]),
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["p2", "wb1"], ["b"]),
             helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Conv", ["rb", "wb2"], ["b2"], pads=[1] * 4),
             helper.make_node("Relu", ["b2"], ["rb2"]),
             helper.make_node("MaxPool", ["p2"], ["pc"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Conv", ["pc", "wc"], ["c"]),
             helper.make_node("Relu", ["c"], ["rc"]),
             helper.make_node("Concat", ["ra", "rb2", "rc"], ["cat"], axis=1),
             helper.make_node("Split", ["cat", "split"], ["s1", "s2"], axis=1),
             helper.make_node("GlobalAveragePool", ["s1"], ["g1"]),
             helper.make_node("Sigmoid", ["s2"], ["sig"]),
             helper.make_node("GlobalAveragePool", ["sig"], ["g2"]),
             helper.make_node("Concat", ["g1", "g2"], ["g"], axis=1),
             helper.make_node("Flatten", ["g"], ["flat"]),
             helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1)]
    return _model("googlenet", nodes, w, (3, 23, 23), "logits", dtype)


MODELS = {"unet": (unet, "seg"), "googlenet": (googlenet, "logits")}


class LRN(OpRun):
    """The ONNX spec's LRN (onnx 1.23's reference loops over the batch instead of the channels)."""

    op_domain = ""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):
        squares = np.pad(x**2, [(0, 0), ((size - 1) // 2, size // 2)] + [(0, 0)] * (x.ndim - 2))
        window = sum(squares[:, i:i + x.shape[1]] for i in range(size))
        return (x / (bias + alpha / size * window) ** beta,)


@pytest.mark.parametrize("name,tap", [("unet", "image"), ("unet", "e2"), ("unet", "resized"), ("unet", "cat"),
                                      ("googlenet", "image"), ("googlenet", "n1"), ("googlenet", "c2"),
                                      ("googlenet", "cat")])
def test_gradients_match_float64_differences(name, tap):
    make, output = MODELS[name]
    model = make()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]))
    y = session(model).run([output], {"image": x.astype(np.float32)})[0]
    seed = rng.standard_normal(y.shape)
    got = session(differentiate(model, output, [tap])).run(
        [grad_name(tap)], {"image": x.astype(np.float32), SEED: seed.astype(np.float32)})[0]
    assert_slopes_match(got, make(np.float64), output, x, seed, tap, rng, rounds=2, rtol=2e-5, new_ops=[LRN])


@pytest.mark.parametrize("name", MODELS)
def test_batch_1_and_batch_4_give_the_same_gradients(name):
    make, output = MODELS[name]
    model = make()
    taps = ["image", "cat"]
    rewritten = session(differentiate(model, output, taps))
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]))
    x = x.astype(np.float32)
    seeds = rng.standard_normal(session(model).run([output], {"image": x})[0].shape).astype(np.float32)
    names = [output] + [grad_name(t) for t in taps]
    batch = rewritten.run(names, {"image": x, SEED: seeds})
    for i in range(4):
        single = rewritten.run(names, {"image": x[i:i + 1], SEED: seeds[i:i + 1]})
        for b, s in zip(batch, single):
            np.testing.assert_allclose(b[i:i + 1], s, rtol=1e-5, atol=1e-6)
    assert all(np.abs(g).max() > 0 for g in batch[1:])
