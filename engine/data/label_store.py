"""Decoded label maps of a Broden-layout dataset, kept on disk and memory-mapped (dissection's I/O).

Decoding a label-map PNG costs about as much as the model's forward pass on its image, so a
dissection reads each one once per dataset: the first run decodes the rows of a shard and writes
them as a store, the later ones map it. A store is a folder holding, per category, one flat
``<index>.npy`` of every label-map plane of its rows in (row, cell) order, uint8 when label.csv's
numbers fit (else uint16), and ``area.npy``, the pixels of each label number over those planes
(IoU's label areas, counted once); whole-image label numbers are not stored (they come from
index.csv). Stores live in ``labels-<dataset key>/`` of the
given folder, keyed by the dataset's path and the names, sizes and modification times of its csv
files and label maps, so a changed dataset gets a new key (and its old stores are removed).

>>> from engine.data.broden import read_concepts, write_concepts
>>> from engine.data import synth
>>> write_concepts("shapes-broden", synth.batches(16, seed=5))
>>> dataset = read_concepts("shapes-broden")
>>> store = LabelStore.build(dataset, "cache", 0, 16)   # decodes rows 0..15 once, writes the store
>>> store = LabelStore.open(dataset, "cache", 0, 16)    # later runs: None when not stored yet
>>> store.label_maps(3)["color"].shape
(1, 96, 96)
"""
import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from engine.errors import DatasetError

CSV_FILES = ("index.csv", "label.csv", "category.csv")


def dataset_key(dataset):
    """``<path hash>-<content hash>`` of a dataset: the content hash covers the names, sizes and
    modification times of its csv files and every label map it lists.

    >>> from engine.data.broden import read_concepts, write_concepts
    >>> from engine.data import synth
    >>> write_concepts("shapes-broden", synth.batches(4, seed=5))
    >>> [len(part) for part in dataset_key(read_concepts("shapes-broden")).split("-")]
    [12, 20]
    """
    root = Path(dataset.root).resolve()
    content = hashlib.sha256()
    names = [*CSV_FILES, *(f"images/{cell}" for row in dataset.rows for c in dataset.categories
                           for cell in row.get(c, ()) if isinstance(cell, str))]
    for name in names:
        try:
            stat = os.stat(os.path.join(root, name))
            content.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            content.update(f"{name}\0missing\n".encode())
    return f"{hashlib.sha256(str(root).encode()).hexdigest()[:12]}-{content.hexdigest()[:20]}"


class LabelStore:
    """The label maps of rows ``first .. stop-1`` of ``dataset``, decoded, as memory-mapped arrays.

    ``label_maps(i)`` gives what ``dataset.label_maps(i)`` gives (category → K×sh×sw label
    numbers), as uint8/uint16 views of the store instead of int32 copies where the cells are all
    files. ``label_area``: pixels per label number over every plane of the rows, whole-image
    numbers included (what counting the planes of ``label_maps`` would give).
    """

    def __init__(self, dataset, first, stop, arrays, stored_area, offsets):
        self.dataset, self.first, self.stop, self.arrays, self.offsets = dataset, first, stop, arrays, offsets
        self.label_area = np.array(stored_area, np.int64)
        for row in dataset.rows[first:stop]:
            for category in dataset.categories:
                for cell in row.get(category, ()):
                    if not isinstance(cell, str):
                        if cell >= len(self.label_area):
                            raise DatasetError(f"label number {cell} in index.csv exceeds label.csv: "
                                               "add it to label.csv or fix index.csv")
                        self.label_area[cell] += row["sh"] * row["sw"]

    @classmethod
    def open(cls, dataset, folder, first, stop, key=None):
        """The stored rows ``first .. stop-1``, or None when they are not stored (yet)."""
        path = _store_path(dataset, folder, first, stop, key)
        try:
            arrays = [np.asarray(np.load(path / f"{g}.npy", mmap_mode="r"))  # plain views: cheaper slices
                      for g in range(len(dataset.categories))]
            area = np.load(path / "area.npy")
        except (FileNotFoundError, ValueError):
            return None
        offsets = _offsets(dataset, first, stop)
        if [len(a) for a in arrays] != list(offsets[-1]) or area.shape != (len(dataset.labels),):
            return None
        return cls(dataset, first, stop, arrays, area, offsets)

    @classmethod
    def build(cls, dataset, folder, first, stop, key=None, decode=map):
        """Decode rows ``first .. stop-1`` (``decode(function, rows)``: map or a pool's map), write
        their store atomically (a folder renamed into place) and return it mapped."""
        path = _store_path(dataset, folder, first, stop, key)
        _remove_stale(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        offsets = _offsets(dataset, first, stop)
        dtype = np.uint8 if len(dataset.labels) <= 256 else np.uint16
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part"))
        try:
            arrays = [np.lib.format.open_memmap(tmp / f"{g}.npy", "w+", dtype, (int(size),))
                      for g, size in enumerate(offsets[-1])]

            def write(i):
                maps = dataset.label_maps(i)
                for g, category in enumerate(dataset.categories):
                    files = [(cell, plane) for cell, plane in zip(dataset.rows[i].get(category, ()), maps[category])
                             if isinstance(cell, str)]
                    for cell, plane in files:
                        if plane.max(initial=0) > np.iinfo(dtype).max:
                            raise DatasetError(f"label number {plane.max()} in {cell} exceeds label.csv: "
                                               "add it to label.csv or fix the label map")
                    files = [plane for _, plane in files]
                    if files:
                        start = offsets[i - first, g]
                        arrays[g][start:start + sum(p.size for p in files)] = np.concatenate([p.ravel() for p in files])

            for _ in decode(write, range(first, stop)):
                pass
            area = np.zeros(len(dataset.labels), np.int64)
            for array in arrays:
                array.flush()
                area += np.bincount(array, minlength=len(area))[:len(area)]  # numbers were checked above
            np.save(tmp / "area.npy", area)
            del arrays
            if path.is_dir() and cls.open(dataset, folder, first, stop, key) is None:
                shutil.rmtree(path, ignore_errors=True)  # a store of an older layout (no area.npy): replace it
            with contextlib.suppress(OSError):  # another run stored the same rows first: keep theirs
                os.rename(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls.open(dataset, folder, first, stop, key)

    def label_maps(self, i):
        """Category → K×sh×sw label numbers of row ``i`` (``first <= i < stop``)."""
        row = self.dataset.rows[i]
        shape = (row["sh"], row["sw"])
        out = {}
        for g, category in enumerate(self.dataset.categories):
            cells = row.get(category, [])
            start = self.offsets[i - self.first, g]
            files = sum(isinstance(cell, str) for cell in cells)
            stored = self.arrays[g][start:start + files * shape[0] * shape[1]].reshape(files, *shape)
            if files == len(cells):
                out[category] = stored
                continue
            planes, k = [], 0
            for cell in cells:
                if isinstance(cell, str):
                    planes.append(stored[k].astype(np.int32))
                    k += 1
                else:
                    planes.append(np.full(shape, cell, np.int32))
            out[category] = np.stack(planes)
        return out


def _offsets(dataset, first, stop):
    """(stop − first + 1)×categories: where each row's planes start in each category's array
    (last row: each array's length)."""
    sizes = np.zeros((stop - first + 1, len(dataset.categories)), np.int64)
    for i in range(first, stop):
        row = dataset.rows[i]
        for g, category in enumerate(dataset.categories):
            sizes[i - first + 1, g] = sum(isinstance(c, str) for c in row.get(category, ())) * row["sh"] * row["sw"]
    return np.cumsum(sizes, axis=0)


def _store_path(dataset, folder, first, stop, key):
    return Path(folder) / f"labels-{key or dataset_key(dataset)}" / f"{first}-{stop}"


def _remove_stale(current):
    """Remove the stores of earlier versions of the same dataset (same path hash, other content)."""
    if current.parent.is_dir():
        for other in current.parent.glob(current.name.rsplit("-", 1)[0] + "-*"):
            if other != current:
                shutil.rmtree(other, ignore_errors=True)
