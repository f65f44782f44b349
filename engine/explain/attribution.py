"""Input attributions (saliency) as one table against a gradient callable, and smoothing as a
wrapper over any of them (Captum's ``NoiseTunnel``).

``gradient(x, seeds, mode)`` returns ∂(Σ seed·output)/∂x for a batch ``x`` (one seed row per row of
``x``); ``mode`` is "standard", "guided" (guided backprop) or "deconvnet". A method is a function
registered with :func:`attribution_method` whose parameter names say what it needs (any of
:data:`INPUTS`); it returns an attribution shaped like ``x``, and :func:`reduce` turns that into an
N×H×W map. :func:`method` reads a name: a table entry, or ``smoothgrad:NAME``,
``smoothgrad_sq:NAME`` or ``vargrad:NAME`` for the entry smoothed (``smoothgrad`` alone is
smoothed ``vanilla``).

>>> w = np.array([[1.0, -2.0]])
>>> gradient = lambda x, seeds, mode="standard": seeds @ w * np.ones_like(x)   # output = x·wᵀ
>>> x, seeds = np.array([[3.0, 4.0]]), np.ones((1, 1))
>>> method("gradxinput")(gradient, x, seeds).tolist()
[[3.0, -8.0]]
>>> method("smoothgrad:gradxinput")(gradient, x, seeds, samples=200, noise=0.0).tolist()
[[3.0, -8.0]]
"""
import inspect

import numpy as np

from engine.errors import UsageError
from engine.explain import methods
from engine.explain.table import Method, register
from engine.memory import check_fits

INPUTS = {
    "gradient": "gradient(x, seeds, mode) → ∂(Σ seed·output)/∂x",
    "x": "the model inputs, N×… in the model's layout",
    "seeds": "the seed rows, one per row of x",
    "cam": "cam(x, seeds) → N×H×W Grad-CAM maps in [0, 1] at the input's resolution",
    "batch": "rows per gradient call",
    "steps": "path steps (Integrated Gradients)",
    "baseline": "the reference input x' (a number or one row; Integrated Gradients)",
    "layout": "the inputs' layout, NCHW or NHWC",
}
"""What an attribution may name; the explainers make each on demand."""

METHODS = {}
"""Every attribution by its CLI name, each ``fn(gradient, x, seeds, **inputs)``; see :func:`method`
for the smoothed forms."""

attribution_method = register(METHODS, tuple(INPUTS))
"""``@attribution_method(name)`` adds an attribution to :data:`METHODS`."""


@attribution_method("vanilla")
def vanilla(gradient, x, seeds, batch=64):
    """Vanilla gradient (Simonyan et al. 2014): ∂S_c/∂x."""
    return _batched(gradient, x, seeds, batch, "standard")


@attribution_method("gradxinput")
def gradient_x_input(gradient, x, seeds, batch=64):
    """Gradient × input (Shrikumar et al. 2016): x ⊙ ∂S_c/∂x."""
    return x * _batched(gradient, x, seeds, batch, "standard")


@attribution_method("integrated")
def integrated_gradients(gradient, x, seeds, baseline=0.0, steps=32, batch=64):
    """Integrated Gradients (Sundararajan et al. 2017): (x − x') ⊙ the mean gradient on the path from x'.

    Right Riemann sum over ``steps`` batched points: (1/m) Σ_{k=1..m} ∂S/∂x at x' + (k/m)(x − x');
    ``baseline`` x' is a scalar or an array broadcastable to ``x``. Completeness: the attributions
    sum to ≈ S(x) − S(x').
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


@attribution_method("guided")
def guided_backprop(gradient, x, seeds, batch=64):
    """Guided backpropagation (Springenberg et al. 2015): ReLUs pass only positive gradients of positive inputs."""
    return _batched(gradient, x, seeds, batch, "guided")


@attribution_method("deconvnet")
def deconvnet(gradient, x, seeds, batch=64):
    """Deconvnet (Zeiler & Fergus 2014): ReLUs pass positive gradients, whatever their input."""
    return _batched(gradient, x, seeds, batch, "deconvnet")


@attribution_method("guided-gradcam")
def guided_gradcam(gradient, x, seeds, cam, batch=64, layout="NCHW"):
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop ⊙ the Grad-CAM map at the input's size."""
    return methods.guided_gradcam(cam(x, seeds), guided_backprop(gradient, x, seeds, batch), layout)


TUNNELS = {
    "smoothgrad": lambda a: a.mean(axis=1),
    "smoothgrad_sq": lambda a: (a ** 2).mean(axis=1),
    "vargrad": lambda a: a.var(axis=1),
}
"""NoiseTunnel reductions over the noisy copies' attributions N×samples×… (Captum's ``nt_type``)."""


def smoothed(entry, tunnel="smoothgrad"):
    """``entry`` (a table entry) over noisy copies of each image (Smilkov et al. 2017, SmoothGrad;
    Captum's NoiseTunnel): the mean of its attributions (``smoothgrad``), of their squares
    (``smoothgrad_sq``) or their variance (``vargrad``).

    The entry's function gains ``samples``, ``noise`` and ``rng``: the noise is N(0, σ²) with
    σ = ``noise`` · (max(x_i) − min(x_i)) per image, drawn as
    ``np.random.default_rng(rng).standard_normal((N, samples, *x.shape[1:]))``; all N·samples
    copies go through ``entry`` in one call (its other inputs, e.g. a baseline, must broadcast
    over them).

    >>> smoothed(METHODS["integrated"]).name, smoothed(METHODS["guided"], "vargrad").needs
    ('smoothgrad:integrated', ('gradient', 'x', 'seeds'))
    """
    if tunnel not in TUNNELS:
        raise UsageError(f"unknown smoothing '{tunnel}': use one of {', '.join(TUNNELS)}")
    signature = entry.signature

    def run(*args, samples=25, noise=0.15, rng=0, **inputs):
        bound = signature.bind(*args, **inputs)
        x, seeds = bound.arguments["x"], bound.arguments["seeds"]
        n = len(x)
        bound.arguments.update(x=noisy_copies(x, samples, noise, rng),
                               seeds=np.repeat(seeds, samples, axis=0))
        attr = entry.fn(*bound.args, **bound.kwargs)
        return TUNNELS[tunnel](attr.reshape(n, samples, *attr.shape[1:]))

    keyword = inspect.Parameter.KEYWORD_ONLY
    run.__signature__ = signature.replace(parameters=[
        *signature.parameters.values(), inspect.Parameter("samples", keyword, default=25),
        inspect.Parameter("noise", keyword, default=0.15), inspect.Parameter("rng", keyword, default=0)])
    run.__doc__ = f"{entry.summary} Smoothed: {tunnel} over noisy copies of each image."
    return Method(f"{tunnel}:{entry.name}", run)


def noisy_copies(x, samples, noise, rng=0):
    """``samples`` copies of each row of ``x`` plus N(0, σ²) noise, σ = ``noise`` · (max − min) of
    the row; N·samples rows, each row's copies together.

    >>> noisy_copies(np.zeros((2, 3)), 4, 0.1).shape
    (8, 3)
    """
    rng = np.random.default_rng(rng)
    n = len(x)
    flat = x.reshape(n, -1)
    sigma = noise * (flat.max(axis=1) - flat.min(axis=1))
    check_fits(20 * n * samples * int(np.prod(x.shape[1:])), f"{samples} noisy copies of {n} images",
               "lower samples (--samples)")  # float64 draws, float32 copies and gradients
    eps = rng.standard_normal((n, samples, *x.shape[1:])).astype(np.float32)
    noisy = x[:, None] + sigma.reshape(n, 1, *[1] * (x.ndim - 1)) * eps
    return noisy.reshape(n * samples, *x.shape[1:])


def method(name):
    """The attribution called ``name``: an entry of :data:`METHODS`, ``smoothgrad`` (smoothed
    vanilla) or TUNNEL:NAME, TUNNEL one of :data:`TUNNELS`.

    >>> method("vargrad:integrated").needs
    ('gradient', 'x', 'seeds')
    """
    tunnel, _, base = (f"{name}:vanilla" if name in TUNNELS else name).rpartition(":")
    if base not in METHODS or (tunnel and tunnel not in TUNNELS):
        raise UsageError(f"unknown saliency method '{name}': use one of {', '.join(NAMES)}, "
                         f"or smooth one as {'|'.join(TUNNELS)}:NAME")
    return smoothed(METHODS[base], tunnel) if tunnel else METHODS[base]


smoothgrad = smoothed(METHODS["vanilla"])
"""SmoothGrad (Smilkov et al. 2017): the mean gradient over ``samples`` noisy copies of each image."""

NAMES = (*METHODS, *TUNNELS)
"""The names :func:`method` takes without a prefix (``smoothgrad``, ``smoothgrad_sq`` and
``vargrad`` smooth vanilla)."""


def reduce(attributions, how="absmax", layout="NCHW"):
    """Turn attributions N×C×H×W (or N×H×W×C) into N×H×W maps.

    ``how``: "absmax" (max over channels of |a|, Simonyan et al.), "abssum" (Σ_c |a|) or "sum".

    >>> reduce(np.array([[[[1.0]], [[-3.0]]]])).tolist()     # one 1×1 image, two channels
    [[[3.0]]]
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
