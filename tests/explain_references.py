"""Independent numpy references for the CAM family, written as loops straight from the papers.

Each takes activations ``a`` and gradients ``g`` (N×K×h×w) and returns raw maps N×h×w.
"""
import numpy as np


def relu_sum(weights, a):
    n, k, h, w = a.shape
    out = np.zeros((n, h, w))
    for i in range(n):
        for c in range(k):
            out[i] += weights[i][c] * a[i, c].astype(np.float64)
    return np.maximum(out, 0)


def gradcam(a, g):
    # Selvaraju et al. eq. 1-2: alpha_k = 1/Z sum_ij dy/dA_ij
    n, k, h, w = a.shape
    return relu_sum([[g[i, c].astype(np.float64).sum() / (h * w) for c in range(k)] for i in range(n)], a)


def gradcampp(a, g):
    # Chattopadhyay et al. eq. 19 (exponential score): alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)
    n, k, h, w = a.shape
    weights = np.zeros((n, k))
    for i in range(n):
        for c in range(k):
            s = float(a[i, c].astype(np.float64).sum())
            for y in range(h):
                for x in range(w):
                    gij = float(g[i, c, y, x])
                    den = 2 * gij ** 2 + s * gij ** 3
                    if gij != 0 and den != 0:
                        weights[i, c] += gij ** 2 / den * max(gij, 0)
    return relu_sum(weights, a)


def xgradcam(a, g):
    # Fu et al. eq. 11: w_k = sum_ij (A_ij / sum_ab A_ab) dy/dA_ij
    n, k = a.shape[:2]
    a64, g64 = a.astype(np.float64), g.astype(np.float64)
    return relu_sum([[(a64[i, c] / (a64[i, c].sum() + 1e-7) * g64[i, c]).sum() for c in range(k)]
                     for i in range(n)], a)


def elementwise(a, g, positive):
    # LayerCAM (positive=True, Jiang et al. eq. 5) and HiResCAM (Draelos & Carin eq. 4)
    n, k, h, w = a.shape
    out = np.zeros((n, h, w))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                gk = g[i, :, y, x].astype(np.float64)
                gk = np.maximum(gk, 0) if positive else gk
                out[i, y, x] = max((gk * a[i, :, y, x]).sum(), 0)
    return out


def layercam(a, g):
    return elementwise(a, g, True)


def hirescam(a, g):
    return elementwise(a, g, False)


def projection(acts):
    # pytorch-grad-cam's get_2d_projection, one image at a time, full SVD; then the sign that an
    # SVD leaves arbitrary is chosen so that the map correlates positively with the channel sum
    out = []
    for act in acts.astype(np.float64):
        m = act.reshape(act.shape[0], -1).T
        m = m - m.mean(axis=0)
        vt = np.linalg.svd(m, full_matrices=True)[2]
        p = m @ vt[0]
        total = act.sum(axis=0).ravel()
        if np.dot(p, total - total.mean()) < 0:
            p = -p
        out.append(p.reshape(act.shape[1:]))
    return np.array(out)


GRADIENT_REFERENCES = {"gradcam": gradcam, "gradcam++": gradcampp, "xgradcam": xgradcam,
                       "layercam": layercam, "hirescam": hirescam}
