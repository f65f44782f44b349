"""Class visualization by gradient ascent on the input (Simonyan et al. 2014), with the usual
regularizers: jitter and blur (Yosinski et al. 2015) and a decorrelated Fourier parameterization
(Olah et al. 2017, "Feature Visualization").

``objective(x) -> (scores N, ∂scores/∂x)`` is any differentiable score of the input: a class
logit, or the mean activation of one channel.

>>> brighter = lambda x: (x.mean(axis=(1, 2, 3)), np.ones_like(x))  # the mean pixel and its gradient
>>> result = ascend(brighter, np.zeros((1, 3, 8, 8), np.float32), steps=4)
>>> result.x.shape, len(result.history), result.scores[-1, 0] > 0   # final input, snapshots, scores
((1, 3, 8, 8), 5, np.True_)
"""
from dataclasses import dataclass, field

import cv2
import numpy as np

from engine.data.preprocess import PRESETS
from engine.errors import UsageError
from engine.explain.capture import output_names
from engine.progress import Progress

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

    >>> brighter = lambda x: (x.mean(axis=(1, 2, 3)), np.ones_like(x))
    >>> ascend(brighter, np.zeros((1, 3, 8, 8), np.float32), steps=4, jitter=2, blur_every=2, fourier=True).x.shape
    (1, 3, 8, 8)
    """
    rng = np.random.default_rng(rng)
    x = np.array(x0, np.float32)
    nchw = x if layout == "NCHW" else x.transpose(0, 3, 1, 2)
    if decorrelate and nchw.shape[1] != 3:
        raise UsageError("colour decorrelation needs a 3-channel input: leave decorrelate off for gray models")
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


@dataclass
class Visualization:
    """Result of :func:`class_visualization`: ``image`` (H×W×3 uint8 RGB), ``steps`` (snapshots
    as uint8 RGB images), ``scores`` (objective per step), ``x`` (final model-space input)."""

    image: np.ndarray
    steps: list
    scores: np.ndarray
    x: np.ndarray


def class_visualization(model, target=None, layer=None, channel=None, steps=200, lr=0.1, l2=1e-4,
                        start="zeros", jitter=2, blur_every=4, blur_sigma=0.5, fourier=False,
                        decorrelate=False, snapshots=8, rng=0, progress=None):
    """Maximize class ``target``'s score, or the mean activation of ``channel`` of ``layer``, over
    the input by gradient ascent (see :func:`ascend`).

    ``start``: "zeros" (zeros in model space: the mean image for centred presets), "noise", or
    an image (path or uint8 RGB array) that shapes the result.

    >>> viz = class_visualization(model, target=3, steps=2, fourier=True, progress=False)
    >>> viz.image.shape, len(viz.scores)
    ((64, 64, 3), 3)
    """
    if (target is None) == (channel is None):
        raise UsageError("give either a target class or a layer and a channel to maximize")
    x0 = _start(model, start, rng)
    if target is not None:
        out = output_names(model)[0]
        n_classes = model.run(x0).outputs[0].shape[1]
        if not -n_classes <= int(target) < n_classes:
            raise UsageError(f"target class {target} out of range: the model has {n_classes} classes, "
                             f"give one in 0..{n_classes - 1}")
        seed = np.zeros((1, n_classes), np.float32)
        seed[0, int(target)] = 1

        def objective(x):
            result = model.run(x, gradients=["input"], seed={out: seed})
            return result.outputs[0][:, int(target)], result.gradients["input"]
    else:
        if layer is None:
            raise UsageError("a channel objective needs --layer")
        layer = model.layer(layer).name  # a tensor, or a module's last 4-D tensor
        shape = model.run(x0, activations=[layer]).activations[layer].shape
        if len(shape) != 4 or not 0 <= int(channel) < shape[1]:
            raise UsageError(f"channel {channel} out of range: layer '{layer}' has shape {shape}; "
                             "name a 4-D layer and a channel below its second dim")
        seed = np.zeros(shape, np.float32)
        seed[:, int(channel)] = 1.0 / (shape[2] * shape[3])

        def objective(x):
            result = model.run(x, activations=[layer], gradients=["input"], seed={layer: seed})
            return result.activations[layer][:, int(channel)].mean(axis=(1, 2)), result.gradients["input"]

    with Progress(total=steps, label="classviz", unit="step", enabled=progress) as bar:
        result = ascend(objective, x0, steps=steps, lr=lr, l2=l2, jitter=jitter, blur_every=blur_every,
                        blur_sigma=blur_sigma, fourier=fourier, decorrelate=decorrelate,
                        channel_order=model.preprocessing.channel_order, layout=model.input.layout,
                        snapshots=snapshots, rng=rng, callback=lambda step: bar.update())
    if not (np.isfinite(result.x).all() and np.isfinite(result.scores).all()):
        raise UsageError("gradient ascent reached NaN or infinite values: the model's score or gradient is not finite "
                         "(check its weights), or lower --lr")
    to_rgb = lambda x: to_image(model, x)[0]  # noqa: E731
    return Visualization(to_rgb(result.x), [to_rgb(h) for h in result.history], result.scores[:, 0], result.x)


def to_image(model, x):
    """Model-space inputs back to uint8 RGB images (inverse of the model's preprocessing, clipped).

    >>> to_image(model, model.preprocess(images)).shape   # the images at the model's input size
    (4, 64, 64, 3)
    """
    mean, std = PRESETS[model.preprocessing.preset]
    hwc = x.transpose(0, 2, 3, 1) if model.input.layout == "NCHW" else x
    if hwc.shape[-1] == 1:
        rgb = np.repeat(hwc * std.mean() + mean.mean(), 3, axis=-1)
    elif model.preprocessing.channel_order == "BGR":
        rgb = (hwc * std[::-1] + mean[::-1])[..., ::-1]
    else:
        rgb = hwc * std + mean
    return np.uint8(np.clip(np.round(rgb), 0, 255))


def _start(model, start, rng):
    size = model.input_size
    if size is None:
        raise UsageError("the model has dynamic spatial dims: give a size: input_size=(H, W)")
    if isinstance(start, str) and start in ("zeros", "noise"):
        shape = (1, model.input.channels, *size) if model.input.layout == "NCHW" else (1, *size, model.input.channels)
        if start == "zeros":
            return np.zeros(shape, np.float32)
        return (np.random.default_rng(rng).standard_normal(shape) * 0.1).astype(np.float32)
    return model.preprocess([start])
