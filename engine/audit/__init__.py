"""The audit report and the comparison of two model variants.

>>> from engine.audit import audit, compare, choose
>>> audit(Model("models/shapes-resnet.onnx"), choose(synth=200), "audit-out")
"""
from engine.audit.compare import Comparison, compare
from engine.audit.inputs import ImageSet, choose, from_folder, from_synth
from engine.audit.report import Timing, audit
from engine.audit.sections import NotApplicable, Options

__all__ = ["Comparison", "ImageSet", "NotApplicable", "Options", "Timing", "audit", "choose", "compare",
           "from_folder", "from_synth"]
