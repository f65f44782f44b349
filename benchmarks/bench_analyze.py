"""Analysis throughput and memory, measured side by side in one run.

``test_throughput_paired``: per round (order rotating), the same Broden-layout set (Shapes world,
96×96, label maps on disk) goes through
- ``forward``: images read, preprocessed and run with the same tap and batch size (one pass);
- ``forward+labels``: the same, plus decoding every image's label maps (the floor before the store);
- ``dissect``: network dissection (two passes + masks + IoU counts), label maps read from their
  decoded store (built by a warm-up run before the rounds, as a first run over a dataset does);
- ``dissect-decode``: the same, decoding every label-map PNG in pass 2 (``label_store=False``,
  what dissection did before the store);
- ``patches``: patch mining (one pass + top-k).
It prints the median of the per-round ratios (images/s of each ÷ forward images/s) and each
run's CPU seconds over all its threads (the figure that does not depend on the machine's load).

It also prints each run's busy cores (CPU ÷ wall: below 1 means the process waited for a core)
and forward CPU ÷ dissect CPU, the ratio one core allows.

Measured (shapes-resnet layer3, 8×8×96 maps, 1 ORT thread, a 2-core box shared by other
sessions; four runs alternating with main's code, base → this): at load 0.7–1.6, dissect /
forward median 0.74–0.78× → 0.85–0.98× (rounds 0.71–1.04×), dissect CPU 0.67–0.99 s → 0.57–0.81
s per 512 images (forward 0.33–0.52 s in the same runs, the machine's speed varying; forward CPU
÷ dissect CPU 0.48–0.53 → 0.57–0.62), 1.5 cores busy; at load 2–3, 0.74× and 0.56× → 0.64× and
0.65×. Dissection's CPU beyond the forward pass (≈ 0.2 s, was ≈ 0.33 s; thread
CPU of each part on the bench set): unit masks ≈ 0.085 s (was 0.13–0.19: hot blocks found by
dilating the above-threshold cells, chunks laid out blocks-last so numpy's inner loops are long,
reused buffers, pixels as a block's first pixel + an offset), IoU counts ≈ 0.035 s (was 0.06:
the pixels' places shared by the categories, a bincount per category), the quantile ≈ 0.01 s
(was 0.035: with the value count known it keeps only the top values its result reads), the
top-k ≈ 0.006 s, the store's key, offsets and label maps ≈ 0.02 s. What remains is mostly the
masks' float64 interpolation (≈ 7 M values per 512 images, about a fifth of them inside).
Pass 1 reads the next batch's images on a thread while the model runs, pass 1's accumulators
run on another and pass 2 on three, so on two idle cores dissection runs at about the forward
pass's rate; the figure to take is a run on a quiet machine.

``test_dissection_memory_is_flat``: peak RSS of a subprocess dissecting 2,000 vs 20,000 Shapes
images (32×32, generated on the fly, tiny 32×32 CNN).

Model: ``$ONNXLENS_BENCH_MODEL`` or ``models/shapes-resnet.onnx`` when present, else a small random
CNN at 64×64. Dissection runs with its activation cache (pass 2 reads pass 1's maps back).

    python -m pytest benchmarks/bench_analyze.py -s --benchmark-disable
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paired import rotating_rounds, round_ratios  # noqa: E402

from engine.analyze.dissection import dissect  # noqa: E402
from engine.analyze.patches import mine  # noqa: E402
from engine.analyze.sources import from_concepts  # noqa: E402
from engine.analyze.stream import stream  # noqa: E402
from engine.api import Model  # noqa: E402
from engine.data import broden, synth  # noqa: E402
from engine.data.broden import read_concepts  # noqa: E402

THREADS = int(os.environ.get("ONNXLENS_BENCH_THREADS", "1"))
IMAGES, BATCH, ROUNDS = 512, 32, 5


def _model(tmp):
    shipped = Path(os.environ.get("ONNXLENS_BENCH_MODEL", ROOT / "models" / "shapes-resnet.onnx"))
    if shipped.exists():
        return Model(shipped, threads=THREADS)
    from tests import tiny_models

    path = Path(tmp) / "tiny64.onnx"
    tiny_models.save(tiny_models.classifier(shape=("N", 3, 64, 64), width=32, stages=((64, 2), (96, 1))), path)
    return Model(path, threads=THREADS)


def test_throughput_paired(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXLENS_CACHE", str(tmp_path / "cache"))
    model = _model(tmp_path)
    layer = model.default_layer
    broden.write_concepts(tmp_path / "concepts", synth.batches(IMAGES, seed=11))
    dataset = read_concepts(tmp_path / "concepts")
    source = from_concepts(dataset)
    def forward_and_labels():
        for start, images, _, _ in stream(model, source, [layer], BATCH, progress=False):
            [dataset.label_maps(start + i) for i in range(len(images))]

    runs = {
        "forward": lambda: sum(len(i) for _, i, _, _ in stream(model, source, [layer], BATCH, progress=False)),
        "forward+labels": forward_and_labels,
        "dissect": lambda: dissect(model, dataset, layer=layer, batch_size=BATCH, progress=False),
        "dissect-decode": lambda: dissect(model, dataset, layer=layer, batch_size=BATCH, progress=False,
                                          label_store=False),
        "patches": lambda: mine(model, source, layer, top=9, batch_size=BATCH, progress=False),
    }
    runs["forward"]()  # warm-up: sessions, caches
    runs["dissect"]()  # the first run over the dataset writes the label-map store
    cpu, busy = {name: [] for name in runs}, {name: [] for name in runs}

    def cpu_counted(name):
        def run():
            used, start = _cpu_seconds(), time.perf_counter()
            runs[name]()
            cpu[name].append(_cpu_seconds() - used)
            busy[name].append(cpu[name][-1] / (time.perf_counter() - start))
        return run

    one_round, seconds = rotating_rounds({name: cpu_counted(name) for name in runs})
    for _ in range(ROUNDS):
        one_round()
    ratios = {name: round_ratios(seconds, "forward", name) for name in ("dissect", "dissect-decode", "patches", "forward+labels")}
    print(f"\nmodel {model.path.name}, layer {layer}, {IMAGES} images 96x96, batch {BATCH}, {THREADS} thread(s)")
    for name in runs:
        print(f"  {name:14s} {IMAGES / statistics.median(seconds[name]):7.1f} images/s, "
              f"{statistics.median(cpu[name]):.2f} CPU s (all threads), {statistics.median(busy[name]):.2f} cores busy")
    print(f"  forward CPU / dissect CPU: {statistics.median(cpu['forward']) / statistics.median(cpu['dissect']):.2f}x"
          "  (the one-core ceiling of dissect / forward)")
    for name, values in ratios.items():
        print(f"  {name} / forward: {statistics.median(values):.2f}x  rounds {['%.2f' % v for v in values]}")
    floor = [f / d for f, d in zip(ratios["dissect"], ratios["forward+labels"])]
    print(f"  dissect / (forward+labels): {statistics.median(floor):.2f}x  (decoding the label maps: the floor without the store)")


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _GeneratedConcepts:
    """A Broden-like dataset generated on the fly in chunks (nothing on disk), for the memory run."""

    categories = list(synth.CONCEPTS)

    def __init__(self, n, size=(32, 32), chunk=256):
        self.root = Path("generated")
        self.rows = [{"image": f"{i}.png", "sh": size[0], "sw": size[1]} for i in range(n)]
        self.classes, self.size, self.chunk, self._cached = None, size, chunk, (None, None)
        first, self.labels = 1, [None]
        for family, names in synth.CONCEPTS.items():
            self.labels += [{"name": name, "category": {family: 1}} for name in names]
            self._first = getattr(self, "_first", {}) | {family: first}
            first += len(names)

    def __len__(self):
        return len(self.rows)

    def _scene(self, i):
        start = i - i % self.chunk
        if self._cached[0] != start:
            self._cached = (start, synth.generate(min(self.chunk, len(self) - start), seed=3, size=self.size, start=start))
        return self._cached[1], i - start

    def image(self, i):
        scene, k = self._scene(i)
        return scene.images[k]

    def label_maps(self, i):
        scene, k = self._scene(i)
        return {family: np.where(m[k] > 0, m[k].astype(np.int32) + self._first[family] - 1, 0)[None]
                for family, m in scene.concepts.items()}


def _memory_run(n):
    """Dissect ``n`` generated images; print peak RSS (MiB) and seconds as JSON."""
    from tests import tiny_models

    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"onnxlens-bench-tiny32-{os.getpid()}.onnx"
    tiny_models.save(tiny_models.classifier(shape=("N", 3, 32, 32), width=16, stages=((32, 1),)), path)
    model = Model(path, threads=THREADS)
    dataset = _GeneratedConcepts(n)
    start = time.perf_counter()
    result = dissect(model, dataset, layer="relu2", batch_size=64, progress=False)
    path.unlink()
    print(json.dumps({"images": n, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": time.perf_counter() - start, "detectors": result.summary["detectors"]}))


def test_dissection_memory_is_flat():
    peaks = {}
    for n in (2000, 20000):
        out = subprocess.run([sys.executable, __file__, str(n)], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])
    print("\n" + "\n".join(f"  dissect {n:6d} images: peak RSS {p['peak_rss_mib']:.0f} MiB, {p['seconds']:.0f} s"
                           for n, p in peaks.items()))
    print(f"  growth 2k → 20k: {peaks[20000]['peak_rss_mib'] - peaks[2000]['peak_rss_mib']:+.1f} MiB")


if __name__ == "__main__":
    _memory_run(int(sys.argv[1]))
