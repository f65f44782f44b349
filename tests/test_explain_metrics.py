"""Deletion / insertion AUC and the pointing game against explicit loops."""
import cv2
import numpy as np
import pytest

from engine.explain import metrics

RNG = np.random.default_rng(5)
N, C, H, W = 2, 3, 6, 7
WEIGHT = RNG.random((N, H, W))  # each pixel's (positive) contribution to the score


def score(xb, index):  # a linear "model": Σ_c Σ_ij weight_ij x_cij, per source image
    return np.einsum("nchw,nhw->n", xb, WEIGHT[index])


def ref_curve(x, m, steps, substrate, insert):
    order = np.argsort(-m.ravel(), kind="stable")
    out = []
    for s in range(steps + 1):
        k = int(round(s * H * W / steps))
        chosen = np.zeros(H * W, bool)
        chosen[order[:k]] = True
        chosen = chosen.reshape(H, W)
        start, end = (substrate, x) if insert else (x, substrate)
        out.append(np.where(chosen[None], end, start))
    return np.stack(out)


def test_deletion_and_insertion_curves_match_loops():
    x = np.abs(RNG.normal(size=(N, C, H, W))).astype(np.float32)
    maps = RNG.random((N, H, W))
    dele = metrics.deletion_curve(score, x, maps, steps=5, batch=4)
    ins = metrics.insertion_curve(score, x, maps, steps=5, substrate="zero")
    for n in range(N):
        want = ref_curve(x[n], maps[n], 5, np.zeros_like(x[n]), insert=False)
        np.testing.assert_allclose(dele[n], score(want, np.full(6, n)), rtol=1e-5)
        want = ref_curve(x[n], maps[n], 5, np.zeros_like(x[n]), insert=True)
        np.testing.assert_allclose(ins[n], score(want, np.full(6, n)), rtol=1e-5)
    assert dele[:, -1] == pytest.approx(0) and ins[:, 0] == pytest.approx(0)
    np.testing.assert_allclose(metrics.auc(dele), [np.trapezoid(c, dx=1 / 5) for c in dele])


def test_the_true_contribution_map_beats_the_baselines():
    x = np.ones((N, C, H, W), np.float32)
    kw = dict(steps=H * W)
    best = metrics.deletion_auc(score, x, WEIGHT, **kw)
    for kind in ["random", "centre"]:
        base = metrics.baseline_maps(kind, N, (H, W), rng=1)
        assert (best < metrics.deletion_auc(score, x, base, **kw)).all()
        assert (metrics.insertion_auc(score, x, WEIGHT, substrate="zero", **kw)
                > metrics.insertion_auc(score, x, base, substrate="zero", **kw)).all()


def test_blur_substrate_is_opencv_gaussian():
    x = RNG.normal(size=(1, C, H, W)).astype(np.float32)
    curve = metrics.insertion_curve(lambda xb, i: xb[:, 0, 2, 3], x, np.ones((1, H, W)), steps=1)
    want = cv2.GaussianBlur(np.ascontiguousarray(x[0].transpose(1, 2, 0)), (11, 11), 5)[2, 3, 0]
    assert curve[0, 0] == pytest.approx(want, rel=1e-5) and curve[0, 1] == pytest.approx(x[0, 0, 2, 3])


def test_pointing_game_hits_tolerance_and_resize():
    maps = np.zeros((3, 10, 10))
    maps[:, 4, 4] = 1
    masks = np.zeros((3, 10, 10), bool)
    masks[0, 3:6, 3:6] = True        # contains the peak
    masks[1, 0:2, 0:2] = True        # far away
    masks[2, 4, 6:8] = True          # 2 px away
    assert metrics.pointing_game(maps, masks, tolerance=0).tolist() == [True, False, False]
    assert metrics.pointing_game(maps, masks, tolerance=2).tolist() == [True, False, True]
    big = np.zeros((1, 20, 20), bool)
    big[0, 8:10, 8:10] = True
    assert metrics.pointing_game(maps[:1], big, tolerance=0).tolist() == [True]
    # default: 15 px per 224 px -> 6 px at 96 px
    peak = np.zeros((1, 96, 96))
    peak[0, 50, 50] = 1
    near, far = np.zeros((1, 96, 96), bool), np.zeros((1, 96, 96), bool)
    near[0, 50, 56] = far[0, 50, 57] = True
    assert metrics.pointing_game(peak, near).tolist() == [True]
    assert metrics.pointing_game(peak, far).tolist() == [False]


def test_baseline_maps():
    c = metrics.baseline_maps("centre", 2, (9, 11))
    assert np.unravel_index(c[0].argmax(), c[0].shape) == (4, 5)
    r1, r2 = metrics.baseline_maps("random", 2, (9, 11), rng=3), metrics.baseline_maps("random", 2, (9, 11), rng=3)
    np.testing.assert_array_equal(r1, r2)
    assert r1.std() > 0.2
