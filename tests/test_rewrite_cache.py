"""The cache of rewritten models: the key follows every byte of the weights; an entry is its small
graph plus weights stored once and hard-linked; every kind of damage is detected and rebuilt; an
unusable folder falls back to a temporary one, then to memory; least recently used entries are
evicted to the size cap; ``onnxlens cache info|clear``."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from click.testing import CliRunner

from cli import main
from engine.errors import UsageError
from engine.runtime import cache, rewrite
from engine.runtime.cache import Store, max_bytes
from engine.runtime.rewrite import content_hash

ROOT = Path(__file__).resolve().parents[1]
REQUEST = rewrite.Request(None, gradients=("x",), output="y")
X = np.linspace(-1, 1, 80, dtype=np.float32).reshape(1, 80)
SEED = np.ones((1, 64), np.float32)


def linear(weight, name="w"):
    """y = x @ weight, with ``weight`` stored as an initializer."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", name], ["y"])], "linear",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", weight.shape[0]])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", weight.shape[1]])],
        [numpy_helper.from_array(weight, name)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_hash_is_stable_and_follows_one_element_of_a_large_weight():
    weight = np.random.default_rng(0).standard_normal((128, 64)).astype(np.float32)  # 8192 ≥ 4096: hashed apart
    changed = weight.copy()
    changed[100, 50] += 1e-3
    first = content_hash(linear(weight))
    assert content_hash(linear(weight.copy())) == first
    assert content_hash(linear(changed)) != first
    assert content_hash(linear(weight, name="v")) != first
    assert content_hash(linear(weight.reshape(64, 128))) != first


def test_hash_follows_weights_stored_outside_raw_data():
    weight = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    model = linear(weight)
    model.graph.initializer[0].CopyFrom(helper.make_tensor("w", onnx.TensorProto.FLOAT, [64, 64], weight.ravel()))
    assert not model.graph.initializer[0].raw_data
    other = linear(weight)
    other.graph.initializer[0].CopyFrom(
        helper.make_tensor("w", onnx.TensorProto.FLOAT, [64, 64], weight.ravel() + np.float32(1)))
    assert content_hash(model) != content_hash(other)


def run(source, x):
    """Outputs of a model (path or ModelProto) on ``x``, through ONNX Runtime."""
    data = source.SerializeToString() if isinstance(source, onnx.ModelProto) else str(source)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    feeds = {"x": x, "onnxlens_seed": SEED} if "onnxlens_seed" in {i.name for i in session.get_inputs()} else {"x": x}
    return session.run(None, feeds)


def model_of(seed, rows=80):
    return linear(np.random.default_rng(seed).standard_normal((rows, 64)).astype(np.float32))


def reference(model):
    """[y, ∂(seed · y)/∂x] of ``linear`` on X, computed with numpy."""
    weight = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    return [X @ weight, SEED @ weight.T]


def assert_computes(path, model):
    outputs = run(path, X)
    assert len(outputs) == 2
    for got, want in zip(outputs, reference(model), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)  # float32 sums of 64 or 80 terms


def counting_builds(monkeypatch):
    calls = []
    build = rewrite.build
    monkeypatch.setattr(rewrite, "build", lambda *a, **k: calls.append(1) or build(*a, **k))
    return calls


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch):
    """Each test is a fresh process: no fallback folder, no warnings given, no digest verified."""
    monkeypatch.setattr(rewrite, "_warned", set())
    monkeypatch.setattr(cache, "_verified", {})
    rewrite._fallback_store.cache_clear()
    monkeypatch.delenv("ONNXLENS_CACHE_MAX", raising=False)
    yield
    rewrite._fallback_store.cache_clear()


def entry_of(folder):
    (entry,) = (Path(folder) / "entries").iterdir()
    return entry


def test_an_entry_is_its_graph_with_weights_stored_once_for_all_entries(tmp_path):
    model = model_of(1)
    small = numpy_helper.from_array(np.random.default_rng(1).standard_normal((64, 3)).astype(np.float32), "small")
    model.graph.initializer.append(small)
    model.graph.node.append(helper.make_node("MatMul", ["y", "small"], ["z"]))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 3]))
    plain = rewrite.cached(model, rewrite.Request(None, activations=("y",)), folder=tmp_path)
    grads = rewrite.cached(model, rewrite.Request(None, gradients=("x",), output="z"), folder=tmp_path)
    assert plain.parent != grads.parent
    stored = onnx.load(str(plain), load_external_data=False)
    assert {t.name: t.data_location for t in stored.graph.initializer} == {
        "w": onnx.TensorProto.EXTERNAL, "small": onnx.TensorProto.DEFAULT}
    w_bytes = 80 * 64 * 4
    assert plain.stat().st_size < w_bytes
    # the large weight is one file (one inode) linked from both entries and the shared blobs/ folder
    import hashlib
    weight = numpy_helper.to_array(model.graph.initializer[0])
    name = hashlib.sha256(weight.tobytes()).hexdigest() + ".bin"
    copies = [tmp_path / "blobs" / name, plain.parent / name, grads.parent / name]
    assert len({p.stat().st_ino for p in copies}) == 1 and copies[0].stat().st_nlink == 3
    info = Store(tmp_path).info()  # w, the gradient graph's transposed w, two small graphs
    assert (info.entries, info.models) == (2, 1) and info.size < 2 * w_bytes + 64 * 1024
    outputs = run(plain, X)
    np.testing.assert_allclose(outputs[1], X @ weight, rtol=1e-5)
    np.testing.assert_allclose(outputs[0], X @ weight @ numpy_helper.to_array(small), rtol=1e-5)
    assert not list((tmp_path / "tmp").iterdir())  # staged entries renamed whole, nothing left over


def test_a_cached_model_whose_data_file_is_lost_is_rebuilt(tmp_path, monkeypatch):
    model = model_of(2)
    expected = rewrite.session(model, REQUEST, folder=tmp_path, threads=1).run(None, {"x": X, "onnxlens_seed": SEED})
    data = min((tmp_path / "entries").glob("*/*.bin"))  # w (and its transpose for the gradient)
    data.unlink()
    calls = counting_builds(monkeypatch)
    again = rewrite.session(model, REQUEST, folder=tmp_path, threads=1).run(None, {"x": X, "onnxlens_seed": SEED})
    assert calls == [1] and data.is_file()
    for a, b in zip(again, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def flip_middle(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def graph_of(entry):
    return entry / "model.onnx"


def data_of(entry):
    return min(entry.glob("*.bin"))


def flip_graph(entry):
    flip_middle(graph_of(entry))


def flip_data(entry):
    flip_middle(data_of(entry))


def flip_data_keep_mtime(entry):
    stat = data_of(entry).stat()
    flip_middle(data_of(entry))
    os.utime(data_of(entry), ns=(stat.st_atime_ns, stat.st_mtime_ns))


def directory_for_data(entry):
    data = data_of(entry)
    data.unlink()
    data.mkdir()


def directory_for_graph(entry):
    graph_of(entry).unlink()
    graph_of(entry).mkdir()


def garbage_manifest(entry):
    (entry / "manifest.json").write_text("{not json")


def no_manifest(entry):
    (entry / "manifest.json").unlink()


def file_for_entry(entry):
    import shutil
    shutil.rmtree(entry)
    entry.write_bytes(b"x")


def symlinked_data(entry):
    data = data_of(entry)
    copy = entry.parent.parent / "elsewhere.bin"
    copy.write_bytes(data.read_bytes())
    data.unlink()
    data.symlink_to(copy)


DAMAGE = [flip_graph, flip_data, flip_data_keep_mtime, directory_for_data, directory_for_graph, garbage_manifest,
          no_manifest, file_for_entry, symlinked_data]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_damage_is_detected_said_once_and_rebuilt(damage, tmp_path, monkeypatch, caplog):
    model = model_of(3)
    assert_computes(rewrite.cached(model, REQUEST, folder=tmp_path), model)  # digests verified in memory now
    damage(entry_of(tmp_path))
    calls = counting_builds(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="onnxlens.cache"):
        path = rewrite.cached(model, REQUEST, folder=tmp_path)
        again = rewrite.cached(model, REQUEST, folder=tmp_path)
    assert calls == [1] and path == again
    assert sum("damaged" in r.getMessage() for r in caplog.records) == 1
    assert_computes(path, model)
    assert Store(tmp_path).get(entry_of(tmp_path).name, content_hash(model)) == path


def test_entries_swapped_between_models_are_detected(tmp_path, monkeypatch, caplog):
    models = [model_of(4), model_of(5)]
    first, second = (rewrite.cached(m, REQUEST, folder=tmp_path).parent for m in models)
    first.rename(tmp_path / "aside")  # whole folders swapped: each manifest names the other key and model
    second.rename(first)
    (tmp_path / "aside").rename(second)
    calls = counting_builds(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="onnxlens.cache"):
        for model in models:
            assert_computes(rewrite.cached(model, REQUEST, folder=tmp_path), model)
    assert calls == [1, 1] and "manifest names another" in caplog.text
    for path in second.iterdir():  # the other model's complete files under this entry's own manifest
        if path.name != "manifest.json":
            path.unlink()
    for path in first.iterdir():
        if path.name != "manifest.json":
            (second / path.name).write_bytes(path.read_bytes())
    assert_computes(second / "model.onnx", models[0])  # unverified, it would explain the wrong network
    calls.clear()
    assert_computes(rewrite.cached(models[1], REQUEST, folder=tmp_path), models[1])
    assert calls == [1]


def test_a_warm_process_hashes_large_weights_once(tmp_path, monkeypatch):
    model = model_of(6)
    rewrite.cached(model, REQUEST, folder=tmp_path)
    monkeypatch.setattr(cache, "_verified", {})  # a new process
    hashed = []
    sha = cache._sha256
    monkeypatch.setattr(cache, "_sha256", lambda path: hashed.append(Path(path).suffix) or sha(path))
    for _ in range(3):
        rewrite.cached(model, REQUEST, folder=tmp_path)
    assert hashed.count(".bin") == len(list(tmp_path.glob("entries/*/*.bin"))) == 2 and hashed.count(".onnx") == 3


def test_a_cache_path_that_is_a_file_falls_back_to_a_temporary_folder_with_one_warning(tmp_path, caplog):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    model = model_of(7)
    with caplog.at_level(logging.WARNING, logger="onnxlens.cache"):
        paths = [rewrite.cached(model, REQUEST, folder=blocker) for _ in range(2)]
        other = rewrite.cached(model_of(8), REQUEST, folder=blocker)
    assert len(caplog.records) == 1 and "not usable" in caplog.text and "temporary folder" in caplog.text
    assert paths[0] == paths[1] and paths[0].is_file() and other.is_file()
    assert blocker.read_text() == "not a folder" and not str(paths[0]).startswith(str(blocker))
    np.testing.assert_array_equal(run(paths[0], X)[0], run(model, X)[0])


@pytest.mark.parametrize("code", ["EROFS", "ENOSPC", "EACCES"])
def test_an_unwritable_cache_falls_back_then_builds_in_memory(code, tmp_path, monkeypatch, caplog):
    import errno
    cache_root = tmp_path / "cache"
    real_mkdtemp = cache.tempfile.mkdtemp

    def refuse(*args, dir=None, **kwargs):  # every write into the cache folder fails as the disk would
        if dir is not None and str(dir).startswith(str(cache_root)):
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(dir))
        return real_mkdtemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(cache.tempfile, "mkdtemp", refuse)
    model = model_of(9)
    with caplog.at_level(logging.WARNING, logger="onnxlens.cache"):
        path = rewrite.cached(model, REQUEST, folder=cache_root)
    assert path.is_file() and len(caplog.records) == 1 and os.strerror(getattr(errno, code)) in caplog.text
    np.testing.assert_array_equal(run(path, X)[0], run(model, X)[0])
    rewrite._fallback_store.cache_clear()
    monkeypatch.setattr(rewrite.tempfile, "mkdtemp", lambda *a, **k: refuse(dir=cache_root))  # /tmp full too
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnxlens.cache"):
        sess = rewrite.session(model, REQUEST, folder=cache_root, threads=1)
    assert "in memory" in caplog.text
    np.testing.assert_array_equal(sess.run(None, {"x": X, "onnxlens_seed": SEED})[0], run(model, X)[0])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: the injected EROFS case covers it")
def test_a_read_only_cache_serves_its_entries_and_falls_back_for_new_ones(tmp_path, caplog):
    model = model_of(10)
    path = rewrite.cached(model, REQUEST, folder=tmp_path)
    for folder in (tmp_path, *tmp_path.iterdir()):
        folder.chmod(0o555)
    try:
        with caplog.at_level(logging.WARNING, logger="onnxlens.cache"):
            assert rewrite.cached(model, REQUEST, folder=tmp_path) == path and not caplog.records
            other = rewrite.cached(model_of(11), REQUEST, folder=tmp_path)
        assert other.is_file() and "not usable" in caplog.text
    finally:
        for folder in (tmp_path, *tmp_path.iterdir()):
            folder.chmod(0o755)


def test_the_warning_is_one_line_on_stderr(tmp_path):
    (tmp_path / "cache").write_text("")
    script = ("from tests.test_rewrite_cache import model_of, REQUEST; from engine.runtime import rewrite;"
              "[rewrite.cached(model_of(s), REQUEST) for s in (1, 2)]")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ONNXLENS_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "ONNXLENS_CACHE" in done.stderr


@pytest.mark.parametrize("text, expected", [("500MB", 500 * 10**6), ("2GiB", 2 * 2**30), ("1.5g", 1_500_000_000),
                                            ("4096", 4096), ("0", 0)])
def test_the_size_cap_is_read_from_the_environment(text, expected, monkeypatch):
    monkeypatch.setenv("ONNXLENS_CACHE_MAX", text)
    assert max_bytes() == expected


@pytest.mark.parametrize("text", ["lots", "-1GB", "1 parsec", "1e9"])
def test_a_bad_size_cap_is_a_usage_error(text, monkeypatch):
    monkeypatch.setenv("ONNXLENS_CACHE_MAX", text)
    with pytest.raises(UsageError, match="ONNXLENS_CACHE_MAX"):
        max_bytes()


def use(model, folder, when):
    """Use (or build) ``model``'s entry and date its last use ``when`` seconds ago."""
    path = rewrite.cached(model, REQUEST, folder=folder)
    stamp = path.parent / "manifest.json"
    os.utime(stamp, (stamp.stat().st_atime, stamp.stat().st_mtime - when))
    return path.parent


def test_least_recently_used_entries_are_evicted_to_the_cap(tmp_path, monkeypatch):
    a, b, c = model_of(12), model_of(13), model_of(14)
    entry_a, entry_b = use(a, tmp_path, 200), use(b, tmp_path, 100)
    two = Store(tmp_path).info().size
    monkeypatch.setenv("ONNXLENS_CACHE_MAX", str(int(two * 1.25)))
    assert use(a, tmp_path, 0) == entry_a  # a used now: b is the least recently used
    blobs_b = {p.name for p in entry_b.glob("*.bin")}
    entry_c = use(c, tmp_path, 0)
    assert entry_a.is_dir() and entry_c.is_dir() and not entry_b.exists()
    assert not blobs_b & {p.name for p in (tmp_path / "blobs").iterdir()}  # b's weights went with it
    assert Store(tmp_path).info().size <= int(two * 1.25)
    monkeypatch.setenv("ONNXLENS_CACHE_MAX", "1")  # smaller than any entry: only the one in use stays
    entry_b = use(b, tmp_path, 0)
    assert [p.name for p in (tmp_path / "entries").iterdir()] == [entry_b.name]
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == sorted(p.name for p in entry_b.glob("*.bin"))
    np.testing.assert_array_equal(run(entry_b / "model.onnx", X)[0], run(b, X)[0])


def test_trim_removes_legacy_files_and_stale_staging_folders(tmp_path):
    (tmp_path / ("ab" * 16 + ".onnx")).write_bytes(b"old")
    (tmp_path / ("ab" * 16 + ".onnx.data")).write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("mine")
    stale, fresh, other = (tmp_path / "tmp" / name for name in ("0123" * 8 + ".killed", "4567" * 8 + ".writing",
                                                                  "photos"))
    for folder in (stale, fresh, other):
        folder.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"half")
    os.utime(stale, (0, 0))
    os.utime(other, (0, 0))
    rewrite.cached(model_of(15), REQUEST, folder=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blobs", "entries", "notes.txt", "tmp"]
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == [fresh.name, "photos"]  # not ours: kept


def test_cli_cache_info_and_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXLENS_CACHE", str(tmp_path))
    monkeypatch.setenv("ONNXLENS_CACHE_MAX", "300MB")
    for seed in (16, 17):
        for request in (REQUEST, rewrite.Request(None, activations=("y",))):
            rewrite.cached(model_of(seed), request)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "blobs" / "mine.txt").write_text("mine")
    size = Store(tmp_path).info().size
    info = CliRunner().invoke(main, ["cache", "info"])
    assert info.exit_code == 0, info.output
    assert str(tmp_path) in info.output and "4 rewritten models of 2 source models" in info.output
    assert f"{size / 1e6:.1f} MB of 300.0 MB" in info.output
    cleared = CliRunner().invoke(main, ["cache", "clear"])
    assert cleared.exit_code == 0 and f"removed 4 rewritten models ({size / 1e6:.1f} MB)" in cleared.output
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "blobs", "blobs/mine.txt", "notes.txt"]  # what onnxlens does not own stays
    assert "0 rewritten models of 0 source models" in CliRunner().invoke(main, ["cache", "info"]).output
    monkeypatch.setenv("ONNXLENS_CACHE_MAX", "much")
    bad = CliRunner().invoke(main, ["cache", "info"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "ONNXLENS_CACHE_MAX" in bad.output


MOUNTS = {"read-only": "mount -t tmpfs -o ro,size=1m tmpfs {dir}", "full": "mount -t tmpfs -o size=16k tmpfs {dir}"}


@pytest.mark.parametrize("fault", MOUNTS)
def test_a_really_read_only_or_full_cache_folder_falls_back_with_one_warning(fault, tmp_path):
    """A tmpfs mounted read-only or too small for the weights, in a private mount namespace."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root and mount namespaces (unshare -m) to mount a read-only or full tmpfs")
    folder = tmp_path / "cache"
    folder.mkdir()
    script = ("import numpy as np; from tests.test_rewrite_cache import model_of, run, REQUEST, X;"
              "from engine.runtime import rewrite; m = model_of(1); paths = [rewrite.cached(m, REQUEST) for _ in '12'];"
              "np.testing.assert_array_equal(run(paths[0], X)[0], run(m, X)[0]); assert paths[0] == paths[1];"
              f"from pathlib import Path; print(sorted(str(p) for p in Path('{folder}').rglob('*')))")
    command = f"{MOUNTS[fault].format(dir=folder)} && exec {sys.executable} -c \"{script}\""
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "ONNXLENS_CACHE": str(folder)})
    assert done.returncode == 0, done.stderr
    left = "[]" if fault == "read-only" else f"['{folder}/blobs', '{folder}/entries', '{folder}/tmp']"
    assert done.stdout.strip() == left  # nothing half-written left behind
    (line,) = done.stderr.strip().splitlines()
    reason = "Read-only file system" if fault == "read-only" else "No space left on device"
    assert "not usable" in line and reason in line and "temporary folder" in line
