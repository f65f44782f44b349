"""Hostile inputs through the CLI: each one ends in exactly one line on stderr starting with
"error:", exit status 2 and no traceback (issue 12)."""
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from tests.tiny_models import classifier, save

LABELS = ["circle", "square", "star", "ring"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    image = tmp / "img.png"
    image.write_bytes(cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8))[1].tobytes())
    model = save(classifier(shape=("N", 3, 8, 8), metadata={"labels": LABELS}), tmp / "model.onnx")
    return {"model": str(model), "image": str(image), "tmp": tmp}


def _args(files, args):
    return [str(a).format(**files) for a in args]


# (case id, CLI arguments with {model}/{image}/{tmp} placeholders, words the error line must contain)
ARGUMENTS = [
    ("noise-nan", ["saliency", "{model}", "{image}", "--out", "{tmp}/s", "--noise", "nan"], "--noise"),
    ("noise-inf", ["saliency", "{model}", "{image}", "--out", "{tmp}/s", "--noise", "inf"], "--noise"),
    ("baseline-nan", ["saliency", "{model}", "{image}", "--out", "{tmp}/s", "--method", "integrated",
                      "--baseline", "nan"], "baseline"),
    ("baseline-inf", ["saliency", "{model}", "{image}", "--out", "{tmp}/s", "--method", "integrated",
                      "--baseline", "-inf"], "baseline"),
    ("lr-nan", ["classviz", "{model}", "--out", "{tmp}/c.png", "--lr", "nan"], "--lr"),
    ("lr-inf", ["classviz", "{model}", "--out", "{tmp}/c.png", "--lr", "inf"], "--lr"),
    ("classviz-seed-negative", ["classviz", "{model}", "--out", "{tmp}/c.png", "--seed", "-1"], "--seed"),
    ("target-overflow", ["cam", "{model}", "{image}", "--out", "{tmp}/c", "--target", "999999999999999999999"],
     "out of range"),
    ("target-beyond-classes", ["cam", "{model}", "{image}", "--out", "{tmp}/c", "--target", "7"], "4 classes"),
    ("gallery-negative", ["audit", "{model}", "--synth", "4", "--out", "{tmp}/a", "--gallery", "-1"], "--gallery"),
    ("embed-negative", ["audit", "{model}", "--synth", "4", "--out", "{tmp}/a", "--embed", "-5"], "--embed"),
    ("audit-synth-zero", ["audit", "{model}", "--synth", "0", "--out", "{tmp}/a"], "--synth"),
    ("worst-negative", ["compare", "{model}", "{model}", "--synth", "4", "--worst", "-3"], "--worst"),
    ("project-seed-negative", ["project", "{tmp}", "--out", "{tmp}/p.png", "--seed", "-1"], "--seed"),
    ("embed-synth-negative", ["embed", "{model}", "--synth", "-4", "--out", "{tmp}/e"], "--synth"),
    ("embed-seed-negative", ["embed", "{model}", "--synth", "4", "--seed", "-4", "--out", "{tmp}/e"], "--seed"),
    ("dissect-iou-nan", ["dissect", "{model}", "--concepts", "{tmp}", "--out", "{tmp}/d", "--iou", "nan"], "--iou"),
    ("demo-n-zero", ["demo", "--n", "0", "--out", "{tmp}/demo"], "--n"),
    ("mixup-nan", ["augment", "{image}", "--ops", "mixup:nan", "--out", "{tmp}/aug"], "alpha"),
    ("rotate-inf", ["augment", "{image}", "--ops", "rotate:inf", "--out", "{tmp}/aug"], "angle"),
    ("rotate-fill-word", ["augment", "{image}", "--ops", "rotate:fill=abc", "--out", "{tmp}/aug"], "0 to 255"),
    ("dropout-fill-negative", ["augment", "{image}", "--ops", "coarsedropout:fill=-1", "--out", "{tmp}/aug"], "fill"),
    ("blur-huge", ["augment", "{image}", "--ops", "blur:1e6", "--out", "{tmp}/aug"], "sigma"),
    ("samples-zero", ["saliency", "{model}", "{image}", "--out", "{tmp}/s", "--samples", "0"], "--samples"),
]


def assert_one_line_error(result, *words):
    """Exit 2, one line on stderr that starts with "error:" and names ``words``, no traceback."""
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("args, words", [case[1:] for case in ARGUMENTS], ids=[case[0] for case in ARGUMENTS])
def test_bad_argument_is_one_line_and_exit_2(files, args, words):
    assert_one_line_error(CliRunner().invoke(cli.main, _args(files, args)), words)
