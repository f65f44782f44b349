"""The CAM family as small functions over one capture of activations ``A`` and gradients ``G``.

``A`` and ``G`` are N×K×h×w arrays taken at one layer (``G`` = ∂(Σ seed·output)/∂A, one seed row
per image). Every method returns the raw map N×h×w *after* the final ReLU, before any
normalization or resize, exactly as pytorch-grad-cam's ``BaseCAM`` builds it: channel weights ×
activations, summed over channels (or, with ``eigen_smooth``, projected on their first principal
component).

>>> maps = METHODS["gradcam"](A, G)
"""
import numpy as np

EPS = 1e-7


def combine(weighted, eigen_smooth=False):
    """ReLU of the channel sum of weighted activations N×K×h×w, or of their first principal component.

    >>> combine(w[:, :, None, None] * A)
    """
    cam = projection(weighted) if eigen_smooth else weighted.sum(axis=1)
    return np.maximum(cam, 0).astype(np.float32)


def projection(activations):
    """Projection of each image's h·w×K activation matrix (centred) on its first right singular vector.

    As pytorch-grad-cam's ``get_2d_projection`` (Eigen-CAM), except for the sign, which an SVD
    leaves arbitrary: each map is oriented to correlate positively with the channel sum of
    ``activations`` (so Eigen-CAM highlights where the layer fires, and eigen-smoothing keeps the
    plain CAM's sign) instead of inheriting LAPACK's choice.

    >>> projection(A).shape   # N×h×w
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


def gradcam(A, G, eigen_smooth=False):
    """Grad-CAM (Selvaraju et al. 2017): α_k = spatial mean of G_k; ReLU(Σ_k α_k A_k).

    >>> gradcam(A, G).shape      # N×h×w
    """
    A, G = _f64(A, G)
    return combine(G.mean(axis=(2, 3))[:, :, None, None] * A, eigen_smooth)


def gradcam_plus_plus(A, G, eigen_smooth=False):
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19, the closed form for an exponential score).

    α_ij = g² / (2g² + Σ_ab A_ab · g³), zero where g = 0; w_k = Σ_ij α_ij ReLU(g_ij). The per-image
    factor exp(S_c) of the paper's ∂Y/∂A is left out, as in pytorch-grad-cam (it cancels in the
    normalized map); unlike pytorch-grad-cam no ε is added to the denominator, which would
    dominate it for the small gradients of real networks (g² ≪ 1e-6).

    >>> gradcam_plus_plus(A, G, eigen_smooth=True)
    """
    A, G = _f64(A, G)
    g2 = G ** 2
    denom = 2 * g2 + A.sum(axis=(2, 3), keepdims=True) * g2 * G
    alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=(G != 0) & (denom != 0))
    weights = (np.maximum(G, 0) * alpha).sum(axis=(2, 3))
    return combine(weights[:, :, None, None] * A, eigen_smooth)


def xgradcam(A, G, eigen_smooth=False):
    """XGrad-CAM (Fu et al. 2020): w_k = Σ_ij (A_ij / Σ_ab A_ab) · g_ij.

    >>> xgradcam(A, G)
    """
    A, G = _f64(A, G)
    total = A.sum(axis=(2, 3), keepdims=True)
    weights = (G * A / (total + EPS)).sum(axis=(2, 3))
    return combine(weights[:, :, None, None] * A, eigen_smooth)


def layercam(A, G, eigen_smooth=False):
    """LayerCAM (Jiang et al. 2021): ReLU(Σ_k ReLU(g_k) ⊙ A_k), element-wise weights.

    >>> layercam(A, G)
    """
    A, G = _f64(A, G)
    return combine(np.maximum(G, 0) * A, eigen_smooth)


def hirescam(A, G, eigen_smooth=False):
    """HiResCAM (Draelos & Carin 2020): ReLU(Σ_k g_k ⊙ A_k), element-wise weights.

    >>> hirescam(A, G)
    """
    A, G = _f64(A, G)
    return combine(G * A, eigen_smooth)


def eigencam(A):
    """Eigen-CAM (Muhammad & Yeasin 2020): ReLU of the first principal component of A; no gradient.

    >>> eigencam(A)
    """
    return np.maximum(projection(A), 0)


def fc_cam(A, fc_weights, eigen_smooth=False):
    """CAM (Zhou et al. 2016): ReLU(Σ_k w_k^c A_k), ``fc_weights`` N×K = the FC row of each image's class.

    With a GAP → FC head this is h·w × Grad-CAM at the last layer.

    >>> layer, weights = fc_head(model); fc_cam(A, weights[labels])
    """
    A, fc_weights = _f64(A, fc_weights)
    return combine(fc_weights[:, :, None, None] * A, eigen_smooth)


def _f64(*arrays):
    """Sums of products cancel: every method accumulates in float64 and returns float32."""
    return [np.asarray(a, np.float64) for a in arrays]


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


def scorecam(A, x, scores, seeds, batch=32, layout="NCHW", eigen_smooth=False):
    """Score-CAM (Wang et al. 2020), forward-only and batched.

    Each channel, upsampled to the input and min-max scaled to [0,1], masks the input;
    w = softmax over channels of the masked inputs' target scores; map = ReLU(Σ w_k A_k).
    The paper's baseline score f(X_b) is a constant per image and cancels in the softmax.
    ``scores(x_batch)`` returns the seeded output for a batch of inputs.

    >>> scorecam(A, x, lambda xb: model.predict(xb)[0], seeds)
    """
    n, k = A.shape[:2]
    spatial = x.shape[2:] if layout == "NCHW" else x.shape[1:3]
    weights = np.empty((n, k))
    for i in range(n):
        up = upsample(A[i:i + 1], spatial)[0]
        flat = up.reshape(k, -1)
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        masks = (up - lo[:, None, None]) / (hi - lo + 1e-8)[:, None, None]
        masks = masks[:, None] if layout == "NCHW" else masks[..., None]
        for start in range(0, k, batch):
            chunk = x[i:i + 1] * masks[start:start + batch]
            out = scores(chunk.astype(np.float32))
            weights[i, start:start + batch] = target_score(out, seeds[i:i + 1])
    weights = np.exp(weights - weights.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return combine(weights[:, :, None, None] * A, eigen_smooth)


def ablationcam(A, head, seeds, batch=32, eigen_smooth=False):
    """Ablation-CAM (Desai & Ramaswamy 2020), forward-only and batched.

    w_k = (y_c − y_c^k) / y_c where y_c^k is the target score with channel k of A set to zero;
    ``head(A_batch)`` runs the network from the layer to the seeded output.

    >>> ablationcam(A, head, seeds)
    """
    n, k = A.shape[:2]
    weights = np.empty((n, k))
    for i in range(n):
        y = target_score(head(A[i:i + 1]), seeds[i:i + 1])[0]
        for start in range(0, k, batch):
            idx = np.arange(start, min(start + batch, k))
            ablated = np.repeat(A[i:i + 1], len(idx), axis=0)
            ablated[np.arange(len(idx)), idx] = 0
            weights[i, idx] = (y - target_score(head(ablated), seeds[i:i + 1])) / (y + EPS)
    return combine(weights[:, :, None, None] * A, eigen_smooth)


def guided_gradcam(cam_maps, guided_gradients, layout="NCHW"):
    """Guided Grad-CAM: guided-backprop input gradient ⊙ the Grad-CAM map upsampled to the input.

    ``cam_maps`` N×H×W at the input's resolution; returns N×C×H×W (or N×H×W×C for NHWC).

    >>> guided_gradcam(resize_maps(to_unit(gradcam(A, G)), (64, 64)), guided)
    """
    m = cam_maps[:, None] if layout == "NCHW" else cam_maps[..., None]
    return (guided_gradients * m).astype(np.float32)


GRADIENT_METHODS = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plus_plus,
    "xgradcam": xgradcam,
    "layercam": layercam,
    "hirescam": hirescam,
}
"""Methods computed from one capture of activations and gradients, each ``fn(A, G, eigen_smooth)``."""

METHODS = {**GRADIENT_METHODS, "eigencam": eigencam, "cam": fc_cam, "scorecam": scorecam,
           "ablationcam": ablationcam}
"""Every CAM method by its CLI name."""
