"""Docstring examples run as tests (`pytest --doctest-modules engine`, part of `make test`).

Each example runs in its own empty temporary folder (so nothing it writes lands in the working
directory) that holds the files the examples name:

- ``model.onnx``: the shipped shapes-resnet classifier (input ``image`` N×3×H×W, output ``logits``);
- ``cat.png``, ``dog.png``: 96×96 scenes from the synthetic shapes world;

and with these names bound: ``np``, ``onnx``, ``cv2``, ``Model``, ``model`` (``Model("model.onnx")``),
``images`` (4×96×96×3 uint8 RGB scenes). The rewritten-model cache lives in a temporary folder.
"""
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

_MODEL = Path(__file__).resolve().parent.parent / "models" / "shapes-resnet.onnx"


@pytest.fixture(scope="session")
def _scenes():
    from engine.data.synth import generate

    return generate(4, seed=0).images


@pytest.fixture(scope="session", autouse=True)
def _doctest_names(doctest_namespace, tmp_path_factory, _scenes):
    from engine.api import Model

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONNXLENS_CACHE", str(tmp_path_factory.mktemp("onnxlens-cache")))
        doctest_namespace.update(np=np, onnx=onnx, cv2=cv2, Model=Model,
                                 model=Model(str(_MODEL)), images=_scenes.copy())
        yield


@pytest.fixture(autouse=True)
def _doctest_folder(tmp_path, monkeypatch, _scenes):
    shutil.copyfile(_MODEL, tmp_path / "model.onnx")
    for name, image in zip(("cat.png", "dog.png"), _scenes):
        cv2.imwrite(str(tmp_path / name), image[..., ::-1])
    monkeypatch.chdir(tmp_path)
