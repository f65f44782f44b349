"""onnxlens engine: explain and inspect ONNX CNNs on ONNX Runtime, and augment images fast."""
from engine.api import Model
from engine.errors import OnnxlensError

__all__ = ["Model", "OnnxlensError"]
__version__ = "0.1.0"  # read by pyproject.toml and `onnxlens --version`
