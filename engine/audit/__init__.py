"""The audit report and the comparison of two model variants.

``audit(model, choose(synth=200), "audit-out")`` writes ``audit-out/index.html`` (see
:func:`engine.audit.report.audit`); ``compare(model_a, model_b, images)`` compares two variants.

>>> from engine.audit import Options, choose
>>> len(choose(synth=8)), Options(gallery=2).gallery
(8, 2)
"""
from engine.audit.compare import Comparison, compare
from engine.audit.inputs import ImageSet, choose, from_folder, from_synth
from engine.audit.report import Timing, audit
from engine.audit.sections import NotApplicable, Options

__all__ = ["Comparison", "ImageSet", "NotApplicable", "Options", "Timing", "audit", "choose", "compare",
           "from_folder", "from_synth"]
