"""Class visualization by gradient ascent on the input (Simonyan et al. 2014), with the usual
regularizers: jitter and blur (Yosinski et al. 2015) and a decorrelated Fourier parameterization
(Olah et al. 2017, "Feature Visualization").

``objective(x) -> (scores N, ∂scores/∂x)`` is any differentiable score of the input: a class
logit, or the mean activation of one channel.

>>> result = ascend(objective, np.zeros((1, 3, 64, 64), np.float32), steps=200)
>>> result.x, result.history          # final input, and snapshots for a strip
"""
from dataclasses import dataclass, field

import cv2
import numpy as np

from engine.errors import UsageError

# Square root of ImageNet's RGB colour correlation (lucid's color_correlation_svd_sqrt),
# normalized so that its largest column has unit norm.
COLOR_CORRELATION = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_CORRELATION = COLOR_CORRELATION / np.linalg.norm(COLOR_CORRELATION, axis=0).max()


@dataclass
class Ascent:
    """Result of :func:`ascend`: final input ``x``, ``history`` of snapshots (each like ``x``),
    and ``scores`` (steps+1)×N, the objective before each step and after the last."""

    x: np.ndarray
    history: list = field(default_factory=list)
    scores: np.ndarray = None


def ascend(objective, x0, steps=200, lr=0.1, l2=1e-4, jitter=0, blur_every=0, blur_sigma=0.5,
           fourier=False, decorrelate=False, channel_order="RGB", layout="NCHW", snapshots=8,
           rng=0, callback=None):
    """Gradient ascent x ← x + lr·d − 2·l2·x, where d is ∂S/∂x scaled to unit RMS per image.

    With ``fourier`` the step is preconditioned by the 1/f² spectrum — the step that plain
    gradient ascent takes on the coefficients of a 1/f-scaled Fourier parameterization;
    ``decorrelate`` preconditions colours the same way with ImageNet's colour correlation
    (``channel_order`` of the model's 3 channels). ``jitter`` rolls the input by up to that
    many pixels before each gradient; ``blur_every`` k blurs x every k steps. ``callback(step)``
    is called after each step (progress bars).

    >>> ascend(objective, x0, steps=100, jitter=4, blur_every=4, fourier=True)
    """
    rng = np.random.default_rng(rng)
    x = np.array(x0, np.float32)
    nchw = x if layout == "NCHW" else x.transpose(0, 3, 1, 2)
    if decorrelate and nchw.shape[1] != 3:
        raise UsageError("colour decorrelation needs a 3-channel input")
    keep = set(np.linspace(0, steps, min(snapshots, steps + 1)).round().astype(int)) if snapshots else set()
    history, scores = [], []
    for step in range(steps + 1):
        if step in keep:
            history.append(x.copy())
        dy, dx = rng.integers(-jitter, jitter + 1, size=2) if jitter else (0, 0)
        score, grad = objective(_roll(x, dy, dx, layout))
        scores.append(np.asarray(score, np.float64))
        if step == steps:
            break
        g = _roll(np.asarray(grad, np.float32), -dy, -dx, layout)
        g = g if layout == "NCHW" else g.transpose(0, 3, 1, 2)
        if decorrelate:
            c = COLOR_CORRELATION if channel_order == "RGB" else COLOR_CORRELATION[::-1, ::-1]
            g = np.einsum("ij,nj...->ni...", c @ c.T, g)
        if fourier:
            g = _spectral_precondition(g)
        rms = np.sqrt((g.reshape(len(g), -1) ** 2).mean(axis=1)) + 1e-12
        g = g / rms.reshape(-1, 1, 1, 1)
        g = g if layout == "NCHW" else g.transpose(0, 2, 3, 1)
        x = (x + lr * g - 2 * l2 * x).astype(np.float32)
        if blur_every and (step + 1) % blur_every == 0:
            x = _blur(x, blur_sigma, layout)
        if callback:
            callback(step)
    return Ascent(x, history, np.stack(scores))


def _roll(x, dy, dx, layout):
    axes = (2, 3) if layout == "NCHW" else (1, 2)
    return np.roll(x, (dy, dx), axis=axes) if (dy or dx) else x


def _spectral_precondition(g):
    h, w = g.shape[-2:]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    scale = 1.0 / np.maximum(np.sqrt(fx ** 2 + fy ** 2), 1.0 / max(h, w))
    return np.real(np.fft.ifft2(np.fft.fft2(g) * scale ** 2)).astype(np.float32)


def _blur(x, sigma, layout):
    hwc = x.transpose(0, 2, 3, 1) if layout == "NCHW" else x
    out = np.stack([cv2.GaussianBlur(np.ascontiguousarray(img), (0, 0), sigma).reshape(img.shape)
                    for img in hwc])
    return out.transpose(0, 3, 1, 2) if layout == "NCHW" else out
