"""Gradient coverage, receptive fields and the default layer, through the API and `onnxlens inspect`."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import cli
from engine import Model
from engine.errors import UnsupportedOpError


def blocked_classifier():
    """conv1 → relu1 → Hardmax (no gradient rule) → conv2 (stride 2) → relu2 → GAP → Gemm."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(dims).astype(np.float32), name)
             for name, dims in [("w1", (4, 3, 3, 3)), ("w2", (4, 4, 3, 3)), ("fc", (2, 4))]]
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["conv1"], pads=[1] * 4),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("Hardmax", ["relu1"], ["hard"], axis=1),
        helper.make_node("Conv", ["hard", "w2"], ["conv2"], pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("GlobalAveragePool", ["relu2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(nodes, "blocked", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "blocked.onnx"
    onnx.save(blocked_classifier(), str(path))
    return path


def test_layer_details_coverage_fields_default(path):
    details = {d["name"]: d for d in Model(path, threads=1).layer_details()}
    assert [n for n, d in details.items() if d["gradients"] is True] == ["hard", "conv2", "relu2", "gap"]
    assert "Hardmax" in details["relu1"]["gradients"] and "Hardmax" in details["conv1"]["gradients"]
    # 3×3 conv: field 3, stride 1; then a 3×3 stride-2 conv: field 3 + 2 = 5, stride 2; GAP sees everything
    assert (details["relu1"]["field"], details["relu1"]["stride"]) == ([3, 3], [1, 1])
    assert (details["relu2"]["field"], details["relu2"]["stride"]) == ([5, 5], [2, 2])
    assert details["gap"]["field"] is None
    assert [n for n, d in details.items() if d["default"]] == ["relu2"]


def test_run_names_the_op_without_a_rule(path):
    model = Model(path, threads=1)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert model.run(x, gradients=["relu2"], seed=np.ones((2, 2), np.float32)).gradients["relu2"].shape == (2, 4, 4, 4)
    with pytest.raises(UnsupportedOpError, match="Hardmax"):
        model.run(x, gradients=["relu1"], seed=np.ones((2, 2), np.float32))


def test_inspect_table_and_json(path):
    table = CliRunner().invoke(cli.main, ["inspect", str(path)])
    assert table.exit_code == 0, table.output
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in table.output.splitlines()
            if line.strip()}
    assert rows["relu2"].startswith("* relu2") and "yes" in rows["relu2"] and "5×5" in rows["relu2"]
    assert "no: Hardmax" in rows["conv1"] and "all" in rows["gap"]
    info = json.loads(CliRunner().invoke(cli.main, ["inspect", str(path), "--json", "--layer", "conv2"]).stdout)
    assert info["layers"] == [{"name": "conv2", "module": None, "op": "Conv", "shape": ["N", 4, 4, 4], "gradients": True,
                               "field": [5, 5], "stride": [2, 2], "default": False}]
