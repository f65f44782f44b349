"""CAM family on the zoo fixtures: torch-autograd activations and gradients of real architectures,
against pytorch-grad-cam's Grad-CAM maps computed in torch and the paper loops."""
import numpy as np
import pytest

from engine.api import Model
from engine.explain import cam, methods, saliency
from engine.explain.capture import capture, fc_head, head_fn, head_gradient_fn
from engine.explain.targets import OutputMask, resolve
from tests import explain_references as refs
from tests import zoo

CLASSIFIERS = [v for v in zoo.variants() if not v.startswith("unet")]
ONE_EXPORT = [v for v in CLASSIFIERS if v.endswith("_ts13")]


def scale(x):
    return max(float(np.abs(x).max()), 1e-12)


@pytest.mark.parametrize("variant", CLASSIFIERS)
def test_gradcam_matches_pytorch_grad_cam(variant):
    fx = zoo.load(variant)
    for tap in fx.taps:
        got = methods.gradcam(fx.activations[tap], fx.grads_top1[tap])
        want = fx.gradcam[tap]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale(want), err_msg=tap)


@pytest.mark.parametrize("variant", ONE_EXPORT)
def test_every_method_matches_the_paper_loops_on_fixture_captures(variant):
    fx = zoo.load(variant)
    for tap in fx.taps:
        a, g = fx.activations[tap], fx.grads_top1[tap]
        for name, ref in refs.GRADIENT_REFERENCES.items():
            want = ref(a, g)
            got = methods.GRADIENT_METHODS[name](a, g)
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * scale(want), err_msg=f"{tap} {name}")
        want = np.maximum(refs.projection(a), 0)
        np.testing.assert_allclose(methods.eigencam(a), want, rtol=1e-3, atol=1e-5 * scale(want), err_msg=tap)


@pytest.mark.parametrize("variant", [v for v in CLASSIFIERS if v.split("_")[0] in ("resnet18", "resnet18nhwc",
                                                                                  "efficientnet", "googlenet")])
def test_cam_from_fc_weights_equals_gradcam_times_hw_at_the_last_layer(variant):
    fx = zoo.load(variant)
    layer, weights = fc_head(Model(fx.path), fx.output_name)
    assert layer == fx.taps[-1]
    a, g = fx.activations[layer], fx.grads_top1[layer]
    classes = fx.seed_top1.argmax(axis=1)
    want = a.shape[2] * a.shape[3] * methods.gradcam(a, g)
    np.testing.assert_allclose(methods.fc_cam(a, weights[classes]), want, rtol=1e-3, atol=1e-5 * scale(want))


@pytest.mark.parametrize("variant", ["resnet18_ts13", "vgg11bn_dynamo18", "mobilenetv3_ts11"])
def test_ablation_head_reproduces_the_output_from_the_last_tap(variant):
    fx = zoo.load(variant)
    model = Model(fx.path, provider="CPUExecutionProvider", threads=1)
    tap = fx.taps[-1]
    head = head_fn(model, tap, fx.output_name)
    want = fx.outputs[fx.output_name]
    np.testing.assert_allclose(head(fx.activations[tap]), want, rtol=1e-4, atol=1e-4 * scale(want))
    # Ablation-CAM weights: relative score drop with channel k zeroed, channel by channel
    a, seeds = fx.activations[tap][:1], fx.seed_top1[:1]
    y = (head(a) * seeds).sum()
    weights = []
    for k in range(a.shape[1]):
        ablated = a.copy()
        ablated[:, k] = 0
        weights.append((y - (head(ablated) * seeds).sum()) / y)
    want = refs.relu_sum([weights], a)
    np.testing.assert_allclose(methods.ablationcam(a, head, seeds), want, rtol=1e-3, atol=1e-5 * scale(want))


@pytest.mark.parametrize("variant", ["resnet18_ts13", "resnet18nhwc_ts13", "mobilenetv3_dynamo18", "densenet_ts11"])
def test_gradcam_through_model_run_matches_pytorch_grad_cam(variant):
    fx = zoo.load(variant)
    model = Model(fx.path, provider="CPUExecutionProvider", threads=1)
    outputs, acts, grads = capture(model, fx.input, fx.taps, fx.seed_top1, fx.output_name)
    np.testing.assert_allclose(outputs[0], fx.outputs[fx.output_name], rtol=1e-4, atol=1e-5)
    for tap in fx.taps:
        want = fx.gradcam[tap]
        np.testing.assert_allclose(methods.gradcam(acts[tap], grads[tap]), want, rtol=1e-3,
                                   atol=1e-4 * scale(want), err_msg=tap)
    # the top-1 path: one forward pass with taps, then the gradient of the head after the last tap
    tap = fx.taps[-1]
    head = head_gradient_fn(model, tap, fx.output_name)
    want = fx.gradcam[tap]
    np.testing.assert_allclose(methods.gradcam(acts[tap], head(acts[tap], fx.seed_top1)), want, rtol=1e-3,
                               atol=1e-4 * scale(want))


def test_cam_and_saliency_api_on_a_zoo_model():
    model = Model(zoo.load("resnet18_ts13").path, provider="CPUExecutionProvider", threads=1)
    images = list(np.random.default_rng(0).integers(0, 256, size=(3, 40, 40, 3), dtype=np.uint8))
    fast = cam(model, images, method="gradcam", batch=2)        # top-1: forward + head gradient
    slow = cam(model, images, method="gradcam", targets=fast.targets.tolist(), batch=3)
    layer = model.default_layer
    np.testing.assert_allclose(fast.raw[layer], slow.raw[layer], rtol=1e-3, atol=1e-4 * scale(slow.raw[layer]))
    np.testing.assert_allclose(fast.scores, slow.scores, rtol=1e-4, atol=1e-5)
    assert fast.maps.shape == (3, 40, 40) and fast.layers == [model.default_layer]
    fc = cam(model, images, method="cam", targets=fast.targets.tolist())
    h, w = fast.raw[layer].shape[1:]
    np.testing.assert_allclose(fc.raw[layer], h * w * slow.raw[layer], rtol=1e-3, atol=1e-3 * scale(fc.raw[layer]))
    sal = saliency(model, images, method="guided-gradcam")
    assert sal.attributions.shape == (3, 3, 32, 32) and np.isfinite(sal.maps).all()


def test_output_mask_target_on_the_dense_unet():
    fx = zoo.load("unet_ts13")
    model = Model(fx.path, provider="CPUExecutionProvider", threads=1)
    rows = resolve(OutputMask(fx.seed), len(fx.input), fx.seed.shape[1:])
    _, acts, grads = capture(model, fx.input, fx.taps, rows.seeds, fx.output_name)
    for tap in fx.taps:
        want = refs.gradcam(fx.activations[tap], fx.gradients[tap])
        assert want.max() > 0
        np.testing.assert_allclose(methods.gradcam(acts[tap], grads[tap]), want, rtol=1e-3,
                                   atol=1e-4 * scale(want), err_msg=tap)


def test_cli_channel_target_explains_a_dense_output(tmp_path):
    from click.testing import CliRunner

    import cli
    from engine.data.files import write_image

    fx = zoo.load("unet_ts13")
    image = tmp_path / "a.png"
    write_image(image, np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    run = CliRunner().invoke(cli.main, ["cam", str(fx.path), str(image), "--target", "channel:1", "--out", str(tmp_path / "o")])
    assert run.exit_code == 0, run.output
    assert "explained class #1 over 1024 cells" in run.output
    mask = np.zeros((3, 32, 32), np.float32)
    mask[1] = 1
    want = cam(Model(fx.path), [str(image)], targets=OutputMask(mask))
    np.testing.assert_allclose(np.load(tmp_path / "o" / "cams.npz")["raw"], want.raw[want.layers[0]],
                               rtol=1e-5, atol=1e-7)
    bad = CliRunner().invoke(cli.main, ["cam", str(fx.path), str(image), "--target", "channel:3", "--out", str(tmp_path / "p")])
    assert bad.exit_code == 2 and bad.output.startswith("error: target channel 3 out of range") and not (tmp_path / "p").exists()
