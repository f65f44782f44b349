"""Image sets to stream through a model: files, the Shapes world, a Broden-layout folder.

A source has ``names`` (how ``index.csv`` refers to each image, re-readable by
:func:`read_named`) and ``batches(batch_size)`` yielding ``(start, images, labels)``: uint8 RGB
arrays and a class name (or None) per image.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.data.images import read_image
from engine.errors import DatasetError, UsageError
from engine.memory import check_fits

SYNTH_PREFIX = "synth:"


@dataclass(frozen=True)
class Source:
    """An ordered image set; ``load(start, stop)`` returns ``(images, labels)`` of that slice."""

    names: list
    load: object

    def __len__(self):
        return len(self.names)

    def batches(self, batch_size, first=0, stop=None):
        """Yield ``(start, images, labels)`` over images ``first .. stop-1`` (default: all).

        >>> [(start, len(images)) for start, images, labels in from_synth(100, seed=1).batches(32)]
        [(0, 32), (32, 32), (64, 32), (96, 4)]
        """
        stop = len(self) if stop is None else min(stop, len(self))
        for start in range(first, stop, batch_size):
            yield (start, *self.load(start, min(start + batch_size, stop)))


def from_paths(paths):
    """Image files; an image's label is the name of its folder (the ImageFolder convention).

    >>> from_paths(["data/cat/1.png", "data/dog/2.png"]).names
    ['data/cat/1.png', 'data/dog/2.png']
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise UsageError("no images given: pass image files, --synth N or --concepts DIR")
    return Source(paths, lambda start, stop: ([read_image(p) for p in paths[start:stop]],
                                              [Path(p).parent.name or None for p in paths[start:stop]]))


def from_synth(n, seed=0, size=(96, 96)):
    """``n`` Shapes-world images of ``seed``, named ``synth:SEED:INDEX``, labelled by shape class.

    >>> from_synth(3, seed=2).names
    ['synth:2:0', 'synth:2:1', 'synth:2:2']
    """
    from engine.data import synth

    n, seed = int(n), int(seed)
    if n < 1:
        raise UsageError(f"--synth needs at least one image, got {n}")
    check_fits(n * (sys.getsizeof(f"{SYNTH_PREFIX}{seed}:{n}") + 8), f"the names of {n} generated images",
               "generate fewer (--synth N)")  # the names list below, before any image

    def load(start, stop):
        scene = synth.generate(stop - start, seed=seed, size=size, start=start)
        return list(scene.images), [synth.CLASSES[k] for k in scene.labels]

    return Source([f"{SYNTH_PREFIX}{seed}:{i}" for i in range(n)], load)


def from_concepts(dataset):
    """The images of a Broden-layout dataset (``engine.data.broden.read_concepts``), in index order.

    >>> from engine.data import broden, synth
    >>> broden.write_concepts("concepts", [synth.generate(3, seed=0)])
    >>> from_concepts(broden.read_concepts("concepts")).names[:2]
    ['concepts/images/shapes/000000.png', 'concepts/images/shapes/000001.png']
    """
    root = dataset.root / "images"
    classes = dataset.classes or [None] * len(dataset)
    return Source([str(root / row["image"]) for row in dataset.rows],
                  lambda start, stop: ([dataset.image(i) for i in range(start, stop)], classes[start:stop]))


def choose(images=(), synth=None, seed=0, concepts=None):
    """The one image set named: image files, ``synth`` Shapes-world images of ``seed``, or the
    images of the Broden-layout folder ``concepts``; raises UsageError unless exactly one is given.

    >>> len(choose(synth=10)), choose(images=["a.png"]).names
    (10, ['a.png'])
    """
    given = [bool(images), synth is not None, concepts is not None]
    if sum(given) != 1:
        raise UsageError("give exactly one image set: IMAGES..., --synth N or --concepts DIR")
    if synth is not None:
        return from_synth(synth, seed=seed)
    if concepts is not None:
        from engine.data.broden import read_concepts

        return from_concepts(read_concepts(concepts))
    return from_paths(images)


def read_named(name, size=(96, 96)):
    """Read an image by its ``index.csv`` name: a file path or ``synth:SEED:INDEX``.

    >>> read_named("synth:0:5").shape
    (96, 96, 3)
    """
    if name.startswith(SYNTH_PREFIX):
        from engine.data import synth

        try:
            seed, index = (int(v) for v in name[len(SYNTH_PREFIX):].split(":"))
        except ValueError:
            raise DatasetError(f"'{name}' is not synth:SEED:INDEX") from None
        return synth.generate(1, seed=seed, size=size, start=index).images[0]
    return read_image(name)
