"""Throughput of the augmentation engine, side by side with albumentations when it is installed.

Images: random 256×256 crops of the two photographs shipped inside scikit-learn. Each op runs
with fixed parameters; albumentations (a benchmark-only dependency) runs the matching transform
image by image, as a Dataset would. Used by ``onnxlens augment --bench`` and
``benchmarks/bench_augment.py``.
"""
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import cv2
import numpy as np

from engine import augment as A


def sample_images(n=64, size=256, seed=0):
    """``n`` RGB uint8 crops of ``size``² from scikit-learn's sample photos (no download).

    >>> sample_images(4).shape
    (4, 256, 256, 3)
    """
    folder = resources.files("sklearn.datasets") / "images"
    photos = [cv2.cvtColor(cv2.imread(str(folder / name)), cv2.COLOR_BGR2RGB)
              for name in ("china.jpg", "flower.jpg")]  # what load_sample_images() reads
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = photos[i % len(photos)]
        y = rng.integers(0, img.shape[0] - size + 1)
        x = rng.integers(0, img.shape[1] - size + 1)
        out[i] = img[y:y + size, x:x + size]
    return out


# name, engine op, albumentations transform from the module ``alb`` (or None), pixel agreement:
# "exact"; "±1" (albumentations truncates its tables where the engine rounds to nearest, or
# rounds the luma before blending where the engine blends with the exact luma); "±2"
# (AutoContrast: albumentations bins its histogram over [0, 255) instead of [0, 256), which
# shifts its bounds); None (random positions, or another definition: speed only).
def _jitter(alb, **fixed):
    """albumentations' ColorJitter changing only the ``fixed`` (lo, hi) factors."""
    identity = {"brightness": (1, 1), "contrast": (1, 1), "saturation": (1, 1), "hue": (0, 0)}
    return alb.ColorJitter(**{**identity, **fixed}, p=1)


CASES = [
    ("Brightness", lambda: A.Brightness(1.2), lambda alb: _jitter(alb, brightness=(1.2, 1.2)),
     "±1"),
    ("Contrast", lambda: A.Contrast(1.2), lambda alb: _jitter(alb, contrast=(1.2, 1.2)), "±1"),
    ("Contrast (albumentations)", lambda: A.Contrast(1.2, semantics="albumentations"),
     lambda alb: alb.RandomBrightnessContrast(brightness_limit=(0, 0), contrast_limit=(0.2, 0.2), p=1),
     "exact"),
    ("Saturation", lambda: A.Saturation(1.3), lambda alb: _jitter(alb, saturation=(1.3, 1.3)),
     "±1"),
    ("Hue", lambda: A.Hue(0.1), lambda alb: _jitter(alb, hue=(0.1, 0.1)), "exact"),
    ("Gamma", lambda: A.Gamma(1.2), lambda alb: alb.RandomGamma(gamma_limit=(120, 120), p=1),
     "±1"),
    ("Solarize", lambda: A.Solarize(0.5),
     lambda alb: alb.Solarize(threshold_range=(0.5, 0.5), p=1), "exact"),
    ("Posterize", lambda: A.Posterize(4), lambda alb: alb.Posterize(num_bits=(4, 4), p=1),
     "exact"),
    ("Equalize", lambda: A.Equalize(), lambda alb: alb.Equalize(mode="cv", p=1), "exact"),
    ("AutoContrast", lambda: A.AutoContrast(),
     lambda alb: alb.AutoContrast(cutoff=0, method="pil", p=1), "±2"),
    ("Sharpness", lambda: A.Sharpness(1.5), None, None),
    ("Grayscale", lambda: A.Grayscale(),
     lambda alb: alb.ToGray(num_output_channels=3, method="weighted_average", p=1), "±1"),
    ("HorizontalFlip", lambda: A.HorizontalFlip(), lambda alb: alb.HorizontalFlip(p=1),
     "exact"),
    ("VerticalFlip", lambda: A.VerticalFlip(), lambda alb: alb.VerticalFlip(p=1), "exact"),
    ("Rotate90", lambda: A.Rotate90(), lambda alb: alb.RandomRotate90(p=1), None),
    ("Rotate", lambda: A.Rotate(30),
     lambda alb: alb.Rotate(limit=(30, 30), border_mode=cv2.BORDER_CONSTANT, fill=0, p=1),
     "exact"),
    ("RandomCrop", lambda: A.RandomCrop(224), lambda alb: alb.RandomCrop(224, 224, p=1), None),
    ("CenterCrop", lambda: A.CenterCrop(224), lambda alb: alb.CenterCrop(224, 224, p=1),
     "exact"),
    ("RandomResizedCrop", lambda: A.RandomResizedCrop(224),
     lambda alb: alb.RandomResizedCrop(size=(224, 224), p=1), None),
    ("Resize", lambda: A.Resize(128), lambda alb: alb.Resize(128, 128, p=1), "exact"),
    ("Shear", lambda: A.Shear(x=15),
     lambda alb: alb.Affine(shear={"x": (15, 15), "y": (0, 0)}, p=1), "exact"),
    ("Translate", lambda: A.Translate(x=0.125, y=0.0625),  # whole pixels: see README
     lambda alb: alb.Affine(translate_percent={"x": (0.125, 0.125), "y": (0.0625, 0.0625)}, p=1),
     "exact"),
    ("Affine", lambda: A.Affine(angle=15, scale=1.1, translate_x=0.0625, shear_x=10),
     lambda alb: alb.Affine(rotate=(15, 15), scale=(1.1, 1.1),
                            translate_percent={"x": (0.0625, 0.0625), "y": (0, 0)},
                            shear={"x": (10, 10), "y": (0, 0)}, p=1), "exact"),
    ("Perspective", lambda: A.Perspective(scale=(0.05, 0.1)),
     lambda alb: alb.Perspective(scale=(0.05, 0.1), p=1), None),
    ("CoarseDropout", lambda: A.CoarseDropout(holes=8, size=0.1),
     lambda alb: alb.CoarseDropout(num_holes_range=(8, 8), hole_height_range=(0.1, 0.1),
                                   hole_width_range=(0.1, 0.1), fill=0, p=1), None),
    ("Erasing", lambda: A.Erasing(), lambda alb: alb.Erasing(p=1), None),
    ("GaussianBlur", lambda: A.GaussianBlur(1.0),
     lambda alb: alb.GaussianBlur(sigma_limit=(1.0, 1.0), blur_limit=0, p=1), "exact"),
    ("GaussianNoise", lambda: A.GaussianNoise(0.05),
     lambda alb: alb.GaussNoise(std_range=(0.05, 0.05), p=1), None),
    ("RandAugment", lambda: A.RandAugment(2, 9), None, None),
    ("TrivialAugment", lambda: A.TrivialAugment(), None, None),
]


def pipeline():
    """A typical training pipeline, used for the thread-scaling figure."""
    return A.Compose([A.RandomResizedCrop(224), A.HorizontalFlip(p=0.5), A.Rotate((-15, 15)),
                      A.Brightness((0.8, 1.2)), A.Saturation((0.8, 1.2))])


def bare_opencv(images, params, threads=1, split="halves"):
    """:func:`pipeline`'s work under its drawn ``params`` as a bare OpenCV loop (crop-resize,
    flip, warpAffine, LUT, channel matrix per image, into one preallocated batch): the floor
    the engine's thread scaling is measured against. ``split``: ``"halves"`` gives each thread
    one contiguous half, ``"images"`` hands out single images.

    >>> bare_opencv(images, pipeline().sample_images(images, 0), threads=2).shape
    (4, 224, 224, 3)
    """
    crop, flip, rotate, bright, sat = (params[str(k)] for k in range(5))
    out = np.empty((len(images), 224, 224, 3), np.uint8)
    levels = np.arange(256.0)

    def one(i):
        x, y, w, h = (int(v) for v in crop["box"][i])
        image = cv2.resize(images[i, y:y + h, x:x + w], (224, 224), interpolation=cv2.INTER_LINEAR)
        if flip["on"][i]:
            image = cv2.flip(image, 1)
        turn = cv2.getRotationMatrix2D((111.5, 111.5), float(rotate["angle"][i]), 1.0)
        image = cv2.warpAffine(image, turn, (224, 224), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        image = cv2.LUT(image, np.clip(np.rint(levels * bright["factor"][i]), 0, 255).astype(np.uint8))
        f = sat["factor"][i]
        cv2.transform(image, (f * np.eye(3) + (1 - f) * np.array([0.299, 0.587, 0.114])).astype(np.float32),
                      dst=out[i])

    def run(indices):
        for i in indices:
            one(i)

    if threads == 1:
        run(range(len(images)))
        return out
    pool = _BARE_POOLS.get(threads) or _BARE_POOLS.setdefault(threads, ThreadPoolExecutor(threads))
    parts = (np.array_split(np.arange(len(images)), threads) if split == "halves"
             else [[i] for i in range(len(images))])
    list(pool.map(run, parts))
    return out


_BARE_POOLS = {}


def albumentations():
    """The albumentations module, or None when it is not installed."""
    try:
        import albumentations as alb
    except ImportError:
        return None
    return alb


def engine_run(op, images, threads=1, seed=0):
    """One pass of ``op`` over the batch."""
    return op(images, seed=seed, threads=threads)


def albumentations_run(transform, images):
    """One pass of an albumentations transform, image by image."""
    return [transform(image=im)["image"] for im in images]


def best_rates(fns, n_images, repeats=5):
    """Images per second of each ``fn()`` (best of ``repeats`` passes, run in turns so that
    all see the same machine load)."""
    for fn in fns:
        fn()  # warm-up
    best = [np.inf] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return [n_images / b for b in best]


def cpu_use(fn, n_images, repeats=3):
    """``(CPU µs per image, busy cores)`` of ``fn()`` over ``repeats`` passes: process CPU time
    (all threads) per image, and CPU time ÷ wall time (2.0 = two threads never idle). Unlike
    images/s, the CPU figure does not depend on other processes' load.

    >>> us, cores = cpu_use(lambda: sample_images(4), 4, repeats=1)
    """
    fn()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        fn()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / repeats / n_images * 1e6, cpu / wall


def format_cpu(uses):
    """Lines ``name: CPU µs/image, busy cores`` of ``{name: cpu_use(...)}``.

    >>> format_cpu({"Pipeline, 2 threads": (700.0, 1.9)})
    '  Pipeline, 2 threads: 700 CPU µs/image, 1.90 cores busy'
    """
    return "\n".join(f"  {name}: {us:.0f} CPU µs/image, {cores:.2f} cores busy" for name, (us, cores) in uses.items())


def table(n=64, repeats=5, with_albumentations=True):
    """Rows (op, engine img/s, albumentations img/s or None, ratio or None), single thread,
    plus the pipeline at 1 and 2 threads.

    >>> rows = table(n=8, repeats=1)
    """
    cv2.setNumThreads(1)
    images = sample_images(n)
    alb = albumentations() if with_albumentations else None
    rows = []
    for name, make, make_alb, _ in CASES:
        op = make()
        fns = [lambda: engine_run(op, images)]
        if alb is not None and make_alb is not None:
            tr = make_alb(alb)
            fns.append(lambda: albumentations_run(tr, images))
        rates = best_rates(fns, n, repeats)
        theirs = rates[1] if len(rates) > 1 else None
        rows.append((name, rates[0], theirs, None if theirs is None else rates[0] / theirs))
    pipe = pipeline()
    params = pipe.sample_images(images, 0)
    one, two, bare_one, *bare_two = best_rates(
        [lambda: engine_run(pipe, images, threads=1), lambda: engine_run(pipe, images, threads=2),
         lambda: bare_opencv(images, params, 1), lambda: bare_opencv(images, params, 2, "halves"),
         lambda: bare_opencv(images, params, 2, "images")], n, repeats)
    return rows + thread_rows(one, two, bare_one, max(bare_two))


def thread_rows(one, two, bare_one, bare_two):
    """Table rows of the pipeline's thread scaling beside the bare OpenCV loop's (images/s)."""
    return [("Pipeline, 1 thread", one, None, None), ("Pipeline, 2 threads", two, None, two / one),
            ("Bare OpenCV loop, 1 thread", bare_one, None, None),
            ("Bare OpenCV loop, 2 threads (best split)", bare_two, None, bare_two / bare_one),
            ("Pipeline 2 threads ÷ bare OpenCV 2 threads", two, None, two / bare_two)]


def format_table(rows):
    """A Markdown table of :func:`table` rows with the geometric mean of the shared ratios."""
    lines = ["| op | engine img/s | albumentations img/s | ratio |", "|---|---:|---:|---:|"]
    for name, ours, theirs, ratio in rows:
        lines.append(f"| {name} | {ours:,.0f} | {'—' if theirs is None else f'{theirs:,.0f}'} "
                     f"| {'—' if ratio is None else f'{ratio:.2f}×'} |")
    shared = [r[3] for r in rows if r[2] is not None]
    if shared:
        gm = float(np.exp(np.mean(np.log(shared))))
        lines.append(f"| geometric mean ({len(shared)} shared ops) | | | {gm:.2f}× |")
    return "\n".join(lines)
