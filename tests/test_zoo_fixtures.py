"""The zoo fixtures are sound: each ONNX file reproduces its torch references through ONNX Runtime."""
import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import zoo

RTOL = 1e-4


def rel_err(got, want):
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_every_expected_variant_is_on_disk_or_recorded_as_failed():
    status, present = zoo.status(), set(zoo.variants())
    assert set(status) == set(zoo.EXPECTED)
    for name in zoo.EXPECTED:
        assert (status[name] == "ok") == (name in present), (name, status[name])
        assert status[name] == "ok" or status[name].startswith("failed: ")
    assert len(present) >= len(zoo.EXPECTED) - 3


def test_fixtures_stay_under_12_mb():
    total = sum(p.stat().st_size for p in zoo.DIR.iterdir() if p.is_file())
    assert total <= 12e6, f"{total / 1e6:.1f} MB"


@pytest.mark.parametrize("name", zoo.variants())
def test_onnx_reproduces_torch_outputs_and_taps_for_batch_3_and_1(name):
    fx = zoo.load(name)
    graph = onnx.load(str(fx.path)).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == [fx.output_name, *fx.taps]
    consumed = {i for node in graph.node for i in node.input}
    assert set(fx.taps) <= consumed, "a tap must be the tensor the rest of the graph consumes, not a copy"
    sess = session(fx.path)
    want = [fx.outputs[fx.output_name], *(fx.activations[t] for t in fx.taps)]
    for rows in (slice(None), slice(1, 2)):
        got = sess.run(None, {"input": fx.input[rows]})
        for g, w, key in zip(got, want, [fx.output_name, *fx.taps]):
            assert rel_err(g, w[rows]) <= RTOL, (key, rows)


@pytest.mark.parametrize("name", zoo.variants())
def test_reference_shapes_and_layout(name):
    fx = zoo.load(name)
    assert fx.layout == ("NHWC" if "nhwc" in name else "NCHW")
    assert fx.input.shape[0] == 3 and fx.input.shape[fx.layout.index("C")] == 3
    assert fx.seed.shape == fx.outputs[fx.output_name].shape
    assert fx.gradients["input"].shape == fx.input.shape
    for t in fx.taps:
        assert fx.gradients[t].shape == fx.activations[t].shape and fx.activations[t].ndim == 4
        assert np.abs(fx.gradients[t]).max() > 0


@pytest.mark.parametrize("name", zoo.variants())
def test_input_gradient_matches_central_differences_through_onnxruntime(name):
    """Along the unit gradient direction d: (f(x + eps d) - f(x - eps d)) / 2 eps = |grad| (ReLU kinks
    make random directions too noisy in float32; a wrong gradient points elsewhere and fails)."""
    fx = zoo.load(name)
    sess = session(fx.path)
    grad = fx.gradients["input"].astype(np.float64)
    d = (grad / np.linalg.norm(grad)).astype(np.float32)
    eps = 1e-3

    def f(x):
        return float((sess.run([fx.output_name], {"input": x})[0].astype(np.float64) * fx.seed).sum())

    numeric = (f(fx.input + eps * d) - f(fx.input - eps * d)) / (2 * eps)
    analytic = float((grad * d).sum())
    assert abs(numeric - analytic) <= 1e-2 * abs(analytic), (numeric, analytic)


@pytest.mark.parametrize("name", [v for v in zoo.variants() if not v.startswith("unet")])
def test_gradcam_is_pytorch_grad_cam_of_the_top1_class(name):
    fx = zoo.load(name)
    logits = fx.outputs["logits"]
    np.testing.assert_array_equal(fx.seed_top1, np.eye(logits.shape[1], dtype=np.float32)[logits.argmax(1)])
    for t in fx.taps:
        weights = fx.grads_top1[t].mean(axis=(2, 3))
        cam = np.maximum(np.einsum("nk,nkhw->nhw", weights, fx.activations[t]), 0)
        assert fx.gradcam[t].shape == fx.activations[t].shape[:1] + fx.activations[t].shape[2:]
        assert rel_err(fx.gradcam[t], cam) <= 1e-5 and fx.gradcam[t].max() > 0


@pytest.mark.parametrize("arch", zoo.ARCHS)
def test_the_exports_of_one_architecture_agree(arch):
    names = [v for v in zoo.variants() if v.split("_")[0] == arch]
    assert len(names) >= 2
    x = zoo.load(names[0]).input
    results = {n: session(zoo.load(n).path).run(None, {"input": x}) for n in names}
    for a, b in itertools.combinations(names, 2):
        for ga, gb in zip(results[a], results[b]):
            assert rel_err(ga, gb) <= RTOL, (a, b)


def test_nhwc_variant_is_the_nchw_network_behind_a_transpose():
    nchw, nhwc = zoo.load("resnet18_ts13"), zoo.load("resnet18nhwc_ts13")
    np.testing.assert_array_equal(nhwc.input, nchw.input.transpose(0, 2, 3, 1))
    got = session(nhwc.path).run(None, {"input": nhwc.input})
    for g, w in zip(got, [nchw.outputs["logits"], *(nchw.activations[t] for t in nchw.taps)]):
        assert rel_err(g, w) <= RTOL
    assert rel_err(nhwc.gradients["input"], nchw.gradients["input"].transpose(0, 2, 3, 1)) <= RTOL
