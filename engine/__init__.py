"""onnxlens engine: explain and inspect ONNX CNNs on ONNX Runtime, and augment images fast."""
from engine.errors import OnnxlensError

__all__ = ["OnnxlensError"]
__version__ = "0.1.0"
