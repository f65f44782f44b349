"""The on-disk cache of rewritten models: verified entries, shared weights, a size cap.

Layout under the cache folder (``$ONNXLENS_CACHE``, default ``~/.cache/onnxlens``)::

    entries/<key>/manifest.json   key, source model hash, digest and size of every file
    entries/<key>/model.onnx      the small graph; large weights are external data files:
    entries/<key>/<sha256>.bin    one per large tensor, named by its digest, a hard link to
    blobs/<sha256>.bin            the one copy all entries (of any model) share
    tmp/                          entries being written; renamed whole into entries/

An entry is verified before use: the manifest must name the key and source model asked for,
``model.onnx`` is hashed fully each time (it is small), each weights file must be a regular file
of the recorded size, and its full SHA-256 is checked once per process per file state (device,
inode, size, mtime, ctime), so flipped bytes of the same size are caught while a warm process
does not re-read 100 MB per call. A damaged entry is rebuilt, saying so once on stderr. Use
touches the manifest; after each write the least recently used entries are evicted until the
cache fits ``$ONNXLENS_CACHE_MAX`` (default 1GB), and weights no entry links to are removed.
"""
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from engine.data.files import atomic_path, usual_permissions
from engine.errors import UsageError

DEFAULT_MAX = "1GB"
GRAPH = "model.onnx"
MANIFEST = "manifest.json"
STALE_SECONDS = 3600  # a tmp/ folder this old belongs to a killed run
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_LEGACY = re.compile(r"[0-9a-f]{32}\.onnx(\.data)?")  # one-file entries of earlier versions
_ENTRY, _BLOB, _STAGED = (re.compile(r"[0-9a-f]{32}"), re.compile(r"[0-9a-f]{64}\.bin"),
                          re.compile(r"([0-9a-f]{32}|old)\..+"))  # only names like these are ever removed
_verified = {}  # (dev, inode, size, mtime_ns, ctime_ns) -> sha256 hex, for this process
log = logging.getLogger("onnxlens.cache")


class DamagedEntry(Exception):
    """An entry that does not match its manifest (internal: the entry is rebuilt)."""


def cache_dir():
    """The cache folder: ``$ONNXLENS_CACHE`` or ``~/.cache/onnxlens``.

    >>> getfixture("monkeypatch").delenv("ONNXLENS_CACHE")
    >>> cache_dir() == Path.home() / ".cache" / "onnxlens"
    True
    """
    return Path(os.environ.get("ONNXLENS_CACHE") or Path.home() / ".cache" / "onnxlens")


def max_bytes():
    """The size cap in bytes from ``$ONNXLENS_CACHE_MAX`` (e.g. ``500MB``, ``2GiB``; default 1GB).

    >>> getfixture("monkeypatch").setenv("ONNXLENS_CACHE_MAX", "2GiB")
    >>> max_bytes()
    2147483648
    """
    text = os.environ.get("ONNXLENS_CACHE_MAX") or DEFAULT_MAX
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match[2].lower() not in _UNITS:
        raise UsageError(f"ONNXLENS_CACHE_MAX={text!r} is not a size: set it to e.g. 500MB or 2GB")
    return int(float(match[1]) * _UNITS[match[2].lower()])


def blob_name(digest):
    """The file name of the weights with SHA-256 ``digest`` (graphs reference it as external data).

    >>> blob_name("ab" * 32)[-4:]
    '.bin'
    """
    return f"{digest}.bin"


@dataclass(frozen=True)
class Info:
    """What the cache holds: ``entries`` rewritten models of ``models`` source models in ``size``
    bytes on disk (shared weights counted once), under a cap of ``cap`` bytes."""

    folder: Path
    entries: int
    models: int
    size: int
    cap: int


class Store:
    """The cache folder ``root`` (see the module docstring).

    >>> store, key = Store("cache"), "0123456789abcdef" * 2
    >>> store.get(key, "model-sha") is None
    True
    >>> weights = {hashlib.sha256(b"weights").hexdigest(): b"weights"}  # graphs name them as external data
    >>> store.put(key, {"model": "model-sha"}, b"graph", weights).name
    'model.onnx'
    >>> store.get(key, "model-sha").read_bytes()
    b'graph'
    """

    def __init__(self, root):
        self.root = Path(root)
        self.entries, self.blobs, self.tmp = self.root / "entries", self.root / "blobs", self.root / "tmp"

    def get(self, key, model_hash):
        """The verified ``model.onnx`` of entry ``key`` built from ``model_hash`` (touched as used),
        or None when there is none; raises :class:`DamagedEntry` when it does not verify."""
        folder = self.entries / key
        try:
            if not folder.exists():
                return None
        except OSError:  # the cache path is a file, unreadable, ...: nothing cached there
            return None
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            if manifest.get("key") != key or manifest.get("model") != model_hash:
                raise DamagedEntry("its manifest names another model or request")
            if GRAPH not in manifest["files"]:
                raise DamagedEntry(f"its manifest lists no {GRAPH}")
            for name, expected in manifest["files"].items():
                _check(folder / name, expected, full=(name == GRAPH))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise DamagedEntry(_reason(err)) from err
        with contextlib.suppress(OSError):  # a read-only cache still serves its entries
            os.utime(folder / MANIFEST)
        return folder / GRAPH

    def put(self, key, meta, graph, weights):
        """Write entry ``key``: ``graph`` (bytes of ``model.onnx``), ``weights`` ({sha256 hex:
        bytes}, stored once in ``blobs/`` and hard-linked), ``meta`` (JSON-able, must hold
        ``model``); written in ``tmp/`` and renamed whole, then the cache is trimmed to its cap.
        Returns the entry's ``model.onnx``; raises OSError when the folder is unusable."""
        cap = max_bytes()
        for folder in (self.entries, self.blobs, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=self.tmp))
        try:
            usual_permissions(staging)  # mkdtemp makes 0700
            files = {GRAPH: {"size": len(graph), "sha256": hashlib.sha256(graph).hexdigest()}}
            (staging / GRAPH).write_bytes(graph)
            for digest, data in weights.items():
                self._link(digest, data, staging / blob_name(digest))
                files[blob_name(digest)] = {"size": len(data), "sha256": digest}
            (staging / MANIFEST).write_text(json.dumps({**meta, "key": key, "files": files}, indent=1))
            self._install(staging, self.entries / key)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        with contextlib.suppress(OSError):  # the entry is whole; trimming is retried after the next write
            self.trim(cap, keep=key)
        return self.entries / key / GRAPH

    def _link(self, digest, data, target):
        blob = self.blobs / blob_name(digest)
        try:
            _check(blob, {"size": len(data), "sha256": digest}, full=False)
        except (OSError, DamagedEntry):
            _remove(blob)
            with atomic_path(blob) as part:
                part.write_bytes(data)
            _remember(blob, digest)
        try:
            os.link(blob, target)
        except OSError:  # no hard links here (or trimmed meanwhile): a private copy
            target.write_bytes(data)

    def _install(self, staging, final):
        try:
            os.rename(staging, final)
        except OSError:  # an older (damaged) entry or a concurrent writer's: replace it
            trash = Path(tempfile.mkdtemp(prefix="old.", dir=self.tmp))
            with contextlib.suppress(FileNotFoundError):
                os.rename(final, trash / "entry")
            os.rename(staging, final)
            shutil.rmtree(trash, ignore_errors=True)

    def trim(self, cap, keep=None):
        """Evict the least recently used entries (never ``keep``) until the cache holds at most
        ``cap`` bytes; remove weights no entry uses, leftovers of killed runs and legacy files."""
        for path in self._legacy():
            _remove(path)
        now = time.time()
        for folder in _listing(self.tmp, _STAGED):
            with contextlib.suppress(OSError):
                if now - folder.lstat().st_mtime > STALE_SECONDS:
                    _remove(folder)
        entries = sorted(_listing(self.entries, _ENTRY), key=_last_use)
        size = self._size()
        for folder in entries:
            if size <= cap:
                break
            if folder.name != keep:
                _remove(folder)
                self._drop_unused_blobs()
                size = self._size()
        self._drop_unused_blobs()

    def info(self):
        """An :class:`Info` on this cache.

        >>> _ = Store("cache").put("0123456789abcdef" * 2, {"model": "model-sha"}, b"graph", {})
        >>> Store("cache").info().entries
        1
        """
        models = set()
        entries = _listing(self.entries, _ENTRY)
        for folder in entries:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                models.add(json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("model"))
        return Info(self.root, len(entries), len(models), self._size(), max_bytes())

    def clear(self):
        """Remove every entry, shared weights file and leftover; returns the :class:`Info` before.

        >>> _ = Store("cache").put("0123456789abcdef" * 2, {"model": "model-sha"}, b"graph", {})
        >>> Store("cache").clear().entries, Store("cache").info().entries
        (1, 0)
        """
        before = self.info()
        for path in (*self._legacy(), *_listing(self.entries, _ENTRY), *_listing(self.blobs, _BLOB),
                     *_listing(self.tmp, _STAGED)):
            _remove(path)
        for folder in (self.entries, self.blobs, self.tmp):
            with contextlib.suppress(OSError):  # kept if something not ours is inside
                folder.rmdir()
        return before

    def _legacy(self):
        return _listing(self.root, _LEGACY)

    def _size(self):
        seen, total = set(), 0
        files = [*self._legacy(), *_listing(self.blobs, _BLOB)]
        files += [f for kind, pattern in ((self.entries, _ENTRY), (self.tmp, _STAGED))
                  for folder in _listing(kind, pattern) for f in _listing(folder)]
        for path in files:
            with contextlib.suppress(OSError):
                stat = path.lstat()
                if (stat.st_dev, stat.st_ino) not in seen:
                    seen.add((stat.st_dev, stat.st_ino))
                    total += stat.st_blocks * 512 if stat.st_blocks else stat.st_size
        return total

    def _drop_unused_blobs(self):
        for blob in _listing(self.blobs, _BLOB):
            with contextlib.suppress(OSError):
                if blob.lstat().st_nlink <= 1:
                    blob.unlink()


def _check(path, expected, full):
    """Raise DamagedEntry unless ``path`` is a regular file of the expected size (and digest:
    always when ``full``, else once per file state in this process)."""
    stat = path.lstat()  # FileNotFoundError for a missing file
    if not S_ISREG(stat.st_mode):
        raise DamagedEntry(f"{path.name} is not a regular file")
    if stat.st_size != expected["size"]:
        raise DamagedEntry(f"{path.name} has {stat.st_size} bytes, not {expected['size']}")
    state = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if full or _verified.get(state) != expected["sha256"]:
        digest = _sha256(path)
        if digest != expected["sha256"]:
            raise DamagedEntry(f"{path.name} does not match its digest")
        _verified[state] = digest


def _remember(path, digest):
    stat = path.lstat()
    _verified[(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)] = digest


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reason(err):
    if isinstance(err, DamagedEntry):
        return str(err)
    if isinstance(err, OSError):
        return f"{Path(err.filename).name if err.filename else 'a file'}: {err.strerror or err}"
    return "its manifest is unreadable"


def _listing(folder, pattern=None):
    """The children of ``folder`` (those whose name matches ``pattern``); none if it is unreadable."""
    try:
        return [p for p in folder.iterdir() if pattern is None or pattern.fullmatch(p.name)]
    except OSError:
        return []


def _last_use(folder):
    try:
        return (folder / MANIFEST).stat().st_mtime
    except OSError:  # no manifest: damaged, evicted first
        return 0.0


def _remove(path):
    """Remove a file or folder, whichever ``path`` is; a missing one is fine."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
