"""Saliency methods against a two-layer ReLU network with hand-derived gradients."""
import numpy as np
import pytest

from engine.errors import UsageError
from engine.explain import attribution

RNG = np.random.default_rng(3)
W1 = RNG.normal(size=(16, 2 * 4 * 5)).astype(np.float32) * 0.5
W2 = RNG.normal(size=(3, 16)).astype(np.float32)


def forward(x):
    return np.maximum(x.reshape(len(x), -1) @ W1.T, 0) @ W2.T


def gradient(x, seeds, mode="standard"):
    pre = x.reshape(len(x), -1) @ W1.T
    back = seeds @ W2  # gradient arriving at the ReLU output
    if mode == "standard":
        back = back * (pre > 0)
    elif mode == "guided":  # Springenberg: forward mask and positive gradient
        back = back * (pre > 0) * (back > 0)
    elif mode == "deconvnet":  # Zeiler & Fergus: ReLU applied to the gradient only
        back = np.maximum(back, 0)
    return (back @ W1).reshape(x.shape)


X = RNG.normal(size=(2, 2, 4, 5)).astype(np.float32)
SEEDS = np.eye(3, dtype=np.float32)[[0, 2]]


def test_vanilla_matches_central_differences():
    got = attribution.vanilla(gradient, X, SEEDS)
    eps = 1e-3
    for n in range(2):
        for idx in [(0, 1, 2), (1, 3, 4), (0, 0, 0)]:
            xp, xm = X[n:n + 1].astype(np.float64).copy(), X[n:n + 1].astype(np.float64).copy()
            xp[(0, *idx)] += eps
            xm[(0, *idx)] -= eps
            fd = ((forward(xp) - forward(xm)) @ SEEDS[n])[0] / (2 * eps)
            assert got[(n, *idx)] == pytest.approx(fd, rel=1e-3, abs=1e-4)
    np.testing.assert_allclose(attribution.gradient_x_input(gradient, X, SEEDS), X * got, rtol=1e-6)


def test_guided_and_deconvnet_use_their_mode():
    np.testing.assert_allclose(attribution.guided_backprop(gradient, X, SEEDS), gradient(X, SEEDS, "guided"))
    np.testing.assert_allclose(attribution.deconvnet(gradient, X, SEEDS), gradient(X, SEEDS, "deconvnet"))
    assert not np.allclose(gradient(X, SEEDS, "guided"), gradient(X, SEEDS))


def test_smoothgrad_is_the_mean_gradient_over_noisy_copies():
    got = attribution.smoothgrad(gradient, X, SEEDS, samples=7, noise=0.2, rng=11, batch=4)
    eps = np.random.default_rng(11).standard_normal((2, 7, *X.shape[1:]))
    want = np.zeros_like(X)
    for n in range(2):
        sigma = 0.2 * (X[n].max() - X[n].min())
        for s in range(7):
            want[n] += gradient(X[n:n + 1] + sigma * eps[n, s], SEEDS[n:n + 1])[0] / 7
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    again = attribution.smoothgrad(gradient, X, SEEDS, samples=7, noise=0.2, rng=11, batch=64)
    np.testing.assert_allclose(again, got, rtol=1e-6)


def test_integrated_gradients_riemann_sum_and_completeness():
    base = RNG.normal(size=X.shape).astype(np.float32) * 0.1
    got = attribution.integrated_gradients(gradient, X, SEEDS, baseline=base, steps=5, batch=3)
    want = np.zeros_like(X)
    for k in range(1, 6):
        want += gradient(base + k / 5 * (X - base), SEEDS) / 5
    np.testing.assert_allclose(got, (X - base) * want, rtol=1e-4, atol=1e-6)
    fine = attribution.integrated_gradients(gradient, X, SEEDS, baseline=0.0, steps=2000)
    gap = ((forward(X) - forward(np.zeros_like(X))) * SEEDS).sum(axis=1)
    np.testing.assert_allclose(fine.reshape(2, -1).sum(axis=1), gap, rtol=5e-3, atol=5e-3)


def test_reduce():
    a = RNG.normal(size=(2, 3, 4, 5))
    np.testing.assert_allclose(attribution.reduce(a), np.abs(a).max(axis=1))
    np.testing.assert_allclose(attribution.reduce(a, "abssum"), np.abs(a).sum(axis=1))
    np.testing.assert_allclose(attribution.reduce(a.transpose(0, 2, 3, 1), "sum", layout="NHWC"), a.sum(axis=1))


def noise_draws(samples, noise, rng):
    """The noisy copies' offsets as the smoothing wrapper documents them: σ per image times N(0, 1) draws."""
    eps = np.random.default_rng(rng).standard_normal((len(X), samples, *X.shape[1:]))
    sigma = noise * (X.reshape(len(X), -1).max(axis=1) - X.reshape(len(X), -1).min(axis=1))
    return sigma.reshape(-1, 1, 1, 1, 1) * eps


def ig_reference(x, seeds, steps):
    # Sundararajan et al. with a zero baseline, right Riemann sum, straight from the hand gradient
    return x * sum(gradient(k / steps * x, seeds) for k in range(1, steps + 1)) / steps


TUNNEL_REFERENCES = {"smoothgrad": lambda a: a.mean(axis=1), "smoothgrad_sq": lambda a: (a ** 2).mean(axis=1),
                     "vargrad": lambda a: ((a - a.mean(axis=1, keepdims=True)) ** 2).mean(axis=1)}


@pytest.mark.parametrize("tunnel", list(TUNNEL_REFERENCES))
def test_smoothed_integrated_gradients_over_the_same_noise_draws(tunnel):
    got = attribution.method(f"{tunnel}:integrated")(gradient, X, SEEDS, steps=4, samples=5, noise=0.3, rng=2,
                                                      batch=7)
    offsets = noise_draws(5, 0.3, 2)
    per_copy = np.stack([[ig_reference(X[n:n + 1] + offsets[n, s], SEEDS[n:n + 1], 4)[0] for s in range(5)]
                         for n in range(len(X))])
    want = TUNNEL_REFERENCES[tunnel](per_copy)
    assert got.shape == X.shape and np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    plain = attribution.method("integrated")(gradient, X, SEEDS, steps=4)
    assert not np.allclose(got, TUNNEL_REFERENCES[tunnel](plain[:, None]))   # the noise matters


def test_smoothed_guided_backprop_and_the_smoothgrad_name():
    got = attribution.method("smoothgrad:guided")(gradient, X, SEEDS, samples=6, noise=0.2, rng=4)
    offsets = noise_draws(6, 0.2, 4)
    want = np.mean([[gradient(X[n:n + 1] + offsets[n, s], SEEDS[n:n + 1], "guided")[0] for s in range(6)]
                    for n in range(len(X))], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    options = dict(samples=6, noise=0.2, rng=4)
    np.testing.assert_allclose(attribution.method("smoothgrad")(gradient, X, SEEDS, **options),
                               attribution.method("smoothgrad:vanilla")(gradient, X, SEEDS, **options))


def test_method_names():
    assert attribution.method("vargrad").name == "vargrad:vanilla"
    assert attribution.method("smoothgrad_sq:guided-gradcam").needs == ("gradient", "x", "seeds", "cam")
    for bad in ("fancy", "smooth:vanilla", "smoothgrad:fancy", "smoothgrad:smoothgrad:vanilla"):
        with pytest.raises(UsageError, match="unknown saliency method"):
            attribution.method(bad)
