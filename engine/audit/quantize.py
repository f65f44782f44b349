"""Static int8 quantization (QDQ) of a float model with ONNX Runtime, calibrated on images.

>>> quantize_int8("model.onnx", "model-int8.onnx", images)
PosixPath('model-int8.onnx')
"""
import logging
from pathlib import Path

from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from engine.api import Model
from engine.data.files import atomic_path, disk_errors
from engine.errors import UsageError


class _Batches(CalibrationDataReader):
    def __init__(self, model, images, batch):
        self.feeds = iter({model.input.name: x, **model.extra_feeds(len(x))}
                          for x in (model.preprocess(images[s:s + batch]) for s in range(0, len(images), batch)))

    def get_next(self):
        return next(self.feeds, None)


def quantize_int8(src, dst, images, batch=16):
    """Write ``dst``: ``src`` with int8 weights and uint8 activations as QuantizeLinear /
    DequantizeLinear pairs, activation ranges calibrated (min-max) on ``images`` (uint8 RGB).
    Metadata (labels, preprocessing) is kept. Returns ``dst``.

    >>> int8 = Model(quantize_int8("model.onnx", "model-int8.onnx", images))
    >>> [p.top[0].label for p in int8.predict(images)] == [p.top[0].label for p in model.predict(images)]
    True
    """
    images = list(images)
    if not images:
        raise UsageError("quantization needs calibration images")
    model = Model(src)
    root = logging.getLogger()  # the quantizer logs advice (pre-processing, bias layout) as warnings
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with disk_errors(dst), atomic_path(Path(dst)) as path:
            quantize_static(str(src), str(path), _Batches(model, images, batch), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return Path(dst)
