"""Class names: from a labels file (one name per line, or a JSON list) or model metadata."""
import json
from pathlib import Path

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

    >>> read_labels("labels.txt")
    ['circle', 'square', 'triangle']
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read labels file '{path}': check the path (one name per line, or a JSON list)") from err
    return parse_labels(text, f"labels file '{path}'")
