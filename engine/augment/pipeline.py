"""Op specifications as text (``"rotate:30,hflip,cutmix:1.0"``) and augmenting image files.

A spec is comma-separated ops; each op is a name followed by ``:``-separated arguments, either
positional (in the order listed by :data:`OPS`) or ``key=value``. A value ``lo..hi`` is a uniform
range, a plain number is fixed: ``rotate:-30..30``, ``affine:angle=15:scale=0.9..1.1``,
``randaugment:2:9``.
"""
from pathlib import Path

import numpy as np

from engine import augment as A
from engine.augment.mixing import Mixing
from engine.data.files import output_set, write_image
from engine.data.images import read_image
from engine.errors import InputShapeError, UsageError
from engine.viz.grid import grid

# name → (class, positional parameter names)
OPS = {
    "brightness": (A.Brightness, ["factor"]), "contrast": (A.Contrast, ["factor"]),
    "saturation": (A.Saturation, ["factor"]), "hue": (A.Hue, ["shift"]),
    "gamma": (A.Gamma, ["gamma"]), "solarize": (A.Solarize, ["threshold"]),
    "posterize": (A.Posterize, ["bits"]), "equalize": (A.Equalize, []),
    "autocontrast": (A.AutoContrast, []), "sharpness": (A.Sharpness, ["factor"]),
    "grayscale": (A.Grayscale, []), "hflip": (A.HorizontalFlip, []),
    "vflip": (A.VerticalFlip, []), "rotate90": (A.Rotate90, ["k"]),
    "rotate": (A.Rotate, ["angle"]), "randomcrop": (A.RandomCrop, ["size"]),
    "centercrop": (A.CenterCrop, ["size"]),
    "randomresizedcrop": (A.RandomResizedCrop, ["size", "scale"]),
    "resize": (A.Resize, ["size"]), "shear": (A.Shear, ["x", "y"]),
    "translate": (A.Translate, ["x", "y"]), "affine": (A.Affine, ["angle", "scale"]),
    "perspective": (A.Perspective, ["scale"]),
    "coarsedropout": (A.CoarseDropout, ["holes", "size"]),
    "erasing": (A.Erasing, ["scale", "ratio"]), "blur": (A.GaussianBlur, ["sigma"]),
    "noise": (A.GaussianNoise, ["std"]), "cutmix": (A.CutMix, ["alpha"]),
    "mixup": (A.MixUp, ["alpha"]), "randaugment": (A.RandAugment, ["n", "m"]),
    "trivialaugment": (A.TrivialAugment, []),
}


def _value(text, where):
    def number(t):
        try:
            v = float(t)
        except ValueError:
            if t.isidentifier():
                return t  # e.g. border=reflect
            raise UsageError(f"bad value '{t}' in '{where}': use a number or lo..hi") from None
        return int(v) if v.is_integer() and "." not in t else v

    if ".." in text:
        lo, hi = text.split("..", 1)
        return number(lo), number(hi)
    return number(text)


def parse_ops(spec):
    """Ops from a text spec.

    >>> parse_ops("rotate:-30..30,hflip")
    [Rotate(...), HorizontalFlip(p=1.0)]
    """
    ops = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, *args = part.split(":")
        key = name.strip().lower()
        if key not in OPS:
            raise UsageError(f"unknown op '{name}': choose from {', '.join(OPS)}")
        cls, positional = OPS[key]
        kwargs = {}
        for k, arg in enumerate(args):
            if "=" in arg:
                pname, text = arg.split("=", 1)
            elif k < len(positional):
                pname, text = positional[k], arg
            else:
                raise UsageError(f"too many arguments in '{part}': {key} takes "
                                 f"{', '.join(positional) or 'none'}")
            kwargs[pname.strip()] = _value(text.strip(), part)
        try:
            ops.append(cls(**kwargs))
        except TypeError as err:
            raise UsageError(f"bad argument in '{part}': {err}") from None
    if not ops:
        raise UsageError("no ops given: e.g. --ops 'rotate:30,hflip'")
    return ops


def augment(images, ops, seed=0, threads=1):
    """Run ``ops`` in order over a batch; mixing ops treat each image as its own class.

    Returns (augmented images, soft labels N×N: row i = how much of each input image i holds).

    >>> out, mix = augment(np.zeros((2, 8, 8, 3), np.uint8), parse_ops("hflip,mixup:0.4"))
    """
    n = len(images)
    labels = np.eye(n, dtype=np.float32)
    for k, op in enumerate(ops):
        step_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
        if isinstance(op, Mixing):
            images, labels = op(images, labels, seed=step_seed)
        else:
            images = op(images, seed=step_seed, threads=threads)
    return images, labels


def augment_files(paths, spec, out_dir, seed=0, threads=1):
    """Augment image files; writes ``<stem>_aug.png`` per input and ``grid.png`` (before/after),
    replacing an earlier run's ``*_aug.png`` and ``grid.png`` in ``out_dir`` as a whole.

    Returns the written paths and the mixing table (row i: share of each input in output i).

    >>> written, mix = augment_files(["cat.png", "dog.png"], "rotate:30", "out/aug")
    >>> [p.name for p in written], mix.shape
    (['cat_aug.png', 'dog_aug.png', 'grid.png'], (2, 2))
    """
    ops = parse_ops(spec)
    images = [read_image(p) for p in paths]
    same = len({im.shape for im in images}) == 1
    if any(isinstance(op, Mixing) for op in ops) and not same:
        raise InputShapeError("mixing ops need images of one size: put e.g. resize:224 first")
    batch = np.stack(images) if same else images
    out, mix = augment(batch, ops, seed=seed, threads=threads)
    out_dir = Path(out_dir)
    stems = [Path(p).stem for p in paths]
    unique = len(set(stems)) == len(stems)
    names = [f"{stem}_aug.png" if unique else f"{i}_{stem}_aug.png" for i, stem in enumerate(stems)]
    cells, labels = [], []
    for path, before, after in zip(paths, images, out):
        cells += [before, after]
        labels += [Path(path).name, "augmented"]
    with output_set(out_dir, ["*_aug.png", "grid.png"]) as stage:
        for name, image in zip(names, out):
            write_image(stage / name, image)
        write_image(stage / "grid.png", grid(cells, ncols=2 * min(len(images), 4), labels=labels))
    return [out_dir / name for name in [*names, "grid.png"]], mix
