"""The batch-1 Grad-CAM call's shortcuts against the general path: the top-1 head gradient in
closed form for a GAP → FC head (against the differentiated head's session and the full capture
with explicit targets), the channel-weight combination (against Σ_k w_k A_k), and the fused map
stretch (against to_unit ∘ resize ∘ to_unit)."""
from pathlib import Path

import numpy as np
import pytest

from engine.api import Model
from engine.explain import cam, explainers, methods
from engine.explain.capture import capture, head_gradient_fn
from engine.explain.outputs import describe
from engine.viz.overlay import resize_maps, to_unit, unit_resized

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "models" / "shapes-resnet.onnx"
SOFTMAX = ROOT / "tests" / "fixtures" / "wild" / "efficientnet_softmax.onnx"


def _images(model, n):
    h, w = model.input_size
    return list(np.random.default_rng(0).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8))


def test_closed_form_head_gradient_equals_the_differentiated_head():
    model = Model(SHAPES, provider="CPUExecutionProvider")
    x = model.preprocess(_images(model, 3))
    view = describe(model, x)
    layer, weights = explainers._linear_head(model, view.name)
    assert layer == model.default_layer
    _, acts, _ = capture(model, x, [layer], output=view.name)
    seeds = np.random.default_rng(1).standard_normal((3, weights.shape[0])).astype(np.float32)
    want = head_gradient_fn(model, layer, view)(acts[layer], seeds)
    got = explainers._linear_head_gradient(weights, acts[layer], seeds)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n", [1, 3])
def test_top1_through_the_closed_form_equals_the_full_capture(n):
    model = Model(SHAPES, provider="CPUExecutionProvider")
    images = _images(model, n)
    fast = cam(model, images, method="gradcam++")
    slow = cam(model, images, method="gradcam++", targets=fast.targets.tolist())
    layer = fast.layers[0]
    np.testing.assert_allclose(fast.raw[layer], slow.raw[layer], rtol=1e-4, atol=1e-6 * slow.raw[layer].max())
    np.testing.assert_allclose(fast.maps, slow.maps, atol=1e-4)
    np.testing.assert_allclose(fast.scores, slow.scores, rtol=1e-5)
    assert fast.empty.tolist() == slow.empty.tolist() == [False] * n


def test_no_closed_form_through_a_softmax():
    model = Model(SOFTMAX, provider="CPUExecutionProvider")
    x = model.preprocess(_images(model, 1))
    assert explainers._linear_head(model, describe(model, x).name) is None  # probabilities: Softmax after the FC
    assert explainers._linear_head(model, describe(model, x, logits=True).name) is not None


@pytest.mark.parametrize("eigen_smooth", [False, True])
def test_channel_weights_combine_as_the_weighted_sum(eigen_smooth):
    rng = np.random.default_rng(2)
    a, w = rng.standard_normal((2, 5, 4, 3)), rng.standard_normal((2, 5))
    weighted = w[:, :, None, None] * a
    want = methods.projection(weighted) if eigen_smooth else weighted.sum(axis=1)
    np.testing.assert_allclose(methods.combine(w, a, eigen_smooth), np.maximum(want, 0), rtol=1e-6, atol=1e-7)


def test_unit_resized_equals_to_unit_resize_to_unit():
    maps = np.maximum(np.random.default_rng(3).standard_normal((3, 7, 5)), 0).astype(np.float32)
    maps[2] = 0  # an empty map stays zero
    got = unit_resized(maps, (40, 33))
    np.testing.assert_allclose(got, to_unit(resize_maps(to_unit(maps), (40, 33))), atol=1e-6)
    assert got[:2].max(axis=(1, 2)).tolist() == [1.0, 1.0] and not got[2].any()
