"""Data in and out: ``images`` (reading, image sets, resizing), ``preprocess`` (presets),
``labels`` (class names), ``tags`` (a model's data metadata), ``files`` (atomic outputs),
``synth`` (the Shapes world), ``broden`` and ``label_store`` (concept datasets).

>>> from engine.data import images, synth
"""
__all__ = ["broden", "files", "images", "label_store", "labels", "preprocess", "synth", "tags"]
