"""Model-level explanations (cam, saliency, evaluate, class_visualization, CLI) on a numpy CNN
with hand-derived gradients (tests/explain_numpy_model.py), checked here by finite differences."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from engine.data.files import write_image
from engine.errors import LayerError, UsageError
from engine.explain import OutputMask, cam, class_visualization, evaluate, methods, saliency
from tests import explain_references as refs
from tests.explain_numpy_model import NumpyModel

RNG = np.random.default_rng(1)
IMAGES = RNG.integers(0, 256, size=(5, 12, 12, 3), dtype=np.uint8)


def test_numpy_model_gradients_match_central_differences():
    model = NumpyModel()
    x = model.preprocess(IMAGES[:2]).astype(np.float64)
    seed = RNG.normal(size=(2, 4))
    g = model.run(x, gradients=["input"], seed={"logits": seed}).gradients["input"]
    eps = 1e-5
    for idx in [(0, 0, 1, 2), (1, 2, 7, 7), (0, 1, 4, 0)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        fd = ((model.forward(xp)[1]["logits"] - model.forward(xm)[1]["logits"]) * seed).sum() / (2 * eps)
        assert g[idx] == pytest.approx(fd, rel=1e-4, abs=1e-6)


def test_gradcam_rows_batches_and_sizes():
    model = NumpyModel()
    exp = cam(model, list(IMAGES), method="gradcam", batch=2)
    x = model.preprocess(IMAGES)
    logits = model.forward(x)[1]["logits"]
    top = logits.argmax(axis=1)
    seeds = np.eye(4, dtype=np.float32)[top]
    res = model.run(x, activations=["pool"], gradients=["pool"], seed={"logits": seeds})
    np.testing.assert_allclose(exp.raw["pool"], methods.gradcam(res.activations["pool"], res.gradients["pool"]),
                               rtol=1e-5, atol=1e-6)
    assert exp.targets.tolist() == top.tolist() and exp.image.tolist() == list(range(5))
    np.testing.assert_allclose(exp.scores, logits, rtol=1e-5)
    assert exp.maps.shape == (5, 12, 12) and exp.maps.min() >= 0 and exp.maps.max() <= 1
    assert np.allclose(exp.maps.max(axis=(1, 2)), 1, atol=1e-3)
    # explicit targets need no extra forward pass: one run per batch
    model.calls = 0
    cam(model, list(IMAGES), targets=[0, 1, 2, 3, 0], batch=5)
    assert model.calls == 1


def test_several_targets_per_image_and_layers():
    model = NumpyModel()
    exp = cam(model, list(IMAGES[:2]), targets=[[0, 3], [2]], layer="feat,pool")
    assert exp.image.tolist() == [0, 0, 1] and exp.targets.tolist() == [0, 3, 2]
    assert set(exp.raw) == {"feat", "pool"} and exp.raw["feat"].shape == (3, 8, 8)
    single = cam(model, list(IMAGES[:1]), targets=3, layer="feat")
    np.testing.assert_allclose(exp.raw["feat"][1], single.raw["feat"][0], rtol=1e-5, atol=1e-7)
    with pytest.raises(LayerError):
        cam(model, list(IMAGES[:1]), layer="nope")
    with pytest.raises(UsageError):
        cam(model, list(IMAGES[:2]), targets=[1, 2, 3])
    with pytest.raises(UsageError):
        cam(model, list(IMAGES[:2]), method="fancycam")


def test_output_mask_target_equals_class_sum():
    model = NumpyModel()
    mask = np.array([1.0, 0, 1.0, 0], np.float32)
    a = cam(model, list(IMAGES[:2]), method="hirescam", targets=OutputMask(mask))
    model_run = model.run(model.preprocess(IMAGES[:2]), activations=["pool"], gradients=["pool"],
                          seed={"logits": np.tile(mask, (2, 1))})
    want = methods.hirescam(model_run.activations["pool"], model_run.gradients["pool"])
    np.testing.assert_allclose(a.raw["pool"], want, rtol=1e-5, atol=1e-7)
    assert a.targets.tolist() == [-1, -1]


def test_tta_average_is_flip_equivariant():
    model = NumpyModel(size=12)
    img = IMAGES[0]
    a = cam(model, [img], tta=True, layer="feat")   # logits are flip-invariant: same top class
    b = cam(model, [img[:, ::-1].copy()], tta=True, layer="feat")
    assert a.raw["feat"].max() > 0.005
    np.testing.assert_allclose(b.raw["feat"][0], a.raw["feat"][0][:, ::-1], rtol=1e-4, atol=1e-7)
    plain = cam(model, [img], layer="feat")
    assert not np.allclose(plain.raw["feat"], a.raw["feat"])


@pytest.mark.parametrize("method", ["gradcam++", "xgradcam", "layercam", "eigencam", "scorecam"])
def test_other_methods_run_through_the_capture(method):
    model = NumpyModel()
    exp = cam(model, list(IMAGES[:3]), method=method, eigen_smooth=method == "gradcam++")
    assert exp.raw["pool"].shape == (3, 4, 4) and np.isfinite(exp.maps).all() and (exp.raw["pool"] >= 0).all()


def test_saliency_methods():
    model = NumpyModel()
    x = model.preprocess(IMAGES[:3])
    top = model.forward(x)[1]["logits"].argmax(axis=1)
    seeds = np.eye(4, dtype=np.float32)[top]
    g = model.run(x, gradients=["input"], seed={"logits": seeds}).gradients["input"]
    exp = saliency(model, list(IMAGES[:3]), method="vanilla")
    np.testing.assert_allclose(exp.attributions, g, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(exp.raw[model.input.name], np.abs(g).max(axis=1), rtol=1e-5, atol=1e-7)
    assert exp.maps.shape == (3, 12, 12)
    ig = saliency(model, list(IMAGES[:3]), method="integrated", steps=64, baseline="black")
    base = model.preprocess(np.zeros((1, 12, 12, 3), np.uint8))
    gap = (model.forward(x)[1]["logits"] - model.forward(base)[1]["logits"])[np.arange(3), top]
    np.testing.assert_allclose(ig.attributions.reshape(3, -1).sum(axis=1), gap, rtol=0.05, atol=0.02)
    gg = saliency(model, list(IMAGES[:3]), method="guided-gradcam", layer="feat")
    assert gg.attributions.shape == x.shape
    sg = saliency(model, list(IMAGES[:3]), method="smoothgrad", samples=4, batch=2)
    assert sg.attributions.shape == x.shape and not np.allclose(sg.attributions, g)



def test_smoothed_integrated_gradients_through_the_model():
    model = NumpyModel()
    x = model.preprocess(IMAGES[:2])
    seeds = np.eye(4, dtype=np.float32)[model.forward(x)[1]["logits"].argmax(axis=1)]
    exp = saliency(model, list(IMAGES[:2]), method="smoothgrad:integrated", samples=3, noise=0.1, steps=4, rng=5)
    eps = np.random.default_rng([5, 0]).standard_normal((2, 3, *x.shape[1:]))  # rng and the batch's first image
    sigma = 0.1 * (x.reshape(2, -1).max(axis=1) - x.reshape(2, -1).min(axis=1))
    want = np.zeros(x.shape)
    for n in range(2):
        for s in range(3):
            xs = x[n:n + 1] + sigma[n] * eps[n, s]
            grads = [model.run((k / 4 * xs).astype(np.float32), gradients=["input"],
                               seed={"logits": seeds[n:n + 1]}).gradients["input"] for k in range(1, 5)]
            want[n] += (xs * np.mean(grads, axis=0))[0] / 3
    np.testing.assert_allclose(exp.attributions, want, rtol=1e-3, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(exp.raw[model.input.name], np.abs(exp.attributions).max(axis=1))
    guided = saliency(model, list(IMAGES[:2]), method="smoothgrad:guided-gradcam", samples=2)
    assert guided.attributions.shape == x.shape and np.isfinite(guided.maps).all()

def test_evaluate_reports_method_and_baselines():
    model = NumpyModel()
    masks = np.zeros((4, 12, 12), bool)
    masks[:, 3:9, 3:9] = True
    report = evaluate(model, list(IMAGES[:4]), masks, labels=[0, 1, 2, 3], steps=4, batch=2)
    for name in ("gradcam", "random", "centre"):
        assert set(report[name]) == {"pointing", "deletion", "insertion"}
        assert 0 <= report[name]["pointing"] <= 1 and 0 <= report[name]["deletion"] <= 1
    assert report["centre"]["pointing"] == 1.0
    bare = evaluate(model, list(IMAGES[:4]), None, labels=[0, 1, 2, 3], steps=4, batch=2, curves=True)
    x = model.preprocess(list(IMAGES[:4]))
    logits = model.forward(x)[1]["logits"].astype(np.float64)
    intact = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))[np.arange(4), [0, 1, 2, 3]].mean()
    for name in ("gradcam", "random", "centre"):
        assert bare[name]["pointing"] is None  # no masks, no pointing game
        assert bare[name]["deletion"] == pytest.approx(report[name]["deletion"])
        assert bare[name]["insertion"] == pytest.approx(report[name]["insertion"])
        deletion, insertion = np.asarray(bare[name]["deletion_curve"]), np.asarray(bare[name]["insertion_curve"])
        assert len(deletion) == len(insertion) == 5
        assert deletion[0] == pytest.approx(intact, rel=1e-5) and insertion[-1] == pytest.approx(intact, rel=1e-5)
        assert bare[name]["deletion"] == pytest.approx(((deletion[1:] + deletion[:-1]) / 2).mean())


def test_class_visualization_raises_the_score():
    model = NumpyModel()
    viz = class_visualization(model, target=2, steps=30, lr=0.2, start="noise")
    assert viz.scores[-1] > viz.scores[0] + 1 and viz.image.shape == (8, 8, 3) and viz.image.dtype == np.uint8
    ch = class_visualization(model, layer="feat", channel=1, steps=10, fourier=True, decorrelate=True)
    assert ch.scores[-1] > ch.scores[0] and len(ch.steps) == 8
    with pytest.raises(UsageError):
        class_visualization(model, target=9)


def test_cli_cam_and_saliency_write_overlays_npz_and_summary(tmp_path, monkeypatch):
    monkeypatch.setattr("engine.api.Model", lambda path, **options: NumpyModel())
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"img{i}.png"))
        write_image(files[-1], IMAGES[i])
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.main, ["cam", "m.onnx", *files, "--out", str(out), "--json", "--target", "c2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert [s["target"]["label"] for s in summary] == ["c2"] * 3
    with np.load(out / "cams.npz") as npz:
        assert npz["raw"].shape == (3, 4, 4) and npz["maps"].shape == (3, 12, 12) and npz["scores"].shape == (3, 4)
    assert sorted(p.name for p in out.glob("*.png")) == [f"img{i}_gradcam.png" for i in range(3)]
    result = CliRunner().invoke(cli.main, ["saliency", "m.onnx", *files, "--out", str(out), "--method", "vanilla"])
    assert result.exit_code == 0, result.output
    assert (out / "saliency.npz").exists()
    bad = CliRunner().invoke(cli.main, ["cam", "m.onnx", files[0], "--out", str(out), "--layer", "nope"])
    assert bad.exit_code == 2 and bad.output.startswith("error: no layer named 'nope'")


def test_cli_classviz_and_evaluate(tmp_path, monkeypatch):
    monkeypatch.setattr("engine.api.Model", lambda path, **options: NumpyModel())
    out = tmp_path / "viz.png"
    result = CliRunner().invoke(cli.main, ["classviz", "m.onnx", "--target", "1", "--steps", "12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and (tmp_path / "viz_steps.png").exists()
    for i in range(3):
        write_image(tmp_path / "img" / f"{i}.png", IMAGES[i])
        mask = np.zeros((12, 12, 3), np.uint8)
        mask[2:10, 2:10] = 255
        write_image(tmp_path / "mask" / f"{i}.png", mask)
    result = CliRunner().invoke(cli.main, ["evaluate", "m.onnx", "--images", str(tmp_path / "img"),
                                           "--masks", str(tmp_path / "mask"), "--steps", "4", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["images"] == 3 and report["centre"]["pointing"] == 1.0
    bad = CliRunner().invoke(cli.main, ["evaluate", "m.onnx", "--images", str(tmp_path / "img"),
                                        "--masks", str(tmp_path / "mask" / "0.png")])
    assert bad.exit_code == 2 and "3 images but 1 masks" in bad.output


def test_fc_head_and_head_network_on_an_onnx_classifier(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from engine.api import Model
    from engine.explain.capture import fc_head, head_fn
    from tests.tiny_models import classifier, save

    proto = classifier(classes=5, width=4, softmax=True)
    model = Model(save(proto, tmp_path / "tiny.onnx"), provider="CPUExecutionProvider", threads=1)
    layer, weights = fc_head(model)
    fc_w = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "fc_w"))
    assert layer == "relu2"
    np.testing.assert_array_equal(weights, fc_w)
    # reference activations and logits from the same graph with the layer as an extra output
    tapped = onnx.ModelProto()
    tapped.CopyFrom(proto)
    tapped.graph.output.extend([helper.make_tensor_value_info("relu2", onnx.TensorProto.FLOAT, None)])
    x = RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)
    probs, acts = ort.InferenceSession(tapped.SerializeToString()).run(["probs", "relu2"], {"image": x})
    np.testing.assert_allclose(head_fn(model, "relu2")(acts), probs, rtol=1e-5, atol=1e-7)
    # a residual connection bypasses "r1": the network after it also needs the image
    w = numpy_helper.from_array(RNG.normal(size=(3, 3, 1, 1)).astype(np.float32), "w")
    fc = numpy_helper.from_array(RNG.normal(size=(2, 3)).astype(np.float32), "fc")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Add", ["r1", "image"], ["sum"]), helper.make_node("GlobalAveragePool", ["sum"], ["gap"]),
         helper.make_node("Flatten", ["gap"], ["flat"]),
         helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1)],
        "res", [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 2])], [w, fc])
    residual = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    residual.ir_version = 8
    res_model = Model(save(residual, tmp_path / "res.onnx"), provider="CPUExecutionProvider", threads=1)
    with pytest.raises(LayerError, match="cuts the network"):
        head_fn(res_model, "r1")
    assert head_fn(res_model, "sum")(np.ones((1, 3, 8, 8), np.float32)).shape == (1, 2)
    assert fc_head(res_model)[0] == "sum"


def test_top1_fast_path_equals_explicit_targets_in_one_pass():
    model = NumpyModel()
    x = model.preprocess(IMAGES)
    top = model.forward(x)[1]["logits"].argmax(axis=1).tolist()
    model.calls = 0
    fast = cam(model, list(IMAGES), method="gradcam++", batch=5)
    assert model.calls == 1  # one forward with taps; the head's gradient runs on its own small graph
    slow = cam(model, list(IMAGES), method="gradcam++", targets=top, batch=5)
    np.testing.assert_allclose(fast.raw["pool"], slow.raw["pool"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fast.scores, slow.scores, rtol=1e-5)
    assert fast.targets.tolist() == top


def test_cam_and_ablationcam_on_the_onnx_twin():
    model = NumpyModel()
    exp = cam(model, list(IMAGES[:3]), method="cam", targets=[0, 1, 2])
    grad = cam(model, list(IMAGES[:3]), method="gradcam", targets=[0, 1, 2])
    np.testing.assert_allclose(exp.raw["pool"], 16 * grad.raw["pool"], rtol=1e-4, atol=1e-6)   # pool is 4x4
    with pytest.raises(LayerError, match="pooled layer"):
        cam(model, list(IMAGES[:1]), method="cam", layer="feat")
    abl = cam(model, list(IMAGES[:3]), method="ablationcam", targets=[0, 1, 2])
    assert abl.raw["pool"].shape == (3, 4, 4) and np.isfinite(abl.raw["pool"]).all()


def test_model_run_seeds_an_intermediate_tensor_like_the_hand_derived_gradient(tmp_path):
    import onnx

    from engine import Model

    reference = NumpyModel()
    onnx.save(reference.proto, tmp_path / "numpy-model.onnx")
    model = Model(tmp_path / "numpy-model.onnx", provider="CPUExecutionProvider", threads=1, preprocess="unit")
    x = reference.preprocess(IMAGES[:2])
    seed = RNG.normal(size=(2, 6, 8, 8)).astype(np.float32)
    got = model.run(x, activations=["feat"], gradients=["input"], seed={"feat": seed})
    want = reference.run(x, activations=["feat"], gradients=["input"], seed={"feat": seed})
    np.testing.assert_allclose(got.activations["feat"], want.activations["feat"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.gradients["input"], want.gradients["input"], rtol=1e-4, atol=1e-5)
    assert len(got.outputs) == 1 and got.outputs[0].shape == (2, 4)


def test_a_new_cam_method_is_one_table_entry(monkeypatch):
    def negative_gradcam(activations, gradients):
        """Grad-CAM of the opposite score."""
        return -gradients.mean(axis=(2, 3))

    monkeypatch.setitem(methods.METHODS, "negcam", methods.CamMethod("negcam", negative_gradcam))
    model = NumpyModel()
    exp = cam(model, list(IMAGES[:2]), method="negcam", targets=[0, 3])
    run = model.run(model.preprocess(IMAGES[:2]), activations=["pool"], gradients=["pool"],
                    seed={"logits": np.eye(4, dtype=np.float32)[[0, 3]]})
    a, g = run.activations["pool"], run.gradients["pool"]
    want = refs.relu_sum(-g.astype(np.float64).mean(axis=(2, 3)), a)
    assert want.max() > 0
    np.testing.assert_allclose(exp.raw["pool"], want, rtol=1e-5, atol=1e-7)
    with pytest.raises(TypeError, match="needs"):
        methods.cam_method("odd")(lambda activations, logits: logits)
    assert "odd" not in methods.METHODS
