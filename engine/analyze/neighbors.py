"""Nearest-neighbour retrieval over embeddings (scikit-learn) and kNN label purity."""
import cv2
import numpy as np
from sklearn.neighbors import NearestNeighbors

from engine.analyze.embeddings import finite, pooled
from engine.analyze.sources import read_named
from engine.errors import UsageError
from engine.viz.grid import grid

METRICS = ("cosine", "l2")


def _index(features, k, metric):
    if metric not in METRICS:
        raise UsageError(f"unknown metric '{metric}': use cosine or l2")
    if not 1 <= k < len(features) + 1:
        raise UsageError(f"k must lie between 1 and the number of images ({len(features)}), got {k}")
    name = "euclidean" if metric == "l2" else "cosine"
    return NearestNeighbors(n_neighbors=k, metric=name, algorithm="brute").fit(finite(features, "a neighbour search"))


def nearest(features, queries, k=8, metric="cosine"):
    """Distances and indices (Q×k each, nearest first) of the ``k`` neighbours of each query row.

    >>> dist, idx = nearest(np.array([[1, 0], [0.9, 0.1], [0, 1]]), [[1, 0.05]], k=2)
    >>> idx.tolist()
    [[0, 1]]
    """
    index = _index(features, k, metric)
    rows = np.asarray(queries, np.float32).reshape(-1, features.shape[1])
    return index.kneighbors(finite(rows, "a neighbour search"))


def purity(features, labels, k=8, metric="cosine"):
    """Mean fraction of each image's ``k`` nearest other images that share its label.

    >>> purity(np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]]), ["a", "a", "b", "b"], k=1)
    1.0
    """
    labels = np.asarray(labels, object)
    if any(label is None for label in labels):
        raise UsageError("kNN purity needs a label for every image")
    if k >= len(labels):
        raise UsageError(f"kNN purity with k={k} needs more than {k} images, got {len(labels)}")
    _, idx = _index(features, k, metric).kneighbors()  # each point's k nearest, itself excluded
    return float((labels[idx] == labels[:, None]).mean())


def neighbor_sheet(model, emb, queries, k=8, metric="cosine", thumb=72):
    """A grid PNG array: per query image (a path or ``synth:SEED:INDEX``) a row with the query
    and its ``k`` nearest images of the embedding ``emb`` (from :func:`load_embedding`; ``model``
    is the Model that made it), captioned with label and distance.

    >>> from engine.analyze.embeddings import embed, load_embedding
    >>> from engine.analyze.sources import from_synth
    >>> _ = embed(model, from_synth(8), out="emb", progress=False)
    >>> neighbor_sheet(model, load_embedding("emb"), ["synth:9:0"], k=2).shape[2]
    3
    """
    pictures = [read_named(q) for q in queries]
    rows = pooled(model.run(model.preprocess(pictures), activations=[emb.layer]).activations[emb.layer])
    dist, idx = nearest(emb.features, rows, k=k, metric=metric)
    cells, captions = [], []
    small = lambda image: cv2.resize(image, (thumb, thumb), interpolation=cv2.INTER_AREA)  # noqa: E731
    for query, picture, d_row, i_row in zip(queries, pictures, dist, idx):
        cells.append(small(picture))
        captions.append("query")
        for d, i in zip(d_row, i_row):
            cells.append(small(read_named(emb.names[i])))
            captions.append(f"{emb.labels[i] or ''} {d:.2f}".strip())
    return grid(cells, ncols=k + 1, labels=captions)
