"""Model behaviour and activation analysis over image sets: one module per analysis.

``dissection`` (Network Dissection), ``embeddings``, ``neighbors`` (retrieval, kNN purity),
``projection`` (PCA, t-SNE), ``filters`` (filter and activation pictures), ``patches`` (maximally
activating patches), ``robustness`` (under augmentation), ``regions`` (top-region IoU of two maps),
``sources`` (the image sets they stream). Modules are imported on use (scikit-learn is slow to load).

>>> from engine.analyze import embeddings, projection
"""
__all__ = ["dissection", "embeddings", "filters", "neighbors", "patches", "projection", "regions",
           "robustness", "sources"]
