"""Gradient ascent x <- x + lr d - 2 l2 x, its regularizers and the Fourier preconditioner."""
import cv2
import numpy as np

from engine.explain.classviz import ascend

RNG = np.random.default_rng(2)
SHAPE = (2, 3, 8, 10)
WVEC = RNG.normal(size=SHAPE).astype(np.float32)


def linear(x):
    return (x * WVEC).reshape(len(x), -1).sum(axis=1), WVEC


def test_update_rule_closed_form_for_a_linear_score():
    lr, l2, steps = 0.3, 0.05, 12
    out = ascend(linear, np.zeros(SHAPE, np.float32), steps=steps, lr=lr, l2=l2, snapshots=4)
    d = WVEC / np.sqrt((WVEC.reshape(2, -1) ** 2).mean(axis=1)).reshape(-1, 1, 1, 1)
    want = lr * d * (1 - (1 - 2 * l2) ** steps) / (2 * l2)
    np.testing.assert_allclose(out.x, want, rtol=1e-4, atol=1e-6)
    assert len(out.history) == 4 and out.scores.shape == (steps + 1, 2)
    assert (np.diff(out.scores, axis=0) > 0).all()
    np.testing.assert_array_equal(out.history[0], 0)


def test_fourier_step_is_the_1_over_f_squared_filtered_gradient():
    out = ascend(linear, np.zeros(SHAPE, np.float32), steps=1, lr=1.0, l2=0.0, fourier=True)
    fy, fx = np.meshgrid(np.fft.fftfreq(8), np.fft.fftfreq(10), indexing="ij")
    s2 = 1 / np.maximum(np.hypot(fy, fx), 1 / 10) ** 2
    step = np.real(np.fft.ifft2(np.fft.fft2(WVEC) * s2))
    step /= np.sqrt((step.reshape(2, -1) ** 2).mean(axis=1)).reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(out.x, step, rtol=1e-4, atol=1e-5)
    assert (out.scores[1] > out.scores[0]).all()   # a positive semi-definite preconditioner ascends
    dec = ascend(linear, np.zeros(SHAPE, np.float32), steps=3, decorrelate=True, fourier=True)
    assert (np.diff(dec.scores, axis=0) > 0).all()


def test_blur_every_step():
    x0 = RNG.normal(size=SHAPE).astype(np.float32)
    out = ascend(linear, x0, steps=1, lr=0.0, l2=0.0, blur_every=1, blur_sigma=0.8)
    want = [cv2.GaussianBlur(np.ascontiguousarray(img.transpose(1, 2, 0)), (0, 0), 0.8).transpose(2, 0, 1)
            for img in x0]
    np.testing.assert_allclose(out.x, want, rtol=1e-5, atol=1e-6)


def test_jitter_rolls_the_input_and_the_gradient_back():
    x0 = RNG.normal(size=SHAPE).astype(np.float32)
    seen = []

    def objective(x):
        seen.append(x.copy())
        return linear(x)

    out = ascend(objective, x0, steps=1, lr=1.0, l2=0.0, jitter=2, rng=0)
    dy, dx = np.random.default_rng(0).integers(-2, 3, size=2)
    assert (dy, dx) != (0, 0)
    np.testing.assert_array_equal(seen[0], np.roll(x0, (dy, dx), axis=(2, 3)))
    d = WVEC / np.sqrt((WVEC.reshape(2, -1) ** 2).mean(axis=1)).reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(out.x, x0 + np.roll(d, (-dy, -dx), axis=(2, 3)), rtol=1e-5, atol=1e-6)
