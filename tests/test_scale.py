"""Dataset jobs in shards (engine.scale): in process for any shard size, and on a local Ray
cluster (2 CPUs) for any number of workers, with output files equal to the single-process run;
a worker killed mid-job, and a bad image in one shard."""
import html
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from engine.analyze.dissection import dissect
from engine.analyze.embeddings import embed
from engine.analyze.patches import mine
from engine.analyze.sources import from_synth
from engine.api import Model
from engine.data import broden, synth
from engine.data.files import write_image
from engine.errors import UsageError
from engine.explain.metrics import baseline_maps
from engine.scale import Scale, shards
from engine.scale.ray_pool import model_recipe

MODEL = str(Path(__file__).resolve().parents[1] / "models" / "shapes-resnet.onnx")


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'onnxlens[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def concepts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("concepts")
    broden.write_concepts(folder, synth.batches(24, seed=3))
    return folder


def test_scale_options_and_shards():
    assert Scale.from_options() is None
    assert Scale.from_options(ray="auto", workers=4) == Scale(ray="auto", workers=4)
    with pytest.raises(UsageError, match="--workers .* add --ray"):
        Scale.from_options(workers=2)
    with pytest.raises(UsageError, match="shard_size must be at least 1"):
        Scale(shard_size=0)
    assert Scale(shard_size=7).shard(5) == 10 and Scale().shard(32) == 256
    assert shards(10, 4) == [(0, 4), (4, 8), (8, 10)] and shards(0, 4) == []
    result = CliRunner().invoke(main, ["embed", MODEL, "--synth", "4", "--out", "never", "--workers", "2"])
    assert result.exit_code == 2 and result.output.startswith("error: --workers sets the number of Ray workers")


def test_a_worker_rebuilds_the_model_the_driver_holds():
    driver = Model(MODEL, preprocess={"preset": "unit", "channel_order": "BGR"}, labels=[f"c{i}" for i in range(8)],
                   threads=2)
    model_class, path, options = model_recipe(driver, threads=1)
    worker = model_class(path, **options)
    assert (worker.preprocessing, worker.labels, worker.input_size, worker.provider) == \
        (driver.preprocessing, driver.labels, driver.input_size, driver.provider)
    assert worker.threads == 1 and Path(path).is_absolute()


def test_random_baseline_of_a_shard_is_its_slice_of_the_whole_stream():
    whole = baseline_maps("random", 10, (6, 5), rng=3)
    np.testing.assert_array_equal(baseline_maps("random", 4, (6, 5), rng=3, first=6), whole[6:])


def test_in_process_shards_of_any_size_give_the_single_pass_results(concepts):
    model = Model(MODEL)
    source = from_synth(30, seed=2)
    whole = embed(model, source, batch_size=4, progress=False, scale=Scale(shard_size=1000))
    for size in (1, 5, 12):
        parts = embed(model, source, batch_size=4, progress=False, scale=Scale(shard_size=size))
        np.testing.assert_array_equal(parts.features, whole.features)
        assert parts.labels == whole.labels
    top = mine(model, source, "auto", top=4, batch_size=4, progress=False, scale=Scale(shard_size=1000))
    assert mine(model, source, "auto", top=4, batch_size=4, progress=False, scale=Scale(shard_size=8)).rows == top.rows
    one = dissect(model, concepts, quantile=0.99, batch_size=4, progress=False, scale=Scale(shard_size=1000))
    many = dissect(model, concepts, quantile=0.99, batch_size=4, progress=False, scale=Scale(shard_size=4))
    assert many.units == one.units
    np.testing.assert_array_equal(many.iou, one.iou)


def _files(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _report_sections(folder):
    """The audit page's sections without their timings (seconds differ from run to run)."""
    page = (Path(folder) / "index.html").read_text()
    found = re.findall(r'<section id="[^"]*"><h2>(.*?)(?:<span class="time">[\d.]+ s</span>)?</h2>(.*?)</section>',
                       page, flags=re.S)
    return {html.unescape(title): body for title, body in found if title != "Timing"}


def _commands(tmp_path, concepts):
    """(name, arguments without --out, output kind) of the six dataset commands on small inputs."""
    return [
        ("embed", ["embed", MODEL, "--synth", "40", "--seed", "1", "--batch-size", "4", "--json"]),
        ("dissect", ["dissect", MODEL, "--concepts", str(concepts), "--quantile", "0.99", "--batch-size", "4"]),
        ("patches", ["patches", MODEL, "--synth", "40", "--channels", "0,5,9", "--top", "3", "--batch-size", "4"]),
        ("evaluate", ["evaluate", MODEL, "--synth", "12", "--steps", "4", "--batch", "4", "--json"]),
        ("robustness", ["robustness", MODEL, "--synth", "12", "--ops", "hflip,rotate:20", "--batch", "4", "--json"]),
        ("audit", ["audit", MODEL, "--synth", "8", "--gallery", "2", "--embed", "8", "--dissect", "8",
                   "--classviz-steps", "2"]),
    ]


def test_ray_runs_write_the_files_of_the_single_process_run(tmp_path, concepts, ray_cluster):
    runner = CliRunner()
    for name, args in _commands(tmp_path, concepts):
        outs = []
        for k, extra in enumerate([[], ["--workers", "3", "--shard-size", "7", "--ray"]]):
            out = tmp_path / f"{name}-{k}"
            with_out = args + ([] if name == "evaluate" else ["--out", str(out)])  # evaluate prints only
            result = runner.invoke(main, with_out + extra)
            assert result.exit_code == 0, (name, result.output)
            outs.append((out, result.output.replace(str(out), "OUT")))
        (one, printed_one), (ray, printed_ray) = outs
        if name == "audit":  # the log lines and the page hold each section's seconds
            assert _report_sections(ray) == _report_sections(one)
            continue
        assert printed_ray == printed_one, name
        if name != "evaluate":
            files = _files(one)
            assert files and _files(ray) == files, name


def test_any_number_of_workers_gives_the_same_embeddings(ray_cluster):
    model = Model(MODEL)
    source = from_synth(36, seed=4)
    single = embed(model, source, batch_size=4, progress=False)
    for workers, size in ((1, 12), (2, 4)):
        scale = Scale(ray="", workers=workers, shard_size=size)
        parts = embed(model, source, batch_size=4, progress=False, scale=scale)
        np.testing.assert_array_equal(parts.features, single.features)


def _our_ray_workers_running_a_shard():
    """PIDs of this test's Ray actors (descendants of this process) running a shard now."""
    def parent(pid):
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return 0

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title == b"ray::Worker.call":
            pid = ancestor = int(entry)
            while ancestor > 1 and ancestor != os.getpid():
                ancestor = parent(ancestor)
            if ancestor == os.getpid():
                found.append(pid)
    return found


def test_a_worker_killed_mid_job_is_retried_and_the_result_is_identical(ray_cluster):
    model = Model(MODEL)
    source = from_synth(240, seed=5)
    single = embed(model, source, batch_size=8, progress=False)
    killed, done = [], threading.Event()

    def kill_one():
        while not done.is_set() and not killed:
            for pid in _our_ray_workers_running_a_shard():
                os.kill(pid, 9)
                killed.append(pid)
                break
            time.sleep(0.005)

    killer = threading.Thread(target=kill_one)
    killer.start()
    try:
        parts = embed(model, source, batch_size=8, progress=False, scale=Scale(ray="", workers=2, shard_size=8))
    finally:
        done.set()
        killer.join()
    assert killed, "no worker was running a shard while the job ran"
    assert not Path(f"/proc/{killed[0]}").exists()
    np.testing.assert_array_equal(parts.features, single.features)


def test_a_bad_image_in_one_shard_fails_as_in_process_and_writes_nothing(tmp_path, ray_cluster):
    scene = synth.generate(20, seed=6)
    paths = []
    for i, image in enumerate(scene.images):
        paths.append(tmp_path / "images" / f"{i:02d}.png")
        write_image(paths[-1], image)
    paths[13].write_bytes(b"not a png")
    runner = CliRunner()
    outputs = []
    for k, extra in enumerate([[], ["--workers", "2", "--shard-size", "4", "--ray"]]):
        out = tmp_path / f"out{k}"
        result = runner.invoke(main, ["embed", MODEL, *map(str, paths), "--batch-size", "4", "--out", str(out), *extra])
        assert result.exit_code == 2
        outputs.append([line for line in result.output.splitlines() if line.startswith("error:")])
        assert not out.exists() or not any(out.iterdir())
    assert outputs[1] == outputs[0]  # Ray's own log lines (e.g. a retried task) may come beside it
    assert outputs[0] == [f"error: '{paths[13]}' is not an image OpenCV can decode: pass PNG, JPEG, BMP, " \
                                 "TIFF or WebP files"]


def test_per_run_limits_reach_the_ray_workers(tmp_path, ray_cluster):
    """--max-pixels and --timeout hold on the workers as in process (the workers read the images
    and run the model; they are other processes with their own module globals)."""
    from tests.test_hostile import computed_loop
    from tests.tiny_models import save

    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        write_image(paths[-1], np.zeros((30, 40, 3), np.uint8))
    looping = save(computed_loop(), tmp_path / "loop.onnx")
    runner = CliRunner()
    cases = [(["--max-pixels", "1199", "embed", MODEL, *map(str, paths)], ["40×30", "--max-pixels"]),
             (["embed", str(looping), *map(str, paths), "--layer", "relu1", "--timeout", "0.5"],
              ["0.5 s", "--timeout"])]
    for args, words in cases:
        lines = []
        for k, extra in enumerate([[], ["--workers", "1", "--shard-size", "2", "--ray"]]):
            result = runner.invoke(main, [*args, "--out", str(tmp_path / f"out{k}"), *extra])
            assert result.exit_code == 2, result.output
            lines.append([line for line in result.output.splitlines() if line.startswith("error:")])
        assert lines[1] == lines[0] and len(lines[0]) == 1 and all(w in lines[0][0] for w in words), lines
