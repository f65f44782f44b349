"""Explanations on the trained Shapes-world models: Grad-CAM finds the object, removing what it
points at destroys the score faster than removing random pixels, class visualization works."""
from pathlib import Path

import numpy as np
import pytest

from engine.api import Model
from engine.data.labels import probabilities
from engine.data.synth import generate
from engine.explain import cam, class_visualization, metrics

MODELS = Path(__file__).resolve().parents[1] / "models"


def load(name):
    return Model(MODELS / f"{name}.onnx", provider="CPUExecutionProvider", threads=1)


@pytest.mark.parametrize("name", ["shapes-resnet", "shapes-mobilenet"])
def test_gradcam_pointing_game_and_deletion(name):
    model = load(name)
    scene = generate(500, seed=11)
    labels = scene.labels
    exp = cam(model, list(scene.images), method="gradcam", targets=[int(c) for c in labels], batch=100)
    hits = metrics.pointing_game(exp.maps, scene.masks)
    assert hits.mean() >= 0.9, f"pointing game {hits.mean():.3f}"
    n = 48
    x = model.preprocess(list(scene.images[:n]))

    def score(xb, rows):
        return probabilities(model.run(xb).outputs[0])[np.arange(len(xb)), labels[rows]]

    ours = metrics.deletion_auc(score, x, exp.maps[:n], steps=8, batch=9)
    random = metrics.deletion_auc(score, x, metrics.baseline_maps("random", n, (96, 96), rng=0), steps=8, batch=9)
    assert ours.mean() < random.mean(), (ours.mean(), random.mean())


def test_class_visualization_raises_the_target_probability_tenfold():
    model = load("shapes-resnet")
    start = generate(1, seed=3).images[0]
    p0 = probabilities(model.run(model.preprocess([start])).outputs[0])[0]
    target = int(p0.argmin())
    viz = class_visualization(model, target=target, steps=40, start=start)
    p1 = probabilities(model.run(model.preprocess([viz.image])).outputs[0])[0]
    assert p1[target] >= 10 * p0[target], (p0[target], p1[target])
    assert viz.scores[-1] > viz.scores[0]
