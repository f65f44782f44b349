"""Whole output sets: a killed or failing run leaves the previous set (or none), never a mix; a
re-run replaces only the command's own files; unusable --out refused before the work; a full or
read-only disk is one line and exit 2."""
import csv
import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from engine.analyze.embeddings import load_embedding
from engine.data import broden, files, synth
from engine.data.files import output_set, write_text
from engine.errors import OutputError
from tests import tiny_models

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    tiny_models.save(tiny_models.classifier(shape=("N", 3, 32, 32), width=6, seed=2), path)
    return path


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def one_line_error(result):
    return result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1


def hidden(folder):
    """Staging folders, moved-aside sets and .part files beside or inside ``folder``."""
    return sorted(p.name for p in [*folder.parent.glob(f".{folder.name}.*"), *folder.glob(".*")])


def embed_subprocess(model_path, out, n, fault=None):
    env = {**os.environ, "ONNXLENS_FAULT": fault or ""}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), "embed", str(model_path), "--synth", str(n),
                           "--out", str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def assert_consistent_embedding(out, n):
    emb = load_embedding(out)
    with open(out / "index.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert emb.features.shape[0] == len(rows) == json.loads((out / "embedding.json").read_text())["n"] == n


# --- the helper ---------------------------------------------------------------------------------

def test_set_replaces_only_owned_files(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    for name, text in [("units.csv", "old"), ("unit_0007.png", "old"), ("notes.txt", "mine"), ("x.png", "mine")]:
        (out / name).write_text(text)
    (out / "sub").mkdir()
    (out / "sub" / "keep.txt").write_text("mine")
    with output_set(out, ["units.csv", "unit_*.png"]) as stage:
        write_text(stage / "units.csv", "new")
        write_text(stage / "unit_0001.png", "new")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "sub", "unit_0001.png", "units.csv", "x.png"]
    assert (out / "units.csv").read_text() == "new" and (out / "notes.txt").read_text() == "mine"
    assert (out / "sub" / "keep.txt").read_text() == "mine"
    assert hidden(out) == []


def test_failure_inside_set_keeps_previous_or_leaves_none(tmp_path):
    out = tmp_path / "e"
    with output_set(out, ["a.txt", "b.txt"]) as stage:
        write_text(stage / "a.txt", "1")
        write_text(stage / "b.txt", "1")
    with pytest.raises(RuntimeError), output_set(out, ["a.txt", "b.txt"]) as stage:
        write_text(stage / "a.txt", "2")
        raise RuntimeError("killed between the two files")
    assert (out / "a.txt").read_text() == (out / "b.txt").read_text() == "1"
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError), output_set(fresh, ["a.txt"]) as stage:
        write_text(stage / "a.txt", "2")
        raise RuntimeError
    assert not fresh.exists() and hidden(out) == [] and hidden(fresh) == []


def test_next_run_cleans_what_a_killed_run_left(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "units.csv").write_text("old")
    (tmp_path / ".d.set-999999999-abc123").mkdir()  # a staging folder of a killed run
    (out / ".units.k2j4.csv.part").write_text("half")  # a .part of the command's own file
    (out / ".report.k2j4.html.part").write_text("someone else's")
    (out / ".unit.s.7hq2.csv.part").write_text("half, a dotted name")
    with output_set(out, ["units.csv", "unit.s.csv"]) as stage:
        write_text(stage / "units.csv", "new")
    assert not (out / ".unit.s.7hq2.csv.part").exists()
    assert not (tmp_path / ".d.set-999999999-abc123").exists() and not (out / ".units.k2j4.csv.part").exists()
    assert (out / ".report.k2j4.html.part").exists() and (out / "units.csv").read_text() == "new"


def test_a_live_run_s_staging_folder_is_left_alone(tmp_path):
    busy = tmp_path / f".d.set-{os.getppid()}-abc123"  # a concurrent run, still writing
    busy.mkdir()
    with output_set(tmp_path / "d", ["units.csv"]) as stage:
        write_text(stage / "units.csv", "new")
    assert busy.is_dir() and (tmp_path / "d" / "units.csv").read_text() == "new"


def test_set_moved_aside_by_a_kill_is_put_back(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "units.csv").write_text("old")
    os.rename(out, tmp_path / ".d.old-999999999-xyz")  # killed between the two renames of the swap
    with pytest.raises(RuntimeError), output_set(out, ["units.csv"]):
        raise RuntimeError
    assert (out / "units.csv").read_text() == "old" and hidden(out) == []


def test_working_directory_is_written_in_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("units.csv").write_text("old")
    Path("mine.txt").write_text("mine")
    with output_set(".", ["units.csv"]) as stage:
        write_text(stage / "units.csv", "new")
    assert sorted(os.listdir(".")) == ["mine.txt", "units.csv"] and Path("units.csv").read_text() == "new"


# --- real runs killed (SIGKILL) between the steps of a set --------------------------------------

def test_a_linked_folder_stays_a_link(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "units.csv").write_text("old")
    (tmp_path / "link").symlink_to(real)
    with output_set(tmp_path / "link", ["units.csv"]) as stage:
        write_text(stage / "units.csv", "new")
    assert (tmp_path / "link").is_symlink() and (real / "units.csv").read_text() == "new"


def test_embed_killed_keeps_previous_set_whole(model_path, tmp_path):
    out = tmp_path / "emb"
    assert embed_subprocess(model_path, out, 6).returncode == 0
    killed = embed_subprocess(model_path, out, 9, fault="staged")  # all new files written, not swapped
    assert killed.returncode == -9
    assert_consistent_embedding(out, 6)
    killed = embed_subprocess(model_path, out, 9, fault="aside")  # old set moved aside, new not yet in
    assert killed.returncode == -9 and not out.exists()
    killed = embed_subprocess(model_path, out, 11, fault="staged")  # puts the previous set back first
    assert killed.returncode == -9
    assert_consistent_embedding(out, 6)
    done = embed_subprocess(model_path, out, 11)
    assert done.returncode == 0, done.stderr
    assert_consistent_embedding(out, 11)
    assert hidden(out) == []


# --- re-runs replace the command's own files only ------------------------------------------------

def test_dissect_rerun_removes_old_unit_sheets(model_path, tmp_path):
    concepts = tmp_path / "concepts"
    broden.write_concepts(concepts, synth.batches(12, seed=1, size=(32, 32)))
    out = tmp_path / "d"
    out.mkdir()
    for name in ("unit_0099.png", "unit_0098.png", "units.csv", "summary.json", "notes.txt"):
        (out / name).write_text("old")
    result = run("dissect", model_path, "--concepts", concepts, "--layer", "relu2", "--iou", 0, "--out", out)
    assert result.exit_code == 0, result.output
    with open(out / "units.csv", newline="") as f:
        detectors = {f"unit_{int(r['unit']):04d}.png" for r in csv.DictReader(f) if r["detector"] == "True"}
    assert detectors and {p.name for p in out.glob("unit_*.png")} == detectors
    assert (out / "notes.txt").read_text() == "old" and hidden(out) == []


def test_cam_rerun_replaces_the_overlays_its_summary_listed(model_path, tmp_path):
    rng = np.random.default_rng(0)
    pictures = [tmp_path / f"p{i}.png" for i in range(3)]
    for picture in pictures:
        files.write_image(picture, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    out = tmp_path / "c"
    assert run("cam", model_path, *pictures[:2], "--out", out).exit_code == 0
    first = {Path(r["overlay"]).name for r in json.loads((out / "summary.json").read_text())}
    (out / "mine.png").write_bytes((out / sorted(first)[0]).read_bytes())
    result = run("cam", model_path, pictures[2], "--method", "layercam", "--out", out)
    assert result.exit_code == 0, result.output
    second = {Path(r["overlay"]).name for r in json.loads((out / "summary.json").read_text())}
    assert {p.name for p in out.glob("*.png")} == second | {"mine.png"} and not first & second
    assert len(np.load(out / "cams.npz")["maps"]) == 1 and hidden(out) == []


# --- --out refused before the work ----------------------------------------------------------------

@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as loading its model."""
    def load(*args, **kwargs):
        raise AssertionError("the work started before --out was checked")
    monkeypatch.setattr(cli, "_load", load)


@pytest.mark.parametrize("case", ["file-as-folder", "folder-as-file", "empty-folder", "empty-file", "bad-suffix",
                                  "under-a-file", "unwritable"])
def test_unusable_out_refused_before_the_work(case, model_path, tmp_path, no_work, monkeypatch):
    a_file = tmp_path / "taken"
    a_file.write_text("keep")
    args = {"file-as-folder": ("embed", model_path, "--synth", 4, "--out", a_file),
            "folder-as-file": ("filters", model_path, "--out", tmp_path),
            "empty-folder": ("cam", model_path, "synth:0:1", "--out", ""),
            "empty-file": ("classviz", model_path, "--target", 0, "--out", ""),
            "bad-suffix": ("classviz", model_path, "--target", 0, "--out", tmp_path / "x.xyz"),
            "under-a-file": ("dissect", model_path, "--concepts", tmp_path, "--out", a_file / "d"),
            "unwritable": ("saliency", model_path, "synth:0:1", "--out", tmp_path / "ro" / "s")}[case]
    if case == "unwritable":  # tests may run as root, who may write anywhere: the check itself is faked
        real = os.access
        monkeypatch.setattr(files.os, "access", lambda p, mode: real(p, mode) and Path(p) != tmp_path)
    result = run(*args)
    assert one_line_error(result), result.output
    assert a_file.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


# --- full, read-only or forbidden disk during the writes ------------------------------------------

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_disk_errors_while_writing_are_one_line(code, model_path, tmp_path, monkeypatch):
    out = tmp_path / "emb"
    assert run("embed", model_path, "--synth", 5, "--out", out).exit_code == 0
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "index.csv":
            raise OSError(code, os.strerror(code))
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    result = run("embed", model_path, "--synth", 7, "--out", out)
    assert one_line_error(result) and os.strerror(code) in result.output, result.output
    assert_consistent_embedding(out, 5)
    assert hidden(out) == []


def test_full_disk_for_the_feature_file_is_one_line_not_sigbus(model_path, tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    result = run("embed", model_path, "--synth", 5, "--out", tmp_path / "emb")
    assert one_line_error(result) and "No space left" in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_disk_error_is_output_error_naming_the_final_path():
    with pytest.raises(OutputError, match=r"cannot write out/d/units.csv: No space"), \
            files.disk_errors("out/.d.set-12-ab_9x/units.csv"):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OutputError, match=r"cannot write \./units.csv: No space"), \
            files.disk_errors("./.onnxlens-set-12-ab_9x/units.csv"):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OutputError, match="Read-only"), files.disk_errors("x"):
        raise OSError(errno.EROFS, "Read-only file system")
    with pytest.raises(KeyError), files.disk_errors("x"):
        raise KeyError("not a disk error")


def test_real_full_disk_is_one_line_and_keeps_previous_set(model_path, tmp_path):
    """A 32 KiB tmpfs mounted in a private mount namespace (needs unshare and the right to mount)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=32k tmpfs {mount}"],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (no unshare or no right to mount): full disk only injected")
    out = mount / "emb"
    embed = f"{shlex.quote(sys.executable)} cli.py embed {shlex.quote(str(model_path))} --out {out} --synth"
    script = (f"mount -t tmpfs -o size=32k tmpfs {mount} && {embed} 40 && {embed} 3000; echo rc=$?; "
              f"{sys.executable} -c 'import sys; from tests.test_output_sets import assert_consistent_embedding as a; "
              f"from pathlib import Path; a(Path(sys.argv[1]), 40); print(\"intact\")' {out}; ls -a {mount} {out}")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert "rc=2" in result.stdout and "intact" in result.stdout, (result.stdout, result.stderr)
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot write {out}/features.npy: No space left"), errors
    assert ".part" not in result.stdout and ".set-" not in result.stdout and ".old-" not in result.stdout


def test_tag_on_a_full_disk_is_one_line(model_path, tmp_path, monkeypatch):
    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "replace", full)
    result = run("tag", model_path, "--mean", "0.5,0.5,0.5", "--out", tmp_path / "tagged.onnx")
    assert one_line_error(result) and "No space left" in result.output, result.output
    assert list(tmp_path.iterdir()) == []
