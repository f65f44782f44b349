"""Output files written atomically: a temporary name in the same folder, then a rename.

An interrupted run therefore never leaves a half-written file that looks complete, and an
existing file is only replaced once its successor is whole. A command writing several files
writes them through :func:`output_set`, which swaps the whole set in at the end.
"""
import contextlib
import errno
import fnmatch
import glob
import json
import os
import re
import shutil
import signal
import stat
import tempfile
from pathlib import Path

import cv2
import numpy as np

from engine.errors import OutputError, UsageError

# Errors of the place written to, not of the program: said in one line.
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                errno.EISDIR, errno.EFBIG}


@contextlib.contextmanager
def disk_errors(path):
    """Turn a full, read-only or forbidden disk while writing ``path`` into an :class:`OutputError`.

    >>> with disk_errors("a.txt"):
    ...     _ = Path("a.txt").write_text("a")
    """
    try:
        yield
    except OSError as err:
        if err.errno not in _DISK_ERRORS:
            raise
        raise OutputError(f"cannot write {_final_name(path)}: {os.strerror(err.errno)}: free space or choose "
                          "another --out") from None


def _final_name(path):
    """``path`` as the user will see it: a staging folder of :func:`output_set` named as its target."""
    path = re.sub(r"(^|/)\.([^/]+)\.set-\d+-[^/.-]*(?=/|$)", r"\1\2", str(path))
    return re.sub(r"/\.onnxlens-set-\d+-[^/.-]*(?=/|$)", "", path)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds
    (OSError as raised: the ``write_*`` functions below say a disk error in one line).

    >>> with atomic_path("out/report.html") as tmp:
    ...     _ = Path(tmp).write_text("<html></html>")
    >>> Path("out/report.html").read_text()
    '<html></html>'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix + ".part")
    os.close(fd)
    usual_permissions(tmp)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def usual_permissions(path):
    """Give a file 0666, a folder 0777, less the umask: what ``open`` and ``mkdir`` give, where
    ``mkstemp`` / ``mkdtemp`` give 0600 / 0700.

    >>> folder = tempfile.mkdtemp(dir=".")  # 0700
    >>> usual_permissions(folder)
    >>> mask = os.umask(0); _ = os.umask(mask)
    >>> os.stat(folder).st_mode & 0o777 == 0o777 & ~mask
    True
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)


def write_text(path, text):
    """Write ``text`` to ``path`` atomically (UTF-8).

    >>> write_text("out/report.html", "<html></html>")
    """
    with disk_errors(path), atomic_path(path) as tmp:
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
    with disk_errors(path), atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def write_npz(path, **arrays):
    """Write arrays into one compressed ``.npz`` atomically.

    >>> write_npz("out/cams.npz", raw=np.zeros((1, 3, 3), np.float32))
    """
    with disk_errors(path), atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def fault_point(name):
    """Kill this process (SIGKILL) at the named point when ``ONNXLENS_FAULT`` names it: how the
    tests interrupt a real run between the steps of an output set.

    >>> fault_point("staged")  # no-op unless ONNXLENS_FAULT=staged
    """
    if os.environ.get("ONNXLENS_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def check_out_folder(folder):
    """Refuse, before any work, an output folder that is empty, a file, or not writable.

    >>> check_out_folder("cam-out")
    """
    if str(folder).strip() == "":
        raise OutputError("--out is empty: give a folder name, e.g. --out out")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--out {folder} is a file, not a folder: remove it or choose another --out")
    _check_writable(folder)


def check_out_file(path, image=True):
    """Refuse, before any work, an output file that is empty, a folder, not writable, or (``image``)
    has a suffix OpenCV cannot encode.

    >>> check_out_file("star.png")
    """
    if str(path).strip() == "":
        raise OutputError("--out is empty: give a file name, e.g. --out out.png")
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder, not a file: give a file name inside it")
    if image and not cv2.haveImageWriter(str(path.with_suffix(path.suffix or ".png"))):
        raise OutputError(f"cannot encode an image as '{path.suffix}': use .png or .jpg")
    _check_writable(path.parent)


def _check_writable(folder):
    """The nearest existing ancestor of ``folder`` (or itself) must be a writable folder."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create {folder}: {existing} is a file; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {existing}: permission denied; choose another --out")


@contextlib.contextmanager
def output_set(folder, owned):
    """Write a command's set of files whole: yield an empty staging folder; at the end the files of
    ``folder`` matching the glob patterns ``owned`` are replaced by the staged ones, other files kept.

    A killed run leaves the previous set (or none), never a mix; its staging folder and ``.part``
    files are removed by the next run. When ``folder`` cannot be renamed (it is the working
    directory, a mount point, a symbolic link, or its parent is read-only) the staged files move in one by one.

    >>> with output_set("dissect-out", ["units.csv", "summary.json", "unit_*.png"]) as stage:
    ...     _ = (stage / "units.csv").write_text("unit\\n")
    >>> sorted(p.name for p in Path("dissect-out").iterdir())
    ['units.csv']
    """
    folder = Path(folder)
    check_out_folder(folder)
    with disk_errors(folder):
        beside = _renamable(folder)
        home = folder.parent if beside else folder
        home.mkdir(parents=True, exist_ok=True)
        _clean_stale(folder, home, owned)
        prefix = f".{folder.name}.set-{os.getpid()}-" if beside else f".onnxlens-set-{os.getpid()}-"
        stage = Path(tempfile.mkdtemp(dir=home, prefix=prefix))
        usual_permissions(stage)
        try:
            yield stage
            fault_point("staged")
            if beside:
                _swap(stage, folder, owned)
            else:
                _move_in(stage, folder, owned)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _owned(name, owned):
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in owned)


def _renamable(folder):
    """Whether ``folder`` may be swapped by renames: not the working directory (or above it), not a
    mount point or a symbolic link, and its parent writable."""
    absolute = Path(os.path.abspath(folder))
    cwd = Path.cwd()
    if absolute == cwd or absolute in cwd.parents or os.path.ismount(absolute) or absolute.is_symlink():
        return False
    parent = absolute.parent
    while not parent.exists():
        parent = parent.parent
    return os.access(parent, os.W_OK | os.X_OK)


def _clean_stale(folder, home, owned):
    """Remove what a killed earlier run left: staging folders, and ``.part`` files of owned names;
    a previous set moved aside just before the kill is put back."""
    name = glob.escape(folder.name)
    for old in home.glob(f".{name}.old-*"):
        if _running(old.name):
            continue
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, folder)
    for stale in [*home.glob(f".{name}.set-*"), *folder.glob(".onnxlens-set-*")]:
        if not _running(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    for part in folder.glob(".*.part") if folder.is_dir() else ():
        words = part.name[1:-len(".part")].split(".")  # atomic_path's .<stem>.<random><suffix>.part
        if any(_owned(".".join(words[:k] + words[k + 1:]), owned) for k in range(1, len(words))):
            part.unlink(missing_ok=True)


def _running(name):
    """Whether the process whose id follows ``set-``/``old-`` in a staging name is another live one."""
    match = re.search(r"-set-(\d+)-[^-]*$|\.(?:set|old)-(\d+)-[^-]*$", name)
    if match is None:
        return False
    pid = int(match.group(1) or match.group(2))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def _swap(stage, folder, owned):
    """Complete ``stage`` with (hard links to) the files of ``folder`` it does not own, then swap."""
    if not folder.exists():
        os.rename(stage, folder)
        return
    for entry in folder.iterdir():
        if _owned(entry.name, owned) or (stage / entry.name).exists() or entry.name.startswith(".onnxlens-set-"):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, stage / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, stage / entry.name, follow_symlinks=False)
    os.chmod(stage, stat.S_IMODE(folder.stat().st_mode))  # the folder keeps its permissions
    aside = folder.with_name(f".{folder.name}.old-{stage.name.rpartition('set-')[2]}")
    os.rename(folder, aside)  # killed here: the next run puts ``aside`` back
    fault_point("aside")
    os.rename(stage, folder)
    shutil.rmtree(aside, ignore_errors=True)


def _link_or_copy(src, dst, follow_symlinks=True):
    try:
        os.link(src, dst, follow_symlinks=follow_symlinks)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=follow_symlinks)
    return dst


def _move_in(stage, folder, owned):
    """Replace ``folder``'s owned files by the staged ones in place (one rename each)."""
    for entry in folder.iterdir():
        if _owned(entry.name, owned) and not (stage / entry.name).exists() and entry != stage:
            _remove(entry)
    for entry in stage.iterdir():
        if (folder / entry.name).is_dir() and not (folder / entry.name).is_symlink():
            shutil.rmtree(folder / entry.name)  # a folder is replaced whole: os.replace needs it gone
    for entry in stage.iterdir():
        os.replace(entry, folder / entry.name)


def _remove(entry):
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()
