"""Pure ONNX → ONNX functions (onnx and numpy only; never a session): ``load``, ``normalize``
(with ``weightless`` and ``half`` / ``quantized`` for float16 and int8 files), ``shapes``,
``taps``, ``autodiff`` (with its ``rules``), ``cone`` and ``coverage`` (which layers gradients
reach), ``receptive`` fields, ``pixels`` (uint8 inputs), ``modules`` (torch module scopes).

>>> from engine.graph import normalize, taps
"""
__all__ = ["autodiff", "cone", "coverage", "half", "load", "modules", "normalize", "pixels", "quantized",
           "receptive", "rules", "shapes", "taps", "weightless"]
