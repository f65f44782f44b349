"""The images an audit or a comparison runs on: a folder (with an optional labels file) or the
Shapes world (labels, object masks and concept maps included).

>>> data = from_synth(8, seed=0)
>>> len(data), data.labels[:3], data.scene is not None
(8, array([6, 4, 7]), True)
"""
import csv
import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data.images import IMAGE_SUFFIXES, image_files, read_image
from engine.errors import DatasetError, UsageError


@dataclass(frozen=True)
class ImageSet:
    """uint8 RGB ``images`` with their ``names``; ``labels``: class indices (None without labels);
    ``class_names``: {index: name} the data itself gives (the Shapes classes, a labels file's
    ``name`` column); ``masks``: N×H×W bool object masks (generated, or ``--masks DIR``);
    ``scene``: the Shapes-world ground truth (masks and concept maps) when generated."""

    images: list
    names: list
    labels: np.ndarray | None = None
    scene: object = None
    masks: np.ndarray | None = None
    class_names: dict | None = None

    def __len__(self):
        return len(self.images)

    def head(self, n):
        """The first ``n`` images (all of them when fewer), with their labels and ground truth.

        >>> len(from_synth(10).head(4)), len(from_synth(3).head(4))
        (4, 3)
        """
        n = min(int(n), len(self))
        cut = lambda values: None if values is None else values[:n]  # noqa: E731
        scene = None if self.scene is None else _scene_head(self.scene, n)
        return ImageSet(self.images[:n], self.names[:n], cut(self.labels), scene, cut(self.masks), self.class_names)


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
    return ImageSet(list(scene.images), names, np.asarray(scene.labels), scene, np.asarray(scene.masks, bool),
                    dict(enumerate(synth.CLASSES)))


def from_folder(folder, labels=None, class_names=None, masks=None):
    """The images under ``folder``, named by their paths relative to it.

    Without ``labels``: every image file (sorted, recursive), or ``folder`` may be a glob pattern
    (``"pics/*.jpg"``; images named by their paths). With ``labels``: the images a CSV
    file lists, columns ``image`` (path relative to ``folder``) and ``label`` (a class name of
    ``class_names`` or a class index), as ``onnxlens synth`` writes ``labels.csv``; an optional
    ``name`` column names the class of an index. ``masks``: a folder holding one object mask per
    image at the same relative path (any image suffix; non-zero = object).

    >>> import shutil; Path("shapes").mkdir(); _ = [shutil.copy(f, "shapes") for f in ("cat.png", "dog.png")]
    >>> _ = Path("labels.csv").write_text("image,label\\ncat.png,star\\ndog.png,2\\n")
    >>> from_folder("shapes", labels="labels.csv", class_names=model.labels).labels
    array([3, 2])
    """
    folder = Path(folder)
    if not folder.is_dir() and glob.has_magic(str(folder)) and labels is None and masks is None:  # names: the paths
        paths = image_files([folder])
        return ImageSet([read_image(p) for p in paths], [p.as_posix() for p in paths])
    if not folder.is_dir():
        raise UsageError(f"'{folder}' is not a folder: --images takes a folder of image files (or, without "
                         "--labels and --masks, a quoted glob pattern)")
    names, classes, named = None, None, None
    if labels is not None:
        names, classes, named = _read_labels(labels, class_names)
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DatasetError(f"'{labels}' lists {len(missing)} images missing from '{folder}', e.g. '{missing[0]}': "
                               "image paths are relative to the --images folder")
    else:
        names = [p.relative_to(folder).as_posix() for p in image_files([folder], recursive=True)]
    images = [read_image(folder / n) for n in names]
    return ImageSet(images, names, classes, masks=None if masks is None else read_masks(masks, names, images),
                    class_names=named)


def read_masks(folder, names, images):
    """The object mask of each image ``names[i]`` from ``folder`` (same relative path, any image
    suffix), as N×H×W bool at each image's size.

    >>> Path("masks").mkdir(); cv2.imwrite("masks/cat.png", np.full((96, 96), 255, np.uint8))
    True
    >>> read_masks("masks", ["cat.png"], images[:1]).shape
    (1, 96, 96)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"'{folder}' is not a folder: --masks takes a folder of mask images named like the images")
    masks = []
    for name, picture in zip(names, images):
        stem = Path(name).with_suffix("")
        found = [p for p in sorted((folder / stem).parent.glob(stem.name + ".*"))
                 if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if not found:
            raise DatasetError(f"no mask for '{name}' in '{folder}': give one mask per image at the same relative "
                               "path (e.g. masks/sub/a.png for images/sub/a.jpg)")
        mask = read_image(found[0]).max(axis=2) > 0
        if mask.shape != picture.shape[:2]:
            raise DatasetError(f"the mask '{found[0]}' is {mask.shape[1]}×{mask.shape[0]} but its image is "
                               f"{picture.shape[1]}×{picture.shape[0]}: give masks at the images' size")
        masks.append(mask)
    if len({m.shape for m in masks}) > 1:
        raise DatasetError("the images differ in size: the pointing game with --masks needs images of one size")
    return np.stack(masks)


def _read_labels(path, class_names):
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read labels file '{path}' ({err}): give a CSV with columns image,label") from None
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise DatasetError(f"'{path}' needs the columns image,label (as `onnxlens synth` writes labels.csv)")
    index = {name: i for i, name in enumerate(class_names or [])}
    classes, named = [], {}
    for row in rows:
        label = row["label"].strip()
        if label in index:
            classes.append(index[label])
        elif label.isdigit():
            if class_names and int(label) >= len(class_names):
                raise DatasetError(f"label {label} of '{row['image']}' in '{path}' is beyond the model's "
                                   f"{len(class_names)} classes: use indices 0..{len(class_names) - 1} or class names")
            classes.append(int(label))
        else:
            raise DatasetError(f"label '{label}' of '{row['image']}' in '{path}' is neither a class name of the "
                               "model nor a class index")
        if (row.get("name") or "").strip():
            named[classes[-1]] = row["name"].strip()
    return [row["image"] for row in rows], np.asarray(classes, np.int64), named or None


def choose(images=None, labels=None, synth=None, seed=0, class_names=None, masks=None):
    """The image set of the command line: a folder (``images``, ``labels``, ``masks``) or ``synth`` images.

    >>> choose(synth=4).names[0]
    'synth:0:0'
    """
    if (images is None) == (synth is None):
        raise UsageError("give either --images DIR or --synth N")
    if synth is not None:
        if labels is not None:
            raise UsageError("--labels goes with --images: generated images carry their labels")
        if masks is not None:
            raise UsageError("--masks goes with --images: generated images carry their object masks")
        return from_synth(synth, seed)
    return from_folder(images, labels, class_names, masks)
