"""Predict throughput: engine ``Model`` versus a bare ONNX Runtime session, side by side in one run.

Per model and batch size (1 and 32), three rows in one pytest-benchmark group:
``bare`` = ``session.run`` on a preprocessed float batch; ``engine-run`` = ``Model.run`` on the same
batch (shape check + run); ``engine-predict`` = ``Model.predict`` on the uint8 images that batch
was made from (preprocessing + run + softmax + top-5). Goal: engine overhead ≤ 5 %
(engine / bare ≤ 1.05). Images are random uint8 at the model's input size.

On a shared, noisy machine, rows timed one after the other drift apart by more than 5 %, so
``test_overhead_paired`` also times bare, engine-run and engine-predict back to back within each
round (order rotating) and prints the median of the per-round ratios engine / bare.

Models: ``models/*.onnx``, or the files matching the glob in ``$ONNXLENS_BENCH_MODELS``.
Threads: ``$ONNXLENS_BENCH_THREADS`` (default 1), the same for both sessions.

    python -m pytest benchmarks/bench_predict.py --benchmark-columns=median,ops --benchmark-group-by=group
"""
import glob
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from paired import rotating_rounds, round_ratios

from engine import Model

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(glob.glob(os.environ.get("ONNXLENS_BENCH_MODELS", str(ROOT / "models" / "*.onnx"))))
THREADS = int(os.environ.get("ONNXLENS_BENCH_THREADS", "1"))
DYNAMIC_SIZE = (64, 64)  # used only for models whose spatial dims are dynamic

pytestmark = pytest.mark.skipif(
    not MODELS, reason="no models/*.onnx yet (models/train.py makes them); set ONNXLENS_BENCH_MODELS to a glob"
)


@pytest.fixture(scope="module", params=MODELS, ids=lambda p: Path(p).stem)
def pair(request):
    model = Model(request.param, threads=THREADS)
    if model.input_size is None:
        model = Model(request.param, threads=THREADS, input_size=DYNAMIC_SIZE)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    bare = ort.InferenceSession(request.param, options, providers=model.session.get_providers())
    return model, bare


def _calls(pair, batch):
    """The three runners on one batch of random uint8 images (skips models with another static batch)."""
    model, bare = pair
    if model.input.batch not in (None, batch):
        pytest.skip(f"{model.path.name} has a static batch of {model.input.batch}")
    height, width = model.input_size
    images = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    x = model.preprocess(images)
    return {
        "bare": lambda: bare.run(None, {model.input.name: x}),
        "engine-run": lambda: model.run(x),
        "engine-predict": lambda: model.predict(images, top=5),
    }


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("runner", ["bare", "engine-run", "engine-predict"])
def test_predict_throughput(benchmark, pair, batch, runner):
    calls = _calls(pair, batch)
    benchmark.group = f"{pair[0].path.stem} batch {batch}"
    benchmark.extra_info["images_per_call"] = batch
    benchmark(calls[runner])


@pytest.mark.parametrize("batch", [1, 32])
def test_overhead_paired(benchmark, pair, batch, capsys):
    model = pair[0]
    one_round, times = rotating_rounds(_calls(pair, batch))
    benchmark.group = f"{model.path.stem} batch {batch} paired"
    benchmark.pedantic(one_round, rounds=300 if batch == 1 else 40, warmup_rounds=3)
    bare_times = np.array(times["bare"])
    for name in ("engine-run", "engine-predict"):
        ratio = float(np.median(round_ratios(times, name, "bare")))
        benchmark.extra_info[f"{name} / bare"] = ratio
        with capsys.disabled():
            print(f"\n{model.path.stem} batch {batch}: {name} / bare = {ratio:.3f} "
                  f"(bare median {np.median(bare_times) * 1e3:.3f} ms)", end="")
