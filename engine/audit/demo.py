"""The demo (``make demo``): the audit of the shipped default model on generated images, with a
section comparing it to its static int8 quantization.

>>> path, timings = demo("demo-out")
"""
from pathlib import Path

from engine.api import Model
from engine.audit.compare import compare, report_blocks, write_comparison
from engine.audit.inputs import from_synth
from engine.audit.quantize import quantize_int8
from engine.audit.report import audit
from engine.errors import UsageError

MODELS = Path(__file__).resolve().parents[2] / "models"
DEFAULT_MODEL = MODELS / "shapes-resnet.onnx"
CALIBRATION_SEED = 101  # calibration images differ from the audited ones


def demo(out="demo-out", n=200, seed=0, calibration=64, model=DEFAULT_MODEL, provider="auto", options=None,
         log=None):
    """Audit ``model`` on ``n`` generated images and compare it with its int8 QDQ version (made in
    ``out``, calibrated on ``calibration`` other generated images); returns the report's path and
    the section timings.

    >>> path, timings = demo("demo-out", n=50)
    >>> path
    PosixPath('demo-out/index.html')
    """
    model = Path(model)
    if not model.exists():
        raise UsageError(f"{model} is missing: train it with models/train.py, or run the demo from a checkout")
    out = Path(out)
    float_model = Model(model, provider=provider)
    int8_path = quantize_int8(model, out / f"{model.stem}-int8.onnx", from_synth(calibration, CALIBRATION_SEED).images)
    int8_model = Model(int8_path, provider=provider)

    def comparison(ctx):
        result = compare(float_model, int8_model, ctx.data.images, names=ctx.data.names)
        write_comparison(result, ctx.data.images, out / "compare", float_model.labels)
        return report_blocks(result, ctx.data.images, float_model.labels)

    data = from_synth(n, seed)
    return audit(float_model, data, out, options, extra=[("Comparison with int8 (QDQ)", comparison)], log=log)
