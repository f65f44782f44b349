"""The CAM family as one table over one capture of activations ``A`` and gradients ``G``.

A method is a weight function registered with :func:`cam_method`, as pytorch-grad-cam's
``BaseCAM.get_cam_weights``: its parameter names say what it needs (``activations`` A, N×K×h×w,
always; any of :data:`INPUTS`), it returns channel weights N×K or element-wise weights N×K×h×w,
and the shared :meth:`CamMethod.__call__` builds the raw map N×h×w *after* the final ReLU, before
any normalization or resize: ReLU(Σ_k w_k A_k), or with ``eigen_smooth`` ReLU of the first
principal component of the weighted activations. A ``projects=True`` method returns the map
itself (Eigen-CAM). ``G`` = ∂(Σ seed·output)/∂A, one seed row per image; activations and
gradients reach the weight functions in float64 (sums of products cancel) and maps are float32.

>>> A, G = np.ones((1, 2, 3, 3)), np.full((1, 2, 3, 3), 0.5)
>>> float(METHODS["gradcam"](A, G)[0, 0, 0]), METHODS["gradcam"].needs
(1.0, ('activations', 'gradients'))
"""
from dataclasses import dataclass

import numpy as np

from engine.explain.table import Method, register

EPS = 1e-7

INPUTS = {
    "gradients": "G = ∂(Σ seed·output)/∂A, N×K×h×w",
    "fc_weights": "the FC row of each image's class, N×K (the layer is then the pooled one)",
    "x": "the model inputs, N×… in the model's layout",
    "seeds": "the seed rows, N×… batch first",
    "scores": "scores(inputs) → the explained output, batch first (forward only)",
    "head": "head(A) → the explained output: the network after the layer",
    "layout": "the inputs' layout, NCHW or NHWC",
}
"""What a weight function may name besides ``activations``; the explainers make each on demand."""


@dataclass(frozen=True)
class CamMethod(Method):
    """A CAM method: ``fn`` gives weights (or, ``projects=True``, the map); calling the entry
    with activations and the inputs ``fn`` names gives the raw maps.

    >>> float(METHODS["hirescam"](np.ones((1, 2, 3, 3)), -np.ones((1, 2, 3, 3))).max())   # ReLU
    0.0
    """

    projects: bool = False

    def __call__(self, activations, *args, eigen_smooth=False, **inputs):
        a = np.asarray(activations, np.float64)
        if args:  # inputs given by position: by name from here on
            inputs = dict(list(self.signature.bind(a, *args, **inputs).arguments.items())[1:])
        if "gradients" in inputs:
            inputs["gradients"] = np.asarray(inputs["gradients"], np.float64)
        out = self.fn(a, **inputs)
        if self.projects:
            return np.maximum(out, 0).astype(np.float32)
        return combine(out, a, eigen_smooth)

    @property
    def needs_gradients_only(self):
        """True when activations and gradients are all it needs (the top-1 fast path applies)."""
        return set(self.needs) == {"activations", "gradients"}


METHODS = {}
"""Every CAM method by its CLI name."""

cam_method = register(METHODS, tuple(INPUTS), CamMethod, skip=("activations",))
"""``@cam_method(name)`` (``projects=True`` for a map function) adds a weight function to :data:`METHODS`."""


def combine(weights, activations, eigen_smooth=False):
    """ReLU of Σ_k w_k A_k over activations N×K×h×w (channel weights N×K, or element-wise ones
    N×K×h×w), or of the first principal component of the weighted activations w·A.

    >>> float(combine(np.ones((1, 2)), np.full((1, 2, 3, 3), -1.0)).max())
    0.0
    """
    if weights.ndim == 2 and not eigen_smooth:  # channel weights: no N×K×h×w temporary; einsum, not
        cam = np.einsum("nk,nkhw->nhw", weights, activations)  # matmul, whose BLAS threads spin on after it
    else:
        weighted = (weights[:, :, None, None] if weights.ndim == 2 else weights) * activations
        cam = projection(weighted) if eigen_smooth else weighted.sum(axis=1)
    return np.maximum(cam, 0, out=cam).astype(np.float32)


def projection(activations):
    """Projection of each image's h·w×K activation matrix (centred) on its first right singular vector.

    As pytorch-grad-cam's ``get_2d_projection`` (Eigen-CAM), except for the sign, which an SVD
    leaves arbitrary: each map is oriented to correlate positively with the channel sum of
    ``activations`` (so Eigen-CAM highlights where the layer fires, and eigen-smoothing keeps the
    plain CAM's sign) instead of inheriting LAPACK's choice.

    >>> projection(np.random.default_rng(0).random((2, 4, 3, 5))).shape   # N×h×w
    (2, 3, 5)
    """
    a = np.nan_to_num(np.asarray(activations, np.float64))
    n, k, h, w = a.shape
    m = a.reshape(n, k, h * w).transpose(0, 2, 1)
    m = m - m.mean(axis=1, keepdims=True)
    vt = np.linalg.svd(m, full_matrices=False)[2]
    p = np.einsum("npk,nk->np", m, vt[:, 0, :])
    total = a.sum(axis=1).reshape(n, h * w)
    p *= np.where(np.einsum("np,np->n", p, total - total.mean(axis=1, keepdims=True)) < 0, -1.0, 1.0)[:, None]
    return p.reshape(n, h, w).astype(np.float32)


@cam_method("cam")
def fc_cam(activations, fc_weights):
    """CAM (Zhou et al. 2016): w_k = the FC weight of the class (a GAP → FC head; = h·w × Grad-CAM)."""
    return np.asarray(fc_weights, np.float64)


@cam_method("gradcam")
def gradcam(activations, gradients):
    """Grad-CAM (Selvaraju et al. 2017): w_k = spatial mean of G_k."""
    n, k, h, w = gradients.shape
    return gradients.reshape(n, k, h * w).sum(axis=2) / (h * w)  # = mean(axis=(2, 3)), without its Python overhead


@cam_method("gradcam++")
def gradcam_plus_plus(activations, gradients):
    """Grad-CAM++ (Chattopadhyay et al. 2018): w_k = Σ_ij α_ij ReLU(g_ij), α from eq. 19.

    The closed form for an exponential score: α_ij = g² / (2g² + Σ_ab A_ab · g³), zero where g = 0.
    The per-image factor exp(S_c) of the paper's ∂Y/∂A is left out, as in pytorch-grad-cam (it
    cancels in the normalized map); unlike pytorch-grad-cam no ε is added to the denominator,
    which would dominate it for the small gradients of real networks (g² ≪ 1e-6).
    """
    g2 = gradients ** 2
    denom = 2 * g2 + activations.sum(axis=(2, 3), keepdims=True) * g2 * gradients
    alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=(gradients != 0) & (denom != 0))
    return (np.maximum(gradients, 0) * alpha).sum(axis=(2, 3))


@cam_method("xgradcam")
def xgradcam(activations, gradients):
    """XGrad-CAM (Fu et al. 2020): w_k = Σ_ij (A_ij / Σ_ab A_ab) · g_ij."""
    total = activations.sum(axis=(2, 3), keepdims=True)
    return (gradients * activations / (total + EPS)).sum(axis=(2, 3))


@cam_method("layercam")
def layercam(activations, gradients):
    """LayerCAM (Jiang et al. 2021): element-wise weights ReLU(g)."""
    return np.maximum(gradients, 0)


@cam_method("hirescam")
def hirescam(activations, gradients):
    """HiResCAM (Draelos & Carin 2020): element-wise weights g."""
    return gradients


@cam_method("eigencam", projects=True)
def eigencam(activations):
    """Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of A; no gradient."""
    return projection(activations)


def upsample(A, size):
    """Bilinear resize of N×K×h×w to N×K×H×W with aligned corners (torch ``UpsamplingBilinear2d``).

    >>> upsample(np.zeros((1, 4, 3, 3)), (96, 96)).shape
    (1, 4, 96, 96)
    """
    ry = _interp_matrix(A.shape[2], size[0])
    rx = _interp_matrix(A.shape[3], size[1])
    return np.matmul(np.matmul(ry, A), rx.T).astype(np.float32)  # a fifth of einsum's time at 8→96 px


def _interp_matrix(n_in, n_out):
    pos = np.linspace(0, n_in - 1, n_out) if n_out > 1 else np.zeros(1)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def target_score(outputs, seeds):
    """Σ seed·output per row: the score every method explains (a class logit, or a masked sum).

    >>> target_score(np.array([[1.0, 2.0]]), np.array([[0.0, 1.0]]))
    array([2.])
    """
    prod = np.asarray(outputs, np.float64) * seeds
    return prod.reshape(len(prod), -1).sum(axis=1)


@cam_method("scorecam")
def scorecam(activations, x, scores, seeds, batch=32, layout="NCHW"):
    """Score-CAM (Wang et al. 2020): w = softmax over channels of the scores of inputs masked by each channel.

    Forward only and batched. Each channel, upsampled to the input and min-max scaled to [0,1],
    masks the input; the paper's baseline score f(X_b) is a constant per image and cancels in the
    softmax. ``scores(x_batch)`` returns the seeded output for a batch of inputs.
    """
    n, k = activations.shape[:2]
    spatial = x.shape[2:] if layout == "NCHW" else x.shape[1:3]
    weights = np.empty((n, k))
    for i in range(n):
        up = upsample(activations[i:i + 1], spatial)[0]
        flat = up.reshape(k, -1)
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        masks = (up - lo[:, None, None]) / (hi - lo + 1e-8)[:, None, None]
        masks = masks[:, None] if layout == "NCHW" else masks[..., None]
        for start in range(0, k, batch):
            chunk = x[i:i + 1] * masks[start:start + batch]
            out = scores(chunk.astype(np.float32))
            weights[i, start:start + batch] = target_score(out, seeds[i:i + 1])
    weights = np.exp(weights - weights.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


@cam_method("ablationcam")
def ablationcam(activations, head, seeds, batch=32):
    """Ablation-CAM (Desai & Ramaswamy 2020): w_k = (y_c − y_c^k) / y_c, channel k of A set to zero.

    Forward only and batched; ``head(A_batch)`` runs the network from the layer to the seeded output.
    """
    n, k = activations.shape[:2]
    weights = np.empty((n, k))
    for i in range(n):
        y = target_score(head(activations[i:i + 1]), seeds[i:i + 1])[0]
        for start in range(0, k, batch):
            idx = np.arange(start, min(start + batch, k))
            ablated = np.repeat(activations[i:i + 1], len(idx), axis=0)
            ablated[np.arange(len(idx)), idx] = 0
            weights[i, idx] = (y - target_score(head(ablated), seeds[i:i + 1])) / (y + EPS)
    return weights


def guided_gradcam(cam_maps, guided_gradients, layout="NCHW"):
    """Guided Grad-CAM: guided-backprop input gradient ⊙ the Grad-CAM map upsampled to the input.

    ``cam_maps`` N×H×W at the input's resolution; returns N×C×H×W (or N×H×W×C for NHWC).

    >>> float(guided_gradcam(np.ones((1, 4, 4)), np.full((1, 3, 4, 4), 2.0)).sum())
    96.0
    """
    m = cam_maps[:, None] if layout == "NCHW" else cam_maps[..., None]
    return (guided_gradients * m).astype(np.float32)


GRADIENT_METHODS = {name: m for name, m in METHODS.items() if m.needs_gradients_only}
"""The methods computed from activations and gradients alone (the top-1 fast path's)."""
