"""Input attributions (saliency) against a gradient callable.

``gradient(x, seeds, mode)`` returns ∂(Σ seed·output)/∂x for a batch ``x`` (one seed row per row of
``x``); ``mode`` is "standard", "guided" (guided backprop) or "deconvnet". Every function returns
an attribution shaped like ``x``; :func:`reduce` turns it into an N×H×W map.

>>> attr = smoothgrad(gradient, x, seeds, samples=25)
>>> maps = reduce(attr)
"""
import numpy as np

from engine.errors import UsageError
from engine.memory import check_fits


def vanilla(gradient, x, seeds, batch=64):
    """Vanilla gradient (Simonyan et al. 2014): ∂S_c/∂x.

    >>> vanilla(gradient, x, seeds).shape == x.shape
    True
    """
    return _batched(gradient, x, seeds, batch, "standard")


def gradient_x_input(gradient, x, seeds, batch=64):
    """Gradient × input (Shrikumar et al. 2016): x ⊙ ∂S_c/∂x.

    >>> gradient_x_input(gradient, x, seeds, batch=16)
    """
    return x * _batched(gradient, x, seeds, batch, "standard")


def guided_backprop(gradient, x, seeds, batch=64):
    """Guided backpropagation (Springenberg et al. 2015): ReLUs pass only positive gradients of positive inputs.

    >>> guided_backprop(gradient, x, seeds)
    """
    return _batched(gradient, x, seeds, batch, "guided")


def deconvnet(gradient, x, seeds, batch=64):
    """Deconvnet (Zeiler & Fergus 2014): ReLUs pass positive gradients, whatever their input.

    >>> deconvnet(gradient, x, seeds)
    """
    return _batched(gradient, x, seeds, batch, "deconvnet")


def smoothgrad(gradient, x, seeds, samples=25, noise=0.15, rng=0, batch=64):
    """SmoothGrad (Smilkov et al. 2017): mean gradient over ``samples`` noisy copies of each image.

    The noise is N(0, σ²) with σ = ``noise`` · (max(x_i) − min(x_i)) per image, drawn as
    ``rng.standard_normal((N, samples, *x.shape[1:]))``.

    >>> smoothgrad(gradient, x, seeds, samples=25, noise=0.15, rng=0)
    """
    rng = np.random.default_rng(rng)
    n = len(x)
    flat = x.reshape(n, -1)
    sigma = noise * (flat.max(axis=1) - flat.min(axis=1))
    check_fits(20 * n * samples * int(np.prod(x.shape[1:])), f"SmoothGrad's {samples} noisy copies of {n} images",
               "lower samples (--samples)")  # float64 draws, float32 copies and gradients
    eps = rng.standard_normal((n, samples, *x.shape[1:])).astype(np.float32)
    noisy = x[:, None] + sigma.reshape(n, 1, *[1] * (x.ndim - 1)) * eps
    grads = _batched(gradient, noisy.reshape(n * samples, *x.shape[1:]),
                     np.repeat(seeds, samples, axis=0), batch, "standard")
    return grads.reshape(n, samples, *x.shape[1:]).mean(axis=1)


def integrated_gradients(gradient, x, seeds, baseline=0.0, steps=32, batch=64):
    """Integrated Gradients (Sundararajan et al. 2017), right Riemann sum over ``steps`` batched points.

    (x − x') ⊙ (1/m) Σ_{k=1..m} ∂S/∂x at x' + (k/m)(x − x'); ``baseline`` x' is a scalar or an
    array shaped like ``x``. Completeness: the attributions sum to ≈ S(x) − S(x').

    >>> integrated_gradients(gradient, x, seeds, baseline=0.0, steps=32)
    """
    if steps < 1:
        raise UsageError(f"integrated gradients need steps >= 1, got {steps}: pass a positive step count")
    n = len(x)
    base = np.broadcast_to(np.asarray(baseline, np.float32), x.shape)
    alphas = (np.arange(1, steps + 1) / steps).astype(np.float32).reshape(1, steps, *[1] * (x.ndim - 1))
    path = base[:, None] + alphas * (x - base)[:, None]
    grads = _batched(gradient, path.reshape(n * steps, *x.shape[1:]),
                     np.repeat(seeds, steps, axis=0), batch, "standard")
    return (x - base) * grads.reshape(n, steps, *x.shape[1:]).mean(axis=1)


def reduce(attributions, how="absmax", layout="NCHW"):
    """Turn attributions N×C×H×W (or N×H×W×C) into N×H×W maps.

    ``how``: "absmax" (max over channels of |a|, Simonyan et al.), "abssum" (Σ_c |a|) or "sum".

    >>> reduce(attr, "absmax").shape
    """
    axis = 1 if layout == "NCHW" else -1
    if how == "absmax":
        return np.abs(attributions).max(axis=axis)
    if how == "abssum":
        return np.abs(attributions).sum(axis=axis)
    if how == "sum":
        return attributions.sum(axis=axis)
    raise UsageError(f"unknown reduction '{how}': use absmax, abssum or sum")


def _batched(gradient, x, seeds, batch, mode):
    parts = [gradient(x[i:i + batch], seeds[i:i + batch], mode) for i in range(0, len(x), batch)]
    return np.concatenate(parts).astype(np.float32)


METHODS = {
    "vanilla": vanilla,
    "gradxinput": gradient_x_input,
    "smoothgrad": smoothgrad,
    "integrated": integrated_gradients,
    "guided": guided_backprop,
    "deconvnet": deconvnet,
}
"""Every saliency method by its CLI name, each ``fn(gradient, x, seeds, **options)``."""
