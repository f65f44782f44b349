"""ONNX Runtime: ``session`` (providers, threads), ``rewrite`` and ``cache`` (rewritten models
built once and cached on disk), ``batch`` (the batch a model takes), ``feeds`` (extra inputs).

>>> from engine.runtime import rewrite, session
"""
__all__ = ["batch", "cache", "feeds", "rewrite", "session"]
