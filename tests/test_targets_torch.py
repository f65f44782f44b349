"""Structured targets against torch autograd (fixtures from models/make_target_fixtures.py): the
box's class score (YOLOv8), objectness × class (YOLOv5), a greedy-decoded CTC character and the
whole string (T×N×C log-probabilities), a class over a region of a segmenter."""
from pathlib import Path

import numpy as np
import pytest

from engine.api import Model
from engine.explain import cam, saliency
from engine.explain.capture import capture
from engine.explain.outputs import describe, forward
from engine.explain.targets import resolve
from tests import explain_references as refs

DIR = Path(__file__).resolve().parent / "fixtures" / "targets"
CASES = [("yolov8", "box:0"), ("yolov8", "box:5"), ("yolov5", "box:0"), ("yolov5", "box:3"),
         ("crnn", "char:1"), ("crnn", "text"), ("segmenter", "class:2@region:8,16,40,48")]


def scale(a):
    return float(np.abs(a).max())


@pytest.mark.parametrize("name,target", CASES)
def test_saliency_and_gradcam_match_torch_autograd(name, target):
    fx = np.load(DIR / f"{name}.npz")
    model = Model(DIR / f"{name}.onnx", provider="CPUExecutionProvider", threads=1)
    images = list(fx["images"])
    np.testing.assert_allclose(model.preprocess(images), fx["input"], rtol=1e-5, atol=1e-5)
    sal = saliency(model, images, method="vanilla", targets=target)
    want = fx[f"{target}/grad_input"]
    np.testing.assert_allclose(sal.attributions, want, rtol=1e-3, atol=1e-4 * scale(want))
    for i, detail in enumerate(sal.details):
        if "anchor" in detail:
            assert (detail["anchor"], detail["class"]) == (fx[f"{target}/anchor"][i], fx[f"{target}/class"][i])
        if "frames" in detail:
            assert detail["frames"] == fx[f"{target}/frames/{i}"].tolist()
    # the layer's activations and gradients, then Grad-CAM (zero where ReLU kills the whole map)
    tap, x = str(fx["tap"]), fx["input"]
    view = describe(model, x[:1])
    rows = resolve(target, 2, view.row_shape, outputs=view.rows(forward(model, x, [view.name])[view.name]),
                   kind=view.kind, input_size=x.shape[2:])
    _, acts, grads = capture(model, x, [tap], rows.seeds, view)
    np.testing.assert_allclose(acts[tap], fx[f"{target}/act"], rtol=1e-4, atol=1e-5 * scale(acts[tap]))
    want = fx[f"{target}/grad"]
    np.testing.assert_allclose(grads[tap], want, rtol=1e-3, atol=1e-4 * scale(want))
    exp = cam(model, images, method="gradcam", targets=target, layer=tap)
    want = refs.gradcam(fx[f"{target}/act"], fx[f"{target}/grad"])
    np.testing.assert_allclose(exp.raw[tap], want, rtol=1e-3, atol=1e-4 * max(scale(want), 1e-12))
    assert exp.details == sal.details and exp.empty.tolist() == (want.max(axis=(1, 2)) <= 0).tolist()
