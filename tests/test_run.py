"""Model.run: activations, gradients, seeds, errors, the on-disk cache of rewritten models."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine import Model
from engine.errors import InputShapeError, LayerError, UsageError
from engine.runtime import rewrite
from tests.tiny_models import classifier, save
from tests import zoo

FIXTURE = zoo.load("resnet18_ts13")


@pytest.fixture(scope="module")
def model():
    return Model(FIXTURE.path, threads=1)


def bare(model_bytes, names, x):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(names, {"input": x})


def test_activations_equal_the_tensors_of_the_original_model(model):
    inner = [layer.name for layer in model.layers if layer.name not in FIXTURE.taps][5]
    result = model.run(FIXTURE.input, activations=[inner, FIXTURE.taps[0]])
    assert list(result.activations) == [inner, FIXTURE.taps[0]] and result.gradients == {}
    np.testing.assert_allclose(result.activations[FIXTURE.taps[0]], FIXTURE.activations[FIXTURE.taps[0]],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.outputs[0], FIXTURE.outputs["logits"], rtol=1e-4, atol=1e-5)
    # the untapped inner tensor, read from the original model made to output it by hand
    proto = onnx.load(str(FIXTURE.path))
    proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(inner))
    expected = bare(proto.SerializeToString(), [inner], FIXTURE.input)[0]
    np.testing.assert_allclose(result.activations[inner], expected, rtol=1e-5, atol=1e-6)


def test_the_input_itself_can_be_an_activation(model):
    result = model.run(FIXTURE.input, activations=["input", "tap_layer4"])
    np.testing.assert_array_equal(result.activations["input"], FIXTURE.input)


def test_unknown_layer_names_close_matches(model):
    with pytest.raises(LayerError, match="tap_layer4"):
        model.run(FIXTURE.input, activations=["tap_layer5"])
    with pytest.raises(LayerError):
        model.run(FIXTURE.input, gradients=["nope"], seed=FIXTURE.seed)


def test_seed_errors(model):
    with pytest.raises(UsageError, match="seed"):
        model.run(FIXTURE.input, gradients=["input"])
    with pytest.raises(InputShapeError, match="seed"):
        model.run(FIXTURE.input, gradients=["input"], seed=FIXTURE.seed[:2])
    with pytest.raises(LayerError, match="nope"):
        model.run(FIXTURE.input, gradients=["input"], seed={"nope": FIXTURE.seed})
    with pytest.raises(UsageError, match="mode"):
        model.run(FIXTURE.input, gradients=["input"], seed=FIXTURE.seed, mode="smooth")


def test_single_seed_row_is_repeated(model):
    one = model.run(FIXTURE.input, gradients=["input"], seed=FIXTURE.seed[0])
    rows = model.run(FIXTURE.input, gradients=["input"], seed=np.repeat(FIXTURE.seed[:1], 3, axis=0))
    np.testing.assert_array_equal(one.gradients["input"], rows.gradients["input"])


# --- the on-disk cache of rewritten models ----------------------------------------------------

def test_second_model_on_the_same_file_builds_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXLENS_CACHE", str(tmp_path / "cache"))
    request = dict(activations=["tap_layer3"], gradients=["tap_layer3", "input"], seed=FIXTURE.seed)
    first = Model(FIXTURE.path, threads=1).run(FIXTURE.input, **request)
    (cached,) = (tmp_path / "cache").glob("entries/*/model.onnx")
    stamp = cached.stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(rewrite, "build", no_build)
    again = Model(FIXTURE.path, threads=1).run(FIXTURE.input, **request)
    assert cached.stat().st_mtime_ns == stamp and len(list((tmp_path / "cache").glob("entries/*/model.onnx"))) == 1
    np.testing.assert_array_equal(again.gradients["input"], first.gradients["input"])
    with pytest.raises(AssertionError, match="rebuilt"):  # another request is another model
        Model(FIXTURE.path, threads=1).run(FIXTURE.input, gradients=["tap_layer4"], seed=FIXTURE.seed)


def test_a_broken_cached_file_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXLENS_CACHE", str(tmp_path))
    expected = Model(FIXTURE.path, threads=1).run(FIXTURE.input, gradients=["input"], seed=FIXTURE.seed)
    (cached,) = tmp_path.glob("entries/*/model.onnx")
    cached.write_bytes(b"half a model")
    calls = []
    build = rewrite.build
    monkeypatch.setattr(rewrite, "build", lambda *a, **k: calls.append(1) or build(*a, **k))
    result = Model(FIXTURE.path, threads=1).run(FIXTURE.input, gradients=["input"], seed=FIXTURE.seed)
    assert calls == [1] and cached.stat().st_size > 1000
    np.testing.assert_array_equal(result.gradients["input"], expected.gradients["input"])
    assert not list(tmp_path.rglob("*.part")) and not list((tmp_path / "tmp").iterdir())


def test_cache_key_follows_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXLENS_CACHE", str(tmp_path / "cache"))
    paths = [save(classifier(seed=seed), tmp_path / f"m{seed}.onnx") for seed in (0, 1)]
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    grads = [Model(p, threads=1).run(x, gradients=["input"], seed=np.ones((1, 4))).gradients["input"] for p in paths]
    assert len(list((tmp_path / "cache").glob("entries/*/model.onnx"))) == 2 and not np.allclose(grads[0], grads[1])


# --- backward modes through run: numpy reference on a net of 1×1 convolutions ----------------

def pointwise_net(rng):
    """image [N,3,4,4] → 1×1 Conv → Relu → 1×1 Conv → Relu → GAP → Flatten → Gemm; and its weights."""
    w1, w2, wf = rng.standard_normal((5, 3)), rng.standard_normal((6, 5)), rng.standard_normal((2, 6))
    inits = [onnx.numpy_helper.from_array(w.astype(np.float32).reshape(*w.shape, *k), n)
             for w, n, k in [(w1, "w1", (1, 1)), (w2, "w2", (1, 1)), (wf, "wf", ())]]
    make = onnx.helper.make_node
    nodes = [make("Conv", ["image", "w1"], ["z1"]), make("Relu", ["z1"], ["a1"]), make("Conv", ["a1", "w2"], ["z2"]),
             make("Relu", ["z2"], ["a2"]), make("GlobalAveragePool", ["a2"], ["g"]), make("Flatten", ["g"], ["f"]),
             make("Gemm", ["f", "wf"], ["logits"], transB=1)]
    graph = onnx.helper.make_graph(
        nodes, "pointwise", [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 2])], inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), (w1, w2, wf)


def reference_input_gradient(x, seed, weights, mode):
    """Backprop by hand in float64; the ReLU backward is the only thing the mode changes."""
    w1, w2, wf = weights
    z1 = np.einsum("oc,nchw->nohw", w1, x)
    z2 = np.einsum("oc,nchw->nohw", w2, np.maximum(z1, 0))

    def relu_back(d, z):
        return {"standard": d * (z > 0), "guided": d * (z > 0) * (d > 0), "deconvnet": d * (d > 0)}[mode]

    d = np.broadcast_to((seed @ wf)[:, :, None, None] / 16, z2.shape)
    d = np.einsum("oc,nohw->nchw", w2, relu_back(d, z2))
    return np.einsum("oc,nohw->nchw", w1, relu_back(d, z1))


@pytest.mark.parametrize("mode", ["standard", "guided", "deconvnet"])
def test_backward_modes_match_a_numpy_reference(tmp_path, mode):
    rng = np.random.default_rng(5)
    proto, weights = pointwise_net(rng)
    onnx.save(proto, str(tmp_path / "pointwise.onnx"))
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    seed = rng.standard_normal((2, 2)).astype(np.float32)
    got = Model(tmp_path / "pointwise.onnx", threads=1).run(x, gradients=["input"], seed=seed, mode=mode)
    expected = reference_input_gradient(x.astype(np.float64), seed.astype(np.float64), weights, mode)
    np.testing.assert_allclose(got.gradients["input"], expected, rtol=1e-4, atol=1e-5)
    if mode != "standard":  # the data makes the modes differ
        standard = reference_input_gradient(x.astype(np.float64), seed.astype(np.float64), weights, "standard")
        assert np.abs(expected - standard).max() > 0.1 * np.abs(standard).max()


def test_dynamic_spatial_dims_rewrite_per_size(tmp_path):
    dynamic = Model(save(classifier(layout="NHWC", shape=("N", "H", "W", 3)), tmp_path / "dynamic.onnx"), threads=1)
    static = Model(save(classifier(layout="NHWC", shape=("N", 8, 8, 3)), tmp_path / "static.onnx"), threads=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    seed = rng.standard_normal((2, 4)).astype(np.float32)
    got = dynamic.run(x, activations=["relu2"], gradients=["input", "relu2"], seed=seed)
    want = static.run(x, activations=["relu2"], gradients=["input", "relu2"], seed=seed)
    for name in ("input", "relu2"):
        np.testing.assert_allclose(got.gradients[name], want.gradients[name], rtol=1e-5, atol=1e-6)
    other = dynamic.run(rng.standard_normal((1, 12, 10, 3)).astype(np.float32), gradients=["input"], seed=seed[:1])
    assert other.gradients["input"].shape == (1, 12, 10, 3)
