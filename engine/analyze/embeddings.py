"""Embeddings: one feature vector per image at a layer, streamed to ``DIR/features.npy``.

A folder written by :func:`embed` holds ``features.npy`` (float32 N×D, memory-mapped when read),
``index.csv`` (``image``, ``label``) and ``embedding.json`` (model path, layer, n, dim).
"""
import contextlib
import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.analyze.accumulators import Embeddings
from engine.analyze.stream import stream
from engine.data.files import output_set, write_json, write_text
from engine.errors import DatasetError, LayerError
from engine.scale import runner, shards


@dataclass(frozen=True)
class Embedding:
    """Features (N×D, possibly a memmap), image names, labels (str or None) and provenance."""

    features: np.ndarray
    names: list
    labels: list
    model: str
    layer: str


def embedding_layer(model, layer="auto"):
    """``auto``: the last 4-D layer of the catalog (the pooled penultimate feature of a CNN with
    global pooling; a spatial map is averaged); else the given tensor name.

    >>> embedding_layer(model)
    '/pool/GlobalAveragePool_output_0'
    """
    if layer != "auto":
        return layer
    if not model.layers:
        raise LayerError(f"'{model.path.name}' has no 4-D layer: name the tensor to embed with --layer")
    return model.layers[-1].name


def finite(features, needs):
    """``features`` as a float32 array, or a DatasetError when rows hold NaN or infinite values
    (``needs``: what needs finite numbers, e.g. "a t-SNE projection"). Such rows are refused, not
    dropped: they come from the model (NaN weights, an overflow), so every row is suspect.

    >>> finite(np.ones((3, 2)), "a projection").shape
    (3, 2)
    """
    features = np.asarray(features, np.float32)
    bad = int((~np.isfinite(features.reshape(len(features), -1))).any(axis=1).sum()) if features.size else 0
    if bad:
        raise DatasetError(f"{bad} of {len(features)} feature rows hold NaN or infinite values, and {needs} needs "
                           "finite numbers: the model computes non-finite features at this layer (check its weights)")
    return features


def pooled(activation):
    """One row per image: spatial mean of an N×C×H×W map, else the flattened tensor.

    >>> pooled(np.ones((2, 5, 3, 3))).shape
    (2, 5)
    """
    activation = np.asarray(activation, np.float32)
    if activation.ndim == 4:
        return activation.mean(axis=(2, 3))
    return activation.reshape(len(activation), -1)


@dataclass(frozen=True)
class EmbedJob:
    """The rows of a shard of ``source`` at ``layer`` (a step of :mod:`engine.scale`)."""

    source: object
    layer: str
    batch_size: int

    def rows(self, model, first, stop):
        """(Embeddings of images ``first .. stop-1``, their labels)."""
        acc, labels = None, []
        for start, _, batch_labels, acts in stream(model, self.source, [self.layer], self.batch_size,
                                                   progress=False, first=first, stop=stop):
            rows = pooled(acts[self.layer])
            if acc is None:
                acc = Embeddings(stop - first, rows.shape[1], first=first)
            acc.update(rows, start)
            labels += batch_labels
        return acc, labels


def embed(model, source, layer="auto", out=None, batch_size=32, progress=None, scale=None):
    """Features of every image of ``source`` at ``layer``; written to ``out`` when given.
    ``scale``: run in shards on Ray (:class:`engine.scale.Scale`); the features are the same.

    >>> from engine.analyze.sources import from_synth
    >>> embed(model, from_synth(8, seed=3), out="emb", progress=False).features.shape
    (8, 96)
    """
    layer = embedding_layer(model, layer)
    labels, acc = [], None
    job = EmbedJob(source, layer, int(batch_size))
    owned = ["features.npy", "index.csv", "embedding.json"]
    with output_set(out, owned) if out is not None else contextlib.nullcontext() as stage:
        path = stage / "features.npy" if stage is not None else None
        with runner(model, job, scale, job.batch_size, progress) as run:
            for part, part_labels in run.map("rows", shards(len(source), run.shard_size), label="embed"):
                if acc is None:
                    acc = Embeddings(len(source), part.dim, path=path)
                acc.merge(part)
                labels += part_labels
            features = acc.result()
            del acc
        if stage is not None:
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(["image", "label"])
            writer.writerows([name, "" if label is None else label] for name, label in zip(source.names, labels))
            write_text(stage / "index.csv", buf.getvalue())
            write_json(stage / "embedding.json", {"model": os.path.abspath(model.path), "layer": layer,
                                                  "n": len(source), "dim": int(features.shape[1]),
                                                  "index_sha256": _digest(buf.getvalue())})
            del features
    if out is not None:
        features = np.load(Path(out) / "features.npy", mmap_mode="r")  # the swapped-in file, not the staged one
    return Embedding(features, list(source.names), labels, str(model.path), layer)


def load_embedding(folder):
    """Read a folder written by :func:`embed` (features memory-mapped), checking that its three
    files belong to one run: rows, dims and the digest of ``index.csv`` agree with ``embedding.json``.

    >>> from engine.analyze.sources import from_synth
    >>> _ = embed(model, from_synth(8, seed=3), out="emb", progress=False)
    >>> load_embedding("emb").labels[:2]
    ['hexagon', 'heart']
    """
    folder = Path(folder)
    redo = "re-run `onnxlens embed` into it"
    try:
        meta = json.loads((folder / "embedding.json").read_text(encoding="utf-8"))
        features = np.load(folder / "features.npy", mmap_mode="r")
        index = (folder / "index.csv").read_text(encoding="utf-8")
        rows = list(csv.DictReader(io.StringIO(index, newline="")))
        names, labels = [r["image"] for r in rows], [r["label"] or None for r in rows]
        model, layer, n, dim = meta["model"], meta["layer"], int(meta["n"]), int(meta["dim"])
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as err:
        raise DatasetError(f"{folder} is not an embedding folder ({type(err).__name__}: "
                           f"{' '.join(str(err).split())[:200]}): make one with `onnxlens embed`") from None
    if features.ndim != 2 or features.dtype.kind != "f":
        raise DatasetError(f"{folder}/features.npy holds {features.dtype} {features.shape}, not N×D floats: {redo}")
    if not len(rows) == len(features) == n or features.shape[1] != dim:
        raise DatasetError(f"{folder} mixes runs: index.csv has {len(rows)} rows, features.npy {features.shape[0]}×"
                           f"{features.shape[1]}, embedding.json says {n}×{dim}: {redo}")
    if "index_sha256" in meta and meta["index_sha256"] != _digest(index):
        raise DatasetError(f"{folder} mixes runs: index.csv is not the one embedding.json was written with: {redo}")
    return Embedding(features, names, labels, model, layer)


def _digest(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
