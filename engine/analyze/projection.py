"""2-D projections of embeddings: PCA and t-SNE (scikit-learn)."""
import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from engine.analyze.embeddings import finite
from engine.errors import UsageError

METHODS = ("tsne", "pca")
NAMES = {"tsne": "t-SNE", "pca": "PCA"}


def project(features, method="tsne", seed=0, perplexity=30.0, threads=None):
    """N×2 float32 coordinates of the rows of ``features``.

    t-SNE uses a PCA initialisation and ``perplexity`` (lowered to fit small sets). ``threads``
    caps the OpenMP/BLAS threads (None: the libraries' default). Rows with NaN or infinite values
    are refused (DatasetError), not dropped.

    >>> project(np.random.default_rng(0).normal(size=(10, 5)), method="pca").shape
    (10, 2)
    """
    with threadpool_limits(threads):
        return _project(finite(features, f"a {NAMES.get(method, method)} projection"), method, seed, perplexity)


def _project(x, method, seed, perplexity):
    if len(x) < 3:
        raise UsageError(f"a projection needs at least 3 images, got {len(x)}")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x).astype(np.float32)
    if method == "tsne":
        perplexity = min(float(perplexity), (len(x) - 1) / 3)
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return tsne.fit_transform(x).astype(np.float32)
    raise UsageError(f"unknown method '{method}': use {' or '.join(METHODS)}")
