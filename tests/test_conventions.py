"""Export conventions from the wild (issue 10): static batches (freed, or run in chunks), legacy
-1 and unnamed dims, symbolic H×W, custom opset domains, old opsets, rank-changing heads and
Resize sizes computed from the input's shape. Every model is built here with onnx.helper;
gradients are checked against float64 central differences of the original graph, chunked
results against the unchunked ones.
"""
import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import cli
from engine import Model
from engine.analyze.dissection import dissect
from engine.data.broden import read_concepts, write_concepts
from engine.data.synth import batches as synth_batches
from engine.errors import InputShapeError, ModelLoadError
from engine.explain import cam, saliency
from engine.graph import normalize as nz
from engine.graph.editing import default_opset
from engine.graph.receptive import receptive_fields
from engine.runtime.batch import batch_plan, in_chunks
from tests.gradcheck import assert_slopes_match
from tests.onnx_build import Builder

CLASSES = 5


def network(batch=1, size=(8, 8), head="reshape", opset=17, seed=1):
    """Conv/Relu/MaxPool/Conv/Relu ("features") and a head that bakes in the batch or not:
    reshape (torch's static ``x.view(1, -1)`` → Gemm), gap (GlobalAveragePool → Flatten → Gemm),
    coordconv (a constant coordinate map of the static batch joined on channels: cannot be freed),
    token (an Expand of a class token to the static batch, joined along the sequence)."""
    b = Builder(seed=seed)
    c1 = b.op("Relu", [b.op("Conv", ["image", b.weight(4, 3, 3, 3), b.weight(4)], pads=[1] * 4)])
    pool = b.op("MaxPool", [c1], kernel_shape=[2, 2], strides=[2, 2])
    features = b.op("Relu", [b.op("Conv", [pool, b.weight(6, 4, 3, 3), b.weight(6)], pads=[1] * 4)], name="features")
    if head == "reshape":
        flat = b.op("Reshape", [features, b.const(np.array([batch, -1], np.int64))])
        b.op("Gemm", [flat, b.weight(CLASSES, 6 * size[0] * size[1] // 4), b.weight(CLASSES)], transB=1, name="logits")
    elif head == "gap":
        flat = b.op("Flatten", [b.op("GlobalAveragePool", [features])])
        b.op("Gemm", [flat, b.weight(CLASSES, 6), b.weight(CLASSES)], transB=1, name="logits")
    elif head in ("coordconv", "sequence"):
        coords = b.weight(batch, 2, size[0] // 2, size[1] // 2, scale=1.0)
        joined = b.op("Concat", [features, coords], axis=1)
        mixed = b.op("Relu", [b.op("Conv", [joined, b.weight(6, 8, 3, 3), b.weight(6)], pads=[1] * 4)], name="mixed")
        if head == "sequence":  # a recognizer's T×N×C output: columns, then classes
            columns = b.op("ReduceMean", [mixed], axes=[2], keepdims=0)
            b.op("Transpose", [columns], perm=[2, 0, 1], name="logits")
        else:
            flat = b.op("Flatten", [b.op("GlobalAveragePool", [mixed])])
            b.op("Gemm", [flat, b.weight(CLASSES, 6), b.weight(CLASSES)], transB=1, name="logits")
    elif head == "token":
        tokens = b.op("Transpose", [b.op("Reshape", [features, b.const(np.array([batch, 6, -1], np.int64))])],
                      perm=[0, 2, 1])
        token = b.op("Expand", [b.weight(1, 1, 6), b.const(np.array([batch, 1, 6], np.int64))])
        pooled = b.op("ReduceMean", [b.op("Concat", [token, tokens], axis=1)], axes=[1], keepdims=0)
        b.op("Gemm", [pooled, b.weight(CLASSES, 6), b.weight(CLASSES)], transB=1, name="logits")
    return b.model([("image", [batch, 3, *size])], [("logits", None)], opset)


def float64(model):
    """The same graph computing in float64 (the reference for central differences)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, t in enumerate(out.graph.initializer):
        if t.data_type == TensorProto.FLOAT:
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for vi in [*out.graph.input, *out.graph.output]:
        vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    return out


def save(model, path):
    onnx.save(model, str(path))
    return str(path)


def images(n, seed=0, shape=(8, 8, 3)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def one_by_one(path, x):
    """The original model's outputs for each image alone (its own batch of 1)."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"image": x[i:i + 1]})[0] for i in range(len(x))])


def check_input_gradients(model, reference, x, rng):
    """Input gradients of Σ seed · logits at batch len(x) agree, image by image, with float64
    central differences of ``reference`` (a graph with a batch of 1)."""
    seed = rng.standard_normal((len(x), CLASSES)).astype(np.float32)
    got = model.run(x, gradients=["input"], seed=seed).gradients["input"]
    assert got.shape == x.shape
    for i in range(len(x)):
        assert_slopes_match(got[i:i + 1].astype(np.float64), reference, "logits", x[i:i + 1].astype(np.float64),
                            seed[i:i + 1].astype(np.float64), "image", rng, rounds=2, rtol=2e-3)


# ------------------------------------------------------------------------------ static batch
@pytest.mark.parametrize("head", ["reshape", "gap", "token"])
def test_static_batch_is_freed_verified_and_differentiated(tmp_path, head):
    original = network(1, head=head)
    path = save(original, tmp_path / "static.onnx")
    model = Model(path, threads=1)
    assert model._freed and model._chunk is None and model.input.batch is None
    x = model.preprocess(images(3))
    np.testing.assert_allclose(model.run(x).outputs[0], one_by_one(path, x), rtol=1e-5, atol=1e-5)
    check_input_gradients(model, float64(original), x, np.random.default_rng(0))


def test_a_batch_the_graph_holds_on_to_runs_in_chunks(tmp_path):
    original = network(1, head="coordconv")
    path = save(original, tmp_path / "coord.onnx")
    model = Model(path, threads=1)
    assert not model._freed and model._chunk == 1
    x = model.preprocess(images(3))
    result = model.run(x, activations=["mixed"], gradients=["mixed"], seed=np.eye(CLASSES)[[0, 2, 4]])
    np.testing.assert_allclose(result.outputs[0], one_by_one(path, x), rtol=1e-5, atol=1e-5)
    for i in range(3):  # each row is what the image alone gives
        alone = model.run(x[i:i + 1], activations=["mixed"], gradients=["mixed"], seed=np.eye(CLASSES)[[2 * i]])
        np.testing.assert_allclose(result.activations["mixed"][i], alone.activations["mixed"][0], rtol=1e-6)
        np.testing.assert_allclose(result.gradients["mixed"][i], alone.gradients["mixed"][0], rtol=1e-5, atol=1e-7)
    check_input_gradients(model, float64(original), x, np.random.default_rng(1))


def test_chunks_of_two_pad_the_last_block(tmp_path):
    path = save(network(2, head="coordconv"), tmp_path / "coord2.onnx")
    model = Model(path, threads=1)
    assert model._chunk == 2
    x = model.preprocess(images(3, seed=4))
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    padded = np.concatenate([x, np.zeros_like(x[:1])])
    expected = np.concatenate([session.run(None, {"image": padded[i:i + 2]})[0] for i in (0, 2)])[:3]
    np.testing.assert_allclose(model.run(x).outputs[0], expected, rtol=1e-5, atol=1e-6)
    assert model.run(x[:0]).outputs[0].shape == (0, CLASSES)
    assert len(model.predict(images(5), top=1)) == 5


def test_a_chunked_sequence_output_joins_along_its_batch_axis(tmp_path):
    path = save(network(1, head="sequence"), tmp_path / "sequence.onnx")
    model = Model(path, threads=1)
    assert model._chunk == 1
    x = model.preprocess(images(3, seed=5))
    joined = model.run(x).outputs[0]
    assert joined.shape == (4, 3, 6)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for i in range(3):
        np.testing.assert_allclose(joined[:, i], session.run(None, {"image": x[i:i + 1]})[0][:, 0], rtol=1e-6)


def test_in_chunks_joins_trims_and_pads():
    calls = []

    def fn(a, b):
        calls.append(len(a))
        return [a * 2, b.sum(axis=1)]

    doubled, sums = in_chunks(fn, 2, np.arange(5.0), np.ones((5, 3)))
    assert calls == [2, 2, 2] and doubled.tolist() == [0, 2, 4, 6, 8] and sums.tolist() == [3] * 5
    sequence = np.arange(12.0).reshape(4, 3)  # T×N: the batch on axis 1, split and joined there
    joined = in_chunks(lambda x, t: t * x[:, None], 1, np.array([1.0, 2.0, 3.0]), sequence, axes=[0, 1])
    np.testing.assert_array_equal(joined, sequence * [1.0, 2.0, 3.0])


@pytest.mark.parametrize("name, build", [("freed", lambda: network(1, head="reshape")),
                                         ("chunked", lambda: network(1, head="coordconv"))])
def test_scorecam_smoothgrad_and_dissect_on_fixed_batch_models(tmp_path, name, build):
    model = Model(save(build(), tmp_path / f"{name}.onnx"), threads=1)
    pictures = images(3, seed=7)
    noisy = saliency(model, pictures, method="smoothgrad", samples=4)  # noise batched inside
    assert noisy.maps.shape == (3, 8, 8) and np.isfinite(noisy.maps).all()
    for explain in (lambda imgs: cam(model, imgs, method="scorecam"),  # masked inputs batched inside
                    lambda imgs: saliency(model, imgs, method="smoothgrad", samples=3, noise=0.0)):
        together = explain(pictures)
        for i in range(3):  # one image alone gives the same map as inside a batch of three
            alone = explain([pictures[i]])
            np.testing.assert_allclose(together.maps[i], alone.maps[0], atol=1e-4)
    write_concepts(tmp_path / "concepts", synth_batches(6, seed=0, size=(16, 16)))
    result = dissect(model, read_concepts(tmp_path / "concepts"), layer="features", batch_size=4, top=2)
    assert result.summary["units"] == 6


# --------------------------------------------------------------------- -1, unnamed, dynamic H×W
@pytest.mark.parametrize("dims", [(-1, 3, 8, 8), (None, 3, 8, 8), (-1, 3, -1, -1), ("N", 3, "H", "W")])
def test_dynamic_dims_of_every_spelling(tmp_path, dims):
    original = network(dims[0], size=dims[2:], head="gap")
    path = save(original, tmp_path / "dynamic.onnx")
    model = Model(path, threads=1)
    assert model.input.batch is None and model._chunk is None
    predictions = model.predict(images(4) + images(1, shape=(8, 8, 3)), top=2)
    assert len(predictions) == 5 and all(len(p.top) == 2 for p in predictions)
    exp = cam(model, images(2))  # default target: the top-1 fast path through GlobalAveragePool
    assert exp.maps.shape == (2, 8, 8) and np.isfinite(exp.maps).all()
    reference = float64(network(1, size=(8, 8), head="gap"))
    check_input_gradients(model, reference, model.preprocess(images(2)), np.random.default_rng(2))


def test_dynamic_size_runs_at_the_size_given_or_the_first_image(tmp_path):
    path = save(network("N", size=("H", "W"), head="gap"), tmp_path / "hw.onnx")
    mixed = images(1, shape=(12, 10, 3)) + images(1, shape=(8, 8, 3))
    free = Model(path, threads=1)
    exp = cam(free, mixed)
    assert exp.raw[exp.layers[0]].shape == (2, 6, 5) and exp.maps.shape == (2, 12, 10)
    sized = Model(path, input_size=(16, 16), threads=1)
    assert cam(sized, mixed, method="gradcam++").raw[sized.default_layer].shape == (2, 8, 8)
    details = sized.layer_details()
    assert [d["shape"] for d in details if d["name"] == "features"] == [("N", 6, 8, 8)]
    check_input_gradients(free, float64(network(1, size=(12, 10), head="gap")), free.preprocess(mixed),
                          np.random.default_rng(3))


def test_a_size_the_graph_cannot_take_is_a_user_error(tmp_path):
    b = Builder()
    features = b.op("Relu", [b.op("Conv", ["image", b.weight(4, 3, 3, 3)], pads=[1] * 4)])
    flat = b.op("Reshape", [features, b.const(np.array([0, 256], np.int64))])  # 4 channels × 8 × 8 only
    b.op("Gemm", [flat, b.weight(CLASSES, 256)], transB=1, name="logits")
    model = Model(save(b.model([("image", ["N", 3, "H", "W"])], [("logits", None)], 17), tmp_path / "m.onnx"))
    assert model.run(model.preprocess(images(1))).outputs[0].shape == (1, CLASSES)
    with pytest.raises(InputShapeError, match=r"input_size=\(H, W\)"):
        model.run(model.preprocess(images(1, shape=(12, 12, 3))))


# ------------------------------------------------------------------------------------ loading
def test_custom_opset_domains_and_old_opsets_load(tmp_path):
    original = network(1, head="gap", opset=11)
    original.opset_import.append(helper.make_opsetid("Paddle", 1))
    original.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    clean = nz.normalize(original)
    assert {o.domain: o.version for o in clean.opset_import} == {"": 17, "Paddle": 1, "com.microsoft": 1}
    model = Model(save(original, tmp_path / "paddle.onnx"), threads=1)
    check_input_gradients(model, float64(network(1, head="gap", opset=11)), model.preprocess(images(2)),
                          np.random.default_rng(4))


def test_an_opset_the_converter_refuses_is_kept_when_its_ops_still_exist(monkeypatch):
    original = network(1, head="gap", opset=11)

    def refuse(model, target):
        raise RuntimeError("Unsupported opset-version")

    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    kept = nz.upgrade_opset(original)
    assert default_opset(kept) == 11
    with pytest.raises(ModelLoadError, match="Re-export"):
        nz.upgrade_opset(original, strict=True)


def test_receptive_fields_after_a_rank_changing_squeeze_and_transpose():
    b = Builder()
    conv = b.op("Relu", [b.op("Conv", ["image", b.weight(4, 3, 3, 3)], pads=[1] * 4)], name="conv")
    column = b.op("Squeeze", [b.op("ReduceMean", [conv], axes=[2], keepdims=1), b.const(np.array([2], np.int64))])
    sequence = b.op("Transpose", [column], perm=[0, 2, 1])
    b.op("Unsqueeze", [sequence, b.const(np.array([1], np.int64))], name="seq")
    fields = receptive_fields(nz.normalize(b.model([("image", [1, 3, 8, 8])], [("seq", None)], 17)))
    assert fields["conv"].size == (3, 3) and not fields["conv"].whole_image
    assert fields["seq"].whole_image


def test_resize_to_the_input_size_computed_from_its_shape(tmp_path):
    """torchvision's LRASPP: ``F.interpolate(out, size=x.shape[-2:])``, sizes from Shape nodes."""
    b = Builder(seed=2)
    features = b.op("Relu", [b.op("Conv", ["image", b.weight(4, 3, 3, 3), b.weight(4)], pads=[1] * 4,
                                  strides=[2, 2])], name="features")
    scores = b.op("Conv", [features, b.weight(2, 4, 1, 1)])
    spatial = b.op("Slice", [b.op("Shape", ["image"]), b.const(np.array([2], np.int64)), b.const(np.array([4], np.int64))])
    leading = b.op("Slice", [b.op("Shape", [scores]), b.const(np.array([0], np.int64)), b.const(np.array([2], np.int64))])
    b.op("Resize", [scores, "", "", b.op("Concat", [leading, spatial], axis=0)], mode="linear", name="logits")
    original = b.model([("image", ["N", 3, "H", "W"])], [("logits", None)], 17)
    model = Model(save(original, tmp_path / "lraspp.onnx"), input_size=(8, 8), threads=1)
    x = model.preprocess(images(2))
    rng = np.random.default_rng(5)
    seed = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    got = model.run(x, gradients=["input"], seed=seed).gradients["input"]
    assert_slopes_match(got.astype(np.float64), float64(original), "logits", x.astype(np.float64),
                        seed.astype(np.float64), "image", rng, rounds=3, rtol=1e-4)


# ------------------------------------------------------------------------------------------ CLI
def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture()
def picture_files(tmp_path):
    paths = []
    for i, shape in enumerate([(8, 8, 3), (12, 10, 3), (8, 8, 3)]):
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), images(1, seed=i, shape=shape)[0])
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("name, build", [
    ("freed", lambda: network(1, head="reshape")), ("chunked", lambda: network(1, head="coordconv")),
    ("minus1", lambda: network(-1, size=(-1, -1), head="gap"))])
def test_cli_on_every_convention(tmp_path, picture_files, name, build):
    path = save(build(), tmp_path / f"{name}.onnx")
    size = ["--size", "8x8"]
    predicted = invoke("predict", path, *picture_files, "--json", *size)
    assert predicted.exit_code == 0, predicted.output
    assert len(json.loads(predicted.output)) == 3
    for command in (["cam", path, *picture_files, "--out", tmp_path / "cam", *size],
                    ["cam", path, *picture_files, "--method", "scorecam", "--out", tmp_path / "score", *size],
                    ["saliency", path, *picture_files, "--samples", "3", "--out", tmp_path / "sg", *size],
                    ["embed", path, *picture_files, "--out", tmp_path / "emb", "--k", "1", "--layer", "features", *size],
                    ["inspect", path, *size]):
        result = invoke(*command)
        assert result.exit_code == 0, (command[0], result.output)
    assert np.load(tmp_path / "emb" / "features.npy").shape == (3, 6)


def test_cli_dynamic_size_without_size_uses_the_images(tmp_path, picture_files):
    path = save(network(-1, size=(-1, -1), head="gap"), tmp_path / "hw.onnx")
    result = invoke("cam", path, *picture_files, "--out", tmp_path / "cam")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "cam" / "cams.npz")["raw"].shape == (3, 4, 4)
    result = invoke("patches", path, *picture_files, "--layer", "features", "--top", "2", "--out", tmp_path / "patches")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "patches" / "patches.json").read_text())["input_size"] == [8, 8]


def test_batch_plan_keeps_symbolic_batches_untouched():
    model = network("N", head="gap")
    plan = batch_plan(model)
    assert plan.proto is model and plan.chunk is None and not plan.freed
