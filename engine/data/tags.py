"""Write what a model expects of its data (preprocessing, class names) into its ``metadata_props``.

Keys (read back by :class:`engine.Model`): ``preprocess``, ``channel_order``, ``mean``, ``std``,
``resize`` (see :mod:`engine.data.preprocess`) and ``labels`` (a JSON list). Only the metadata
changes: the graph and the weights are written back byte for byte, and weights kept in external
data files stay where they are (the tagged file references them).
"""
import json
import os
import shutil
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from engine.data.files import atomic_path, disk_errors
from engine.data.labels import read_labels
from engine.data.preprocess import METADATA_KEYS, resolve
from engine.errors import ModelLoadError, UsageError


def metadata_entries(preprocess=None, labels=None):
    """The metadata_props entries for ``preprocess`` (a preset or a mapping, as
    ``Model(preprocess=...)`` takes; checked) and ``labels`` (a file or a list of names).

    >>> metadata_entries({"preset": "unit", "channel_order": "bgr"}, ["cat", "dog"])
    {'preprocess': 'unit', 'channel_order': 'BGR', 'labels': '["cat", "dog"]'}
    """
    entries = {}
    if preprocess is not None:
        given = {"preset": preprocess} if isinstance(preprocess, str) else dict(preprocess)
        chosen = resolve(given)  # raises UsageError on a bad value
        for name in given:
            value = getattr(chosen, name)
            entries[METADATA_KEYS[name]] = ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else value
    if labels is not None:
        names = read_labels(labels) if isinstance(labels, (str, Path)) else [str(name) for name in labels]
        entries["labels"] = json.dumps(names, ensure_ascii=False)
    return entries


def tag(path, out=None, preprocess=None, labels=None):
    """Write ``preprocess`` and ``labels`` (see :func:`metadata_entries`) into the model at ``path``.

    With ``out``, a new file is written (an existing one is never replaced). Without it the model
    is rewritten in place and the previous file is kept as ``NAME.onnx.bak`` (``.bak1``, ``.bak2``
    ... when that exists): nothing the user had is lost. Both writes are atomic. Returns
    ``(written path, backup path or None)``.

    >>> tag("model.onnx", preprocess={"preset": "unit"}, labels=list("abcdefgh"))  # 8 classes
    (PosixPath('model.onnx'), PosixPath('model.onnx.bak'))
    """
    path = Path(path)
    entries = metadata_entries(preprocess, labels)
    if not entries:
        raise UsageError("nothing to write: give preprocessing settings and/or labels")
    try:
        model = onnx.load(str(path), load_external_data=False)  # external weights stay in their files
    except (OSError, DecodeError) as err:
        raise ModelLoadError(f"cannot read '{path}' as an ONNX model ({type(err).__name__}): check the path") from err
    _check_labels(model, entries, path)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    for key, value in [*kept, *entries.items()]:
        model.metadata_props.add(key=key, value=value)
    target = path if out is None else Path(out)
    if out is not None:
        if target.exists():
            raise UsageError(f"'{target}' exists: give a new file name, or leave the output out to tag in place")
        if _has_external_data(model) and target.resolve().parent != path.resolve().parent:
            raise UsageError(f"'{path.name}' keeps its weights in external files: write the tagged model into "
                             f"the same folder ('{path.parent}')")
    backup = None if out is not None else _backup(path)
    with disk_errors(target), atomic_path(target) as tmp:
        tmp.write_bytes(model.SerializeToString())
    return target, backup


def _check_labels(model, entries, path):
    if "labels" not in entries:
        return
    dims = model.graph.output[0].type.tensor_type.shape.dim
    classes = dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None
    count = len(json.loads(entries["labels"]))
    if classes is not None and classes != count:
        raise UsageError(f"{count} labels given but '{path.name}' has {classes} classes: fix the labels")


def _has_external_data(model):
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _backup(path):
    """Keep the file at ``path`` under the first free name NAME.bak, NAME.bak1, ... (a hard link
    where the file system allows, else a copy); returns that name."""
    backup, k = path.with_name(path.name + ".bak"), 0
    while backup.exists():
        k += 1
        backup = path.with_name(f"{path.name}.bak{k}")
    try:
        os.link(path, backup)
    except OSError:
        shutil.copy2(path, backup)
    return backup
