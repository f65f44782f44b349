"""Output files written atomically: a temporary name in the same folder, then a rename.

An interrupted run therefore never leaves a half-written file that looks complete, and an
existing file is only replaced once its successor is whole.
"""
import contextlib
import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from engine.errors import UsageError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    >>> with atomic_path("out/report.html") as tmp:
    ...     Path(tmp).write_text("<html></html>")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix + ".part")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text):
    """Write ``text`` to ``path`` atomically (UTF-8).

    >>> write_text("out/report.html", "<html></html>")
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj):
    """Write ``obj`` as indented JSON atomically.

    >>> write_json("out/summary.json", {"accuracy": 0.97})
    """
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_image(path, rgb):
    """Write an H×W×3 RGB (or H×W gray) uint8 array as PNG/JPEG atomically.

    >>> write_image("out/a.png", np.zeros((8, 8, 3), np.uint8))
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise UsageError(f"images are written from uint8 arrays, got {rgb.dtype}")
    bgr = rgb[..., ::-1] if rgb.ndim == 3 else rgb
    ext = Path(path).suffix.lower() or ".png"
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(bgr))
    if not ok:
        raise UsageError(f"cannot encode an image as '{ext}': use .png or .jpg")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def write_npz(path, **arrays):
    """Write arrays into one compressed ``.npz`` atomically.

    >>> write_npz("out/cams.npz", raw=np.zeros((1, 3, 3), np.float32))
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
