"""Concept datasets in the Broden layout (Bau et al., Network Dissection), written and read.

A dataset folder holds::

    index.csv      image,split,ih,iw,sh,sw,<category>...   one row per image; a category cell lists
                   label-map PNGs (relative to images/) or whole-image label numbers, ';'-separated
    label.csv      number,name,category,frequency,coverage,syns   (number 0 is '-', unlabelled)
    category.csv   name,first,last,count,frequency
    c_<cat>.csv    code,number,name,frequency,coverage   (per-category label codes, as NetDissect reads)
    labels.csv     image,label   (the class name of each image; onnxlens' addition)
    images/        the images and label maps; a label map stores the label number as R + 256·G
                   (``write_concepts`` puts images in images/shapes/, label maps in images/shapes-labels/,
                   so a folder or glob of the images never picks up a label map)

``write_concepts`` writes Shapes-world scenes in this layout; ``read_concepts`` reads it back
(including real Broden's several files per cell and numeric whole-image labels).
"""
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.data import synth
from engine.data.files import output_set, write_image, write_text
from engine.data.images import read_image
from engine.errors import DatasetError, ImageError

INDEX_META = ("image", "split", "ih", "iw", "sh", "sw")
LABEL_MAPS = "shapes-labels"  # folder (under images/) of the label maps write_concepts writes


def _csv(rows, fields):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def encode_label_map(labels):
    """int H×W label numbers → uint8 H×W×3 RGB with number = R + 256·G (Broden's encoding).

    >>> encode_label_map(np.array([[300]]))[0, 0].tolist()
    [44, 1, 0]
    """
    labels = np.asarray(labels, np.int64)
    rgb = np.zeros(labels.shape + (3,), np.uint8)
    rgb[..., 0], rgb[..., 1] = labels % 256, labels // 256
    return rgb


def write_concepts(out, scenes, split="train", progress=None):
    """Write Shapes-world scenes (an iterable of ``synth.Scene`` batches) as a Broden dataset.

    Label numbers run over the families of ``synth.CONCEPTS`` in order (shape, color, texture,
    background). The dataset is swapped in whole: an interrupted run leaves the previous one (or none).

    >>> write_concepts("shapes-broden", synth.batches(16, seed=5))
    """
    owned = ["images", "index.csv", "label.csv", "category.csv", "labels.csv", "c_*.csv"]
    with output_set(out, owned) as stage:
        _write_concepts(stage, scenes, split, progress)


def _write_concepts(out, scenes, split, progress):
    families = list(synth.CONCEPTS)
    first, number = {}, 1
    for family in families:
        first[family] = number
        number += len(synth.CONCEPTS[family])
    freq, cover = np.zeros(number, np.int64), np.zeros(number)
    index, classes, i = [], [], 0
    for scene in scenes:
        for k in range(len(scene)):
            name = f"shapes/{i:06d}"
            h, w = scene.masks.shape[1:]
            write_image(out / "images" / f"{name}.png", scene.images[k])
            row = {"image": f"{name}.png", "split": split, "ih": h, "iw": w, "sh": h, "sw": w}
            for family in families:
                local = scene.concepts[family][k].astype(np.int64)
                labels = np.where(local > 0, local + first[family] - 1, 0)
                label_map = f"{LABEL_MAPS}/{i:06d}_{family}.png"  # apart from the images: globs of those miss it
                write_image(out / "images" / label_map, encode_label_map(labels))
                row[family] = label_map
                counts = np.bincount(labels.ravel(), minlength=number)
                freq += counts > 0
                cover += counts / labels.size
            index.append(row)
            classes.append({"image": row["image"], "label": synth.CLASSES[scene.labels[k]]})
            i += 1
            if progress is not None:
                progress.update(1)
    freq[0], cover[0] = 0, 0.0
    labels, categories = [{"number": 0, "name": "-", "category": "", "frequency": 0, "coverage": 0.0, "syns": ""}], []
    for family in families:
        names = synth.CONCEPTS[family]
        numbers = range(first[family], first[family] + len(names))
        codes = [{"code": 0, "number": 0, "name": "-", "frequency": 0, "coverage": 0.0}]
        for code, (n, name) in enumerate(zip(numbers, names), 1):
            labels.append({"number": n, "name": name, "category": f"{family}({freq[n]})", "frequency": freq[n],
                           "coverage": round(cover[n], 4), "syns": name})
            codes.append({"code": code, "number": n, "name": name, "frequency": freq[n], "coverage": round(cover[n], 4)})
        write_text(out / f"c_{family}.csv", _csv(codes, ["code", "number", "name", "frequency", "coverage"]))
        categories.append({"name": family, "first": numbers[0], "last": numbers[-1], "count": len(names),
                           "frequency": len(index)})
    write_text(out / "label.csv", _csv(labels, ["number", "name", "category", "frequency", "coverage", "syns"]))
    write_text(out / "category.csv", _csv(categories, ["name", "first", "last", "count", "frequency"]))
    write_text(out / "labels.csv", _csv(classes, ["image", "label"]))
    write_text(out / "index.csv", _csv(index, [*INDEX_META, *families]))


@dataclass(frozen=True)
class ConceptDataset:
    """A Broden-layout concept dataset read by ``read_concepts``.

    rows: index.csv rows (``image``, ``split``, ints ``ih iw sh sw`` and, per category, a list of
    PNG names or whole-image label numbers); labels: label.csv rows by number (``name``,
    ``category`` as {category: count}, ``frequency``, ``coverage``, ``syns`` list); categories:
    category names in category.csv order; classes: the class name per row from labels.csv, or
    None when the folder has no labels.csv.
    """

    root: Path
    rows: list
    labels: list
    categories: list
    classes: list

    def __len__(self):
        return len(self.rows)

    def image(self, i):
        """The RGB uint8 image of row ``i``.

        >>> write_concepts("shapes-broden", synth.batches(16, seed=5))  # a small Broden-layout set
        >>> read_concepts("shapes-broden").image(0).shape
        (96, 96, 3)
        """
        return _read_png(self.root / "images" / self.rows[i]["image"])

    def label_maps(self, i):
        """Category → int32 K×sh×sw label numbers of row ``i`` (a whole-image label fills a plane).

        >>> write_concepts("shapes-broden", synth.batches(16, seed=5))  # a small Broden-layout set
        >>> maps = read_concepts("shapes-broden").label_maps(0)
        >>> maps["color"].shape
        (1, 96, 96)
        """
        row = self.rows[i]
        shape = (row["sh"], row["sw"])
        out = {}
        for category in self.categories:
            planes = []
            for cell in row.get(category, []):
                if isinstance(cell, int):
                    planes.append(np.full(shape, cell, np.int32))
                    continue
                numbers = _read_label_map(self.root / "images" / cell)
                if numbers.shape != shape:
                    raise DatasetError(f"label map {cell} is {numbers.shape[1]}x{numbers.shape[0]}, index.csv says "
                                       f"{shape[1]}x{shape[0]}: fix sh/sw in index.csv")
                planes.append(numbers)
            out[category] = np.stack(planes) if planes else np.zeros((0, *shape), np.int32)
        return out


def _read_png(path):
    try:
        return read_image(path)
    except ImageError as err:
        raise DatasetError(f"cannot read {path}: the file is missing or not an image; "
                           "restore it or regenerate the dataset") from err


def _read_label_map(path):
    """int32 H×W label numbers R + 256·G of a label-map PNG, decoded as stored (8-bit BGR or
    BGRA: no colour conversion); any other kind goes through :func:`_read_png`."""
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if bgr is None or bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] < 3:
        rgb = _read_png(path)
        return rgb[..., 0].astype(np.int32) + 256 * rgb[..., 1].astype(np.int32)
    numbers = bgr[..., 1].astype(np.int32)
    numbers <<= 8
    numbers += bgr[..., 2]
    return numbers


def _read_csv(path, required):
    if not path.is_file():
        raise DatasetError(f"{path} is missing: point to a folder in the Broden layout (index.csv, label.csv, category.csv)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        missing = set(required) - set(reader.fieldnames or [])
    if missing:
        raise DatasetError(f"{path} lacks the column(s) {', '.join(sorted(missing))}: it is not in the Broden layout")
    return rows


def _cell(text):
    return [int(v) if v.isdigit() else v for v in text.split(";") if v]


MAX_LABEL = 2**16 - 1  # masks hold a label number in their red and green bytes


def _int(path, value, high=None):
    """``value`` as an integer from 0 to ``high`` (no upper limit when None), else DatasetError."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{path} holds '{value}' where a number belongs: fix or regenerate the file") from None
    if number < 0 or (high is not None and number > high):
        accepted = f"0..{high}" if high is not None else "0 or more"
        raise DatasetError(f"{path} holds {number} where a number {accepted} belongs: fix or regenerate the file")
    return number


def read_concepts(root):
    """Read a Broden-layout dataset folder (ours or the real Broden).

    >>> write_concepts("shapes-broden", synth.batches(16, seed=5))  # a small Broden-layout set
    >>> ds = read_concepts("shapes-broden")
    >>> ds.categories, ds.labels[1]["name"]
    (['shape', 'color', 'texture', 'background'], 'circle')
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder: give the folder that holds index.csv")
    index = _read_csv(root / "index.csv", INDEX_META)
    categories = [r["name"] for r in _read_csv(root / "category.csv", ["name"])]
    rows = []
    for r in index:
        row = {"image": r["image"], "split": r["split"]}
        row.update({k: _int(root / "index.csv", r[k]) for k in ("ih", "iw", "sh", "sw")})
        row.update({c: _cell(r.get(c) or "") for c in categories})
        rows.append(row)
    labels = []
    for r in _read_csv(root / "label.csv", ["number", "name", "category"]):
        number = _int(root / "label.csv", r["number"], MAX_LABEL)
        labels += [None] * (number + 1 - len(labels))
        labels[number] = {
            "number": number, "name": r["name"],
            "category": {m.group(1): int(m.group(2)) for m in re.finditer(r"([^;(]+)\((\d+)\)", r["category"])},
            "frequency": _int(root / "label.csv", r.get("frequency") or 0),
            "coverage": float(r.get("coverage") or 0),
            "syns": [s for s in (r.get("syns") or "").split(";") if s],
        }
    classes = None
    if (root / "labels.csv").is_file():
        by_image = {r["image"]: r["label"] for r in _read_csv(root / "labels.csv", ["image", "label"])}
        classes = [by_image.get(row["image"]) for row in rows]
    return ConceptDataset(root, rows, labels, categories, classes)
