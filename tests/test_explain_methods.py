"""CAM family (engine/explain/methods.py) against per-channel numpy loops written from the papers."""
import numpy as np
import pytest

from engine.explain import methods
from tests import explain_references as refs

RNG = np.random.default_rng(7)
N, K, H, W = 3, 8, 5, 6


def capture():
    a = np.maximum(RNG.normal(size=(N, K, H, W)), 0).astype(np.float32)  # post-ReLU: many zeros
    g = RNG.normal(size=(N, K, H, W)).astype(np.float32) * 0.1
    g[:, :, 0, 0] = 0  # exact zeros exercise Grad-CAM++'s g != 0 condition
    return a, g


@pytest.mark.parametrize("name", list(refs.GRADIENT_REFERENCES))
def test_gradient_methods_match_paper_formulas(name):
    a, g = capture()
    got = methods.GRADIENT_METHODS[name](a, g)
    assert got.shape == (N, H, W) and got.dtype == np.float32
    np.testing.assert_allclose(got, refs.GRADIENT_REFERENCES[name](a, g), rtol=2e-4, atol=1e-6)
    assert (got > 0).any()


def test_eigencam_is_the_first_principal_component_oriented_along_the_activations():
    a, _ = capture()
    proj = refs.projection(a)
    np.testing.assert_allclose(methods.eigencam(a), np.maximum(proj, 0), rtol=1e-4, atol=1e-5)
    # magnitude independently: |projection| = |scores on the top eigenvector of the covariance|
    for n in range(N):
        m = a[n].reshape(K, -1).T.astype(np.float64)
        m -= m.mean(axis=0)
        top = np.linalg.eigh(m.T @ m)[1][:, -1]
        np.testing.assert_allclose(np.abs(proj[n].ravel()), np.abs(m @ top), rtol=1e-6, atol=1e-8)
        total = a[n].sum(axis=0).ravel()
        assert np.dot(methods.projection(a)[n].ravel(), total - total.mean()) >= 0


def test_eigen_smooth_projects_weighted_activations():
    a, g = capture()
    weights = g.mean(axis=(2, 3))
    want = np.maximum(refs.projection(weights[:, :, None, None] * a), 0)
    np.testing.assert_allclose(methods.gradcam(a, g, eigen_smooth=True), want, rtol=1e-4, atol=1e-6)
    want = np.maximum(refs.projection(g * a), 0)
    np.testing.assert_allclose(methods.hirescam(a, g, eigen_smooth=True), want, rtol=1e-4, atol=1e-6)


def test_cam_equals_gradcam_times_hw_for_gap_fc_head():
    a, _ = capture()
    fc = RNG.normal(size=(4, K))
    classes = np.array([0, 3, 1])
    # logits = fc @ GAP(A): dy_c/dA_k(i,j) = fc[c, k] / (H W)
    g = np.broadcast_to(fc[classes][:, :, None, None] / (H * W), a.shape)
    np.testing.assert_allclose(methods.fc_cam(a, fc[classes]), H * W * methods.gradcam(a, g),
                               rtol=1e-4, atol=1e-5)


def ref_upsample_align_corners(img, out_h, out_w):
    h, w = img.shape
    out = np.zeros((out_h, out_w))
    for y in range(out_h):
        for x in range(out_w):
            sy, sx = y * (h - 1) / (out_h - 1), x * (w - 1) / (out_w - 1)
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = sy - y0, sx - x0
            out[y, x] = ((1 - fy) * (1 - fx) * img[y0, x0] + (1 - fy) * fx * img[y0, x1]
                         + fy * (1 - fx) * img[y1, x0] + fy * fx * img[y1, x1])
    return out


def test_upsample_is_bilinear_with_aligned_corners():
    a, _ = capture()
    up = methods.upsample(a[:1, :2], (11, 13))
    for k in range(2):
        np.testing.assert_allclose(up[0, k], ref_upsample_align_corners(a[0, k], 11, 13), rtol=1e-5, atol=1e-6)


def test_scorecam_matches_masked_score_softmax():
    a, _ = capture()
    x = RNG.normal(size=(N, 2, 10, 12)).astype(np.float32)
    w_out = RNG.normal(size=(4, 2 * 10 * 12)) * 0.2

    def scores(xb):
        return xb.reshape(len(xb), -1) @ w_out.T

    seeds = np.eye(4, dtype=np.float32)[[2, 0, 3]]
    want_weights = np.zeros((N, K))
    for n in range(N):
        for k in range(K):
            up = ref_upsample_align_corners(a[n, k], 10, 12)
            mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
            want_weights[n, k] = (scores(x[n:n + 1] * mask) * seeds[n]).sum()
        e = np.exp(want_weights[n] - want_weights[n].max())
        want_weights[n] = e / e.sum()
    got = methods.scorecam(a, x, scores, seeds, batch=3)
    np.testing.assert_allclose(got, refs.relu_sum(want_weights, a), rtol=1e-4, atol=1e-6)
    nhwc = methods.scorecam(a, x.transpose(0, 2, 3, 1), lambda xb: scores(xb.transpose(0, 3, 1, 2)),
                            seeds, layout="NHWC")
    np.testing.assert_allclose(nhwc, got, rtol=1e-5, atol=1e-7)


def test_ablationcam_matches_relative_score_drop():
    a, _ = capture()
    fc = np.abs(RNG.normal(size=(4, K)))

    def head(acts):  # GAP -> FC
        return acts.mean(axis=(2, 3)) @ fc.T

    classes = [1, 2, 0]
    seeds = np.eye(4, dtype=np.float32)[classes]
    weights = np.zeros((N, K))
    for n, c in enumerate(classes):
        y = fc[c] @ a[n].mean(axis=(1, 2))
        for k in range(K):
            ablated = a[n].copy()
            ablated[k] = 0
            weights[n, k] = (y - fc[c] @ ablated.mean(axis=(1, 2))) / y
    got = methods.ablationcam(a, head, seeds, batch=3)
    np.testing.assert_allclose(got, refs.relu_sum(weights, a), rtol=1e-4, atol=1e-6)


def test_guided_gradcam_is_elementwise_product():
    cam = RNG.random((2, 4, 5)).astype(np.float32)
    guided = RNG.normal(size=(2, 3, 4, 5)).astype(np.float32)
    got = methods.guided_gradcam(cam, guided)
    for c in range(3):
        np.testing.assert_allclose(got[:, c], guided[:, c] * cam, rtol=1e-6)
    np.testing.assert_allclose(methods.guided_gradcam(cam, guided.transpose(0, 2, 3, 1), layout="NHWC"),
                               got.transpose(0, 2, 3, 1), rtol=1e-6)
