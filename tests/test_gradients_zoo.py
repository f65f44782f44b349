"""Model.run against torch autograd on the zoo (tests/fixtures/zoo): every variant, every tap.

Reference: d Σ(seed · output)/d tensor computed by torch autograd when the fixtures were made
(`models/make_zoo.py`); nothing here knows the rules. Error per tensor: ‖a − b‖ / ‖b‖ ≤ 1e-4 and
max |a − b| ≤ 1e-4 · max |b|.
"""
import numpy as np
import pytest

from engine import Model
from tests import zoo

TOL = 1e-4
VARIANTS = zoo.variants()
GRADCAM_TAP_IS_DEFAULT = ("resnet18", "resnet18nhwc", "mobilenetv3", "efficientnet", "convnext", "googlenet")


def assert_close(actual, expected, what):
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = np.linalg.norm(expected)
    rel = np.linalg.norm(actual - expected) / scale if scale else np.linalg.norm(actual)
    worst = np.abs(actual - expected).max()
    assert rel <= TOL, f"{what}: relative error {rel:.2e}"
    assert worst <= TOL * max(np.abs(expected).max(), 1e-6), f"{what}: max abs error {worst:.2e}"


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request):
    """One fixture and one Model per variant."""
    fx = zoo.load(request.param)
    return fx, Model(fx.path, threads=1)


@pytest.fixture(scope="module")
def case(variant):
    """The variant's run at batch 3 (random seed) for all taps and the input."""
    fx, model = variant
    return fx, model, model.run(fx.input, activations=fx.taps, gradients=[*fx.taps, "input"], seed=fx.seed)


def test_zoo_is_complete():
    assert VARIANTS == sorted(zoo.EXPECTED)


def test_outputs_activations_gradients_match_torch(case):
    fx, model, result = case
    assert_close(result.outputs[0], fx.outputs[fx.output_name], "output")
    for tap in fx.taps:
        assert_close(result.activations[tap], fx.activations[tap], f"activation {tap}")
    for name in [*fx.taps, "input"]:
        assert_close(result.gradients[name], fx.gradients[name], f"gradient {name}")
    assert result.gradients["input"].shape == fx.input.shape  # NHWC stays NHWC


def test_batch_of_one_equals_rows_of_the_batch(case):
    fx, model, batch = case
    for i in (0, 2):
        one = model.run(fx.input[i:i + 1], activations=fx.taps, gradients=[*fx.taps, "input"], seed=fx.seed[i:i + 1])
        for name in [*fx.taps, "input"]:
            np.testing.assert_allclose(one.gradients[name][0], batch.gradients[name][i], rtol=1e-5,
                                       atol=1e-5 * np.abs(batch.gradients[name]).max(), err_msg=name)
        for tap in fx.taps:
            np.testing.assert_allclose(one.activations[tap][0], batch.activations[tap][i], rtol=1e-5,
                                       atol=1e-5 * np.abs(batch.activations[tap]).max(), err_msg=tap)
    assert len(model._sessions) == 1  # one rewritten model serves batches of 1 and 3


def test_top1_class_gradients_match_torch(case):
    fx, model, _ = case
    if fx.seed_top1 is None:
        pytest.skip("dense U-Net output: no top-1 class")
    # the same request as `case` (one rewritten model), another seed
    result = model.run(fx.input, activations=fx.taps, gradients=[*fx.taps, "input"], seed={fx.output_name: fx.seed_top1})
    for tap in fx.taps:
        assert_close(result.gradients[tap], fx.grads_top1[tap], f"top-1 gradient {tap}")


def test_default_layer(variant):
    fx, model = variant
    layer = model.layer(model.default_layer)
    assert layer.shape[2] > 1 and layer.shape[3] > 1
    if fx.arch in GRADCAM_TAP_IS_DEFAULT:
        assert model.default_layer == fx.taps[-1]
