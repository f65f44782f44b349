"""The images an audit or a comparison runs on: a folder (with an optional labels file) or the
Shapes world (labels, object masks and concept maps included).

>>> data = from_synth(200, seed=0)
>>> len(data), data.labels[:3], data.scene is not None
(200, array([5, 2, 7]), True)
"""
import csv
import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data.images import image_files, read_image
from engine.errors import DatasetError, UsageError


@dataclass(frozen=True)
class ImageSet:
    """uint8 RGB ``images`` with their ``names``; ``labels``: class indices (None without labels);
    ``scene``: the Shapes-world ground truth (masks and concept maps) when generated."""

    images: list
    names: list
    labels: np.ndarray | None = None
    scene: object = None

    def __len__(self):
        return len(self.images)

    def head(self, n):
        """The first ``n`` images (all of them when fewer), with their labels and ground truth.

        >>> len(from_synth(10).head(4)), len(from_synth(3).head(4))
        (4, 3)
        """
        n = min(int(n), len(self))
        scene = None if self.scene is None else _scene_head(self.scene, n)
        return ImageSet(self.images[:n], self.names[:n], None if self.labels is None else self.labels[:n], scene)


def _scene_head(scene, n):
    return type(scene)(**{k: ({f: m[:n] for f, m in v.items()} if isinstance(v, dict) else v[:n])
                          for k, v in vars(scene).items()})


def from_synth(n, seed=0):
    """``n`` Shapes-world images of ``seed`` (96×96), named ``synth:SEED:INDEX``.

    >>> from_synth(8).names[:2]
    ['synth:0:0', 'synth:0:1']
    """
    from engine.analyze import sources
    from engine.data import synth

    names = sources.from_synth(n, seed).names  # checks n; the names read_named re-reads
    scene = synth.generate(len(names), seed=int(seed))
    return ImageSet(list(scene.images), names, np.asarray(scene.labels), scene)


def from_folder(folder, labels=None, class_names=None):
    """The images under ``folder``, named by their paths relative to it.

    Without ``labels``: every image file (sorted, recursive), or ``folder`` may be a glob pattern
    (``"pics/*.jpg"``; images named by their paths). With ``labels``: the images a CSV
    file lists, columns ``image`` (path relative to ``folder``) and ``label`` (a class name of
    ``class_names`` or a class index), as ``onnxlens synth`` writes ``labels.csv``.

    >>> from_folder("shapes/images", labels="shapes/labels.csv", class_names=model.labels).labels[:3]
    array([5, 2, 7])
    """
    folder = Path(folder)
    if not folder.is_dir() and glob.has_magic(str(folder)) and labels is None:  # a pattern: names are the paths
        paths = image_files([folder])
        return ImageSet([read_image(p) for p in paths], [p.as_posix() for p in paths])
    if not folder.is_dir():
        raise UsageError(f"'{folder}' is not a folder: --images takes a folder of image files (or, without "
                         "--labels, a quoted glob pattern)")
    if labels is not None:
        names, classes = _read_labels(labels, class_names)
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DatasetError(f"'{labels}' lists {len(missing)} images missing from '{folder}', e.g. '{missing[0]}': "
                               "image paths are relative to the --images folder")
        return ImageSet([read_image(folder / n) for n in names], names, classes)
    paths = image_files([folder], recursive=True)
    return ImageSet([read_image(p) for p in paths], [p.relative_to(folder).as_posix() for p in paths])


def _read_labels(path, class_names):
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read labels file '{path}' ({err}): give a CSV with columns image,label") from None
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise DatasetError(f"'{path}' needs the columns image,label (as `onnxlens synth` writes labels.csv)")
    index = {name: i for i, name in enumerate(class_names or [])}
    classes = []
    for row in rows:
        label = row["label"].strip()
        if label in index:
            classes.append(index[label])
        elif label.isdigit():
            classes.append(int(label))
        else:
            raise DatasetError(f"label '{label}' of '{row['image']}' in '{path}' is neither a class name of the "
                               "model nor a class index")
    return [row["image"] for row in rows], np.asarray(classes, np.int64)


def choose(images=None, labels=None, synth=None, seed=0, class_names=None):
    """The image set of the command line: a folder (``images``, ``labels``) or ``synth`` images.

    >>> choose(synth=200).names[0]
    'synth:0:0'
    """
    if (images is None) == (synth is None):
        raise UsageError("give either --images DIR or --synth N")
    if synth is not None:
        if labels is not None:
            raise UsageError("--labels goes with --images: generated images carry their labels")
        return from_synth(synth, seed)
    return from_folder(images, labels, class_names)
