"""Class names (from a labels file, one name per line or a JSON list, or model metadata) and class scores."""
import json
from pathlib import Path

import numpy as np

from engine.errors import UsageError


def parse_labels(text, origin):
    """Parse class names from ``text``: a JSON list of strings, else one name per non-blank line.

    ``origin`` names the source in error messages.

    >>> parse_labels('["cat", "dog"]', "labels.json")
    ['cat', 'dog']
    """
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            names = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise UsageError(f"{origin} looks like JSON but does not parse ({err.msg}): write a JSON list of names") from err
        if not all(isinstance(name, str) for name in names):
            raise UsageError(f"{origin} must list class names as strings")
        return names
    return [line.strip() for line in stripped.splitlines() if line.strip()]


def read_labels(path):
    """Read class names from a file: one name per line, or a JSON list.

    >>> _ = Path("labels.txt").write_text("circle\\nsquare\\ntriangle\\n")
    >>> read_labels("labels.txt")
    ['circle', 'square', 'triangle']
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read labels file '{path}': check the path (one name per line, or a JSON list)") from err
    return parse_labels(text, f"labels file '{path}'")


def check_labels(labels, classes):
    """Raise UsageError when there are labels but not ``classes`` of them (a dynamic class
    dimension is only known once the model has run).

    >>> check_labels(["cat", "dog"], 2)
    """
    if labels is not None and len(labels) != classes:
        raise UsageError(f"{len(labels)} labels given but the model outputs {classes} classes: fix the labels "
                         "(onnxlens tag MODEL --labels FILE retags the model)")


def probabilities(output):
    """Rows of ``output`` (flattened per image) as probability vectors: kept if they already are
    (non-negative, each summing to 1 within 1e-3), else passed through a softmax.

    >>> probabilities(np.array([[0.0, np.log(3.0)]]))
    array([[0.25, 0.75]])
    """
    rows = np.asarray(output, dtype=np.float64).reshape(len(output), -1)
    if rows.min() >= 0 and np.abs(rows.sum(axis=1) - 1).max() <= 1e-3:
        return rows
    rows = np.exp(rows - rows.max(axis=1, keepdims=True))
    rows /= rows.sum(axis=1, keepdims=True)
    return rows
