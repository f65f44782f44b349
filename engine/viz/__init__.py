"""Pictures and reports: ``overlay`` (heatmaps over images), ``grid``, ``title``, ``scatter``
(OpenCV), ``plots`` (matplotlib) and ``report`` (self-contained HTML).

>>> from engine.viz import overlay, report
"""
__all__ = ["grid", "overlay", "plots", "report", "scatter", "title"]
