"""The demo: the audit plus its int8 comparison section, on the untrained twin of the default model
(same architecture) so that the test does not wait for training."""
import html
import json
from pathlib import Path

import onnx

from engine.audit import Options
from engine.audit.demo import demo

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_demo_audits_and_compares_with_int8(tmp_path):
    options = Options(gallery=2, cam_methods=("gradcam",), saliency_methods=("vanilla",), faithfulness=4,
                      faithfulness_steps=2, classes=1,
                      classviz_steps=2, embed=12, queries=1, neighbours=3, dissect=12, channels=1, patches=2)
    path, timings = demo(tmp_path / "demo", n=12, calibration=16, model=MODELS / "shapes-resnet-random.onnx",
                         provider="CPUExecutionProvider", options=options)
    assert path == tmp_path / "demo" / "index.html"
    assert timings[-1].title == "Comparison with int8 (QDQ)" and timings[-1].status == "ok"
    int8 = onnx.load(str(tmp_path / "demo" / "shapes-resnet-random-int8.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in int8.graph.node}
    assert {p.key for p in int8.metadata_props} >= {"labels", "preprocess"}
    summary = json.loads((tmp_path / "demo" / "compare" / "compare.json").read_text())
    assert summary["images"] == 12 and 0 <= summary["top1_agreement"] <= 1
    page = path.read_text()
    assert html.escape("Comparison with int8 (QDQ)") in page and "cam_agreement" in page
