"""Layers by torch module path: dynamo name scopes and TorchScript node names, on real exports
(tests/fixtures/inputs, made by models/make_inputs_fixtures.py; references from torch forward hooks)."""
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import cli
from engine import Model
from engine.errors import LayerError
from engine.explain import cam
from engine.graph.modules import module_paths, resolve
from tests.gradcheck import assert_slopes_match
from tests.tiny_models import classifier, save

FIXTURES = Path(__file__).parent / "fixtures" / "inputs"
REFERENCE = np.load(FIXTURES / "modules.npz")
MODULES = sorted(k.removeprefix("act_") for k in REFERENCE.files if k.startswith("act_"))
EXPORTS = ["modules_ts.onnx", "modules_dynamo.onnx"]


@pytest.mark.parametrize("export", EXPORTS)
def test_a_module_picks_its_last_4d_output(export):
    model = Model(FIXTURES / export, threads=1)
    names = {module: model.layer(module).name for module in MODULES}
    result = model.run(REFERENCE["input"], activations=sorted(set(names.values())))
    np.testing.assert_allclose(result.outputs[0], REFERENCE["logits"], rtol=1e-4, atol=1e-5)
    for module, name in names.items():  # the output of the module's last call, as torch's hook saw it
        np.testing.assert_allclose(result.activations[name], REFERENCE[f"act_{module}"], rtol=1e-4, atol=1e-5,
                                   err_msg=module)
        assert model.modules[name] == module or model.modules[name].startswith(module + ".")


def test_both_exporters_record_the_same_modules():
    ts, dynamo = (Model(FIXTURES / export) for export in EXPORTS)
    assert ts.modules[ts.layer("layer1").name] == dynamo.modules[dynamo.layer("layer1").name] == "layer1.1.relu"
    # TorchScript names the second call of a module `relu_1`: it is still module `relu`
    assert ts.layer("layer1").name == "/layer1/layer1.1/relu_1/Relu_output_0"


def test_exact_tensor_names_win_and_bad_names_get_close_matches():
    model = Model(FIXTURES / "modules_dynamo.onnx")
    assert model.layer("relu_2").name == "relu_2"  # a tensor name, though no module is called so
    with pytest.raises(LayerError, match=r"'1\.relu' ends several module paths .*layer1\.1\.relu, layer2\.1\.relu"):
        model.layer("1.relu")
    with pytest.raises(LayerError, match="no layer named 'layer3'.*did you mean .*layer[12]"):
        model.layer("layer3")
    assert model.layer("0.bn1").name == model.layer("layer1.0.bn1").name  # a unique ending


def test_tensor_named_like_a_module(tmp_path):
    """A graph whose tensor 'layer1' is not the module layer1's last output: the tensor wins."""
    proto = classifier(shape=("N", 3, 8, 8))
    names = {"conv1": "/layer1/conv/Conv", "relu1": "/layer1/relu/Relu", "pool1": "/pool/MaxPool"}
    for node in proto.graph.node:
        node.name = names.get(node.output[0], node.name)
    paths = module_paths(proto)
    assert paths == {"conv1": "layer1.conv", "relu1": "layer1.relu", "pool1": "pool"}
    assert resolve("layer1", paths) == ("layer1", []) and resolve("relu", paths) == ("layer1.relu", [])
    model = Model(save(proto, tmp_path / "m.onnx"))
    assert model.layer("layer1").name == "relu1" and model.layer("relu").name == "relu1"
    for node in proto.graph.node:  # now a tensor is called layer1 too
        node.output[:] = ["layer1" if o == "conv1" else o for o in node.output]
        node.input[:] = ["layer1" if i == "conv1" else i for i in node.input]
    assert Model(save(proto, tmp_path / "n.onnx")).layer("layer1").name == "layer1"


def test_gradients_at_a_module_against_float64_differences():
    model = Model(FIXTURES / "modules_ts.onnx", threads=1)
    tap = model.layer("layer1").name
    rng = np.random.default_rng(5)
    x = REFERENCE["input"]
    seed = rng.standard_normal(REFERENCE["logits"].shape)
    got = model.run(x, gradients=[tap, "input"], seed=seed).gradients
    reference = onnx.load(str(FIXTURES / "modules_ts.onnx"))
    for name in (tap, "image"):
        assert_slopes_match(got[tap if name == tap else "input"].astype(np.float64), reference, "logits",
                            x.astype(np.float64), seed, name, rng, rounds=2, rtol=2e-3)


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.mark.parametrize("export", EXPORTS)
def test_cli_layer_by_module_and_inspect_column(export, tmp_path):
    path = FIXTURES / export
    images, pixels = [tmp_path / "a.png", tmp_path / "b.png"], []  # two: the dynamo export has a batch of 2
    for i, image in enumerate(images):
        pixels.append(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8))
        cv2.imwrite(str(image), pixels[-1][..., ::-1])
    result = invoke("cam", path, *images, "--layer", "layer1", "--out", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    model = Model(path)
    tensor = model.layer("layer1").name
    assert json.loads(result.stdout)[0]["layers"] == [tensor]
    want = cam(model, pixels, layer=tensor).maps
    np.testing.assert_allclose(np.load(tmp_path / "out" / "cams.npz")["maps"], want, atol=1e-5)
    info = json.loads(invoke("inspect", path, "--json").stdout)
    modules = {layer["name"]: layer["module"] for layer in info["layers"]}
    assert modules[tensor] == "layer1.1.relu" and modules[model.layer("layer2").name] == "layer2.1.relu"
    table = invoke("inspect", path, "--layer", "layer2.1.conv2").output
    assert "module" in table and "layer2.1.conv2" in table and "layer1.1.relu" not in table
    bad = invoke("cam", path, *images, "--layer", "1.relu", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "several module paths" in bad.output


def test_files_without_modules_show_no_column(tmp_path):
    path = save(classifier(), tmp_path / "plain.onnx")
    assert Model(path).modules == {}
    header = next(line for line in invoke("inspect", path).output.splitlines() if line.startswith("  layer"))
    assert header.split()[:3] == ["layer", "op", "shape"]


def test_classviz_channel_of_a_module():
    from engine.explain import class_visualization

    model = Model(FIXTURES / "modules_ts.onnx", threads=1)
    viz = class_visualization(model, layer="layer2", channel=1, steps=8, jitter=0, blur_every=0, rng=0)
    assert viz.image.shape[:2] == (16, 16) and viz.scores[-1] > viz.scores[0]
