"""Cost of activations and gradients through ``Model.run``, side by side with a plain forward pass.

Per model and batch size (1 and 16), one paired benchmark times within each round, order
rotating: ``forward`` = ``Model.run(x)``; ``layer`` = activation + gradient at the default layer
(Grad-CAM's capture); ``input`` = the input gradient (saliency). It prints the medians of the
per-round ratios ``layer / forward`` (goal ≤ 1.2) and ``input / forward`` (goal ≤ 2.2).
``test_gradient_cpu_cost`` runs the same three models (the cached rewritten files) on bare sessions
whose threads do not spin and compares process CPU time, which a busy shared machine distorts far
less than wall-clock time.
``test_build_time`` times building the rewritten ResNet-50 uncached (taps + normalize +
differentiate, ``rewrite.build``; goal < 2 s); ``test_first_use_time`` adds what a first
``Model.run`` also pays: the content hash, the cache write and the ORT session. Measured
2026-11-30 on the shared 2-core machine (load 3–4), medians of two runs alternating with main
before the build-speed work (8148ca3): build, input gradient 0.34–0.42 s (was 0.47–0.61 s),
default layer 0.05–0.07 s (was 0.30–0.31 s); first use, input gradient 0.81–0.85 s (was
1.63–1.95 s), default layer 0.40–0.51 s (was 0.75–0.91 s). About 85 % of the
input-gradient build is now ``differentiate``.
Models: ``models/shapes-resnet.onnx`` (or ``$ONNXLENS_BENCH_SHAPES``; skipped until it exists), a
ResNet-18 and a ResNet-50 with random weights at 224×224 built with onnx.helper (``resnet50_graph.py``).
ORT threads: ``$ONNXLENS_BENCH_THREADS`` (default 2). Rewritten models go to a temporary cache.

    python -m pytest benchmarks/bench_gradients.py --benchmark-columns=median,rounds -s
"""
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine import Model
from engine.graph.autodiff import SEED
from engine.runtime import rewrite
from paired import rotating_rounds, round_ratios
from resnet50_graph import resnet18, resnet50

ROOT = Path(__file__).resolve().parents[1]
THREADS = int(os.environ.get("ONNXLENS_BENCH_THREADS", "2"))
SHAPES_RESNET = Path(os.environ.get("ONNXLENS_BENCH_SHAPES", ROOT / "models" / "shapes-resnet.onnx"))
ROUNDS = {("shapes-resnet", 1): 200, ("shapes-resnet", 16): 40, ("resnet18", 1): 20, ("resnet18", 16): 4,
          ("resnet50", 1): 12, ("resnet50", 16): 3}


@pytest.fixture(scope="module", autouse=True)
def private_cache():
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONNXLENS_CACHE", folder)
        yield


@pytest.fixture(scope="module")
def resnet50_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("resnet50") / "resnet50.onnx"
    onnx.save(resnet50(), str(path))
    return path


@pytest.fixture(scope="module")
def resnet18_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("resnet18") / "resnet18.onnx"
    onnx.save(resnet18(), str(path))
    return path


@pytest.fixture(scope="module", params=["shapes-resnet", "resnet18", "resnet50"])
def model(request, resnet18_path, resnet50_path):
    if request.param == "shapes-resnet":
        if not SHAPES_RESNET.is_file():
            pytest.skip(f"{SHAPES_RESNET} is not there yet (models/train.py makes it)")
        return request.param, Model(SHAPES_RESNET, threads=THREADS)
    return request.param, Model(resnet18_path if request.param == "resnet18" else resnet50_path, threads=THREADS)


def _inputs(model, batch):
    """A random preprocessed batch in the model's layout and one-hot seeds (image i seeds class i mod C)."""
    height, width = model.input_size
    shape = (batch, 3, height, width) if model.input.layout == "NCHW" else (batch, height, width, 3)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    classes = model.outputs[0].shape[1]
    seed = np.eye(classes, dtype=np.float32)[np.arange(batch) % classes]
    return x, seed


@pytest.mark.parametrize("batch", [1, 16])
def test_gradient_cost_paired(benchmark, model, batch, capsys):
    name, model = model
    x, seed = _inputs(model, batch)
    layer = model.default_layer
    calls = {
        "forward": lambda: model.run(x),
        "layer": lambda: model.run(x, activations=[layer], gradients=[layer], seed=seed),
        "input": lambda: model.run(x, gradients=["input"], seed=seed),
    }
    for call in calls.values():  # build, cache and warm up every session before timing
        call()
    one_round, times = rotating_rounds(calls)
    benchmark.group = f"{name} batch {batch} paired"
    benchmark.pedantic(one_round, rounds=ROUNDS[name, batch], warmup_rounds=1)
    _report(benchmark, capsys, times, f"{name} batch {batch}", {"layer": f"layer ({layer})", "input": "input (input)"},
            "", "ms")


def _report(benchmark, capsys, times, title, names, how, unit):
    """Print and record the median per-round ratios layer / forward and input / forward."""
    forward = np.median(times["forward"]) * 1e3
    for key, goal in (("layer", 1.2), ("input", 2.2)):
        ratio = float(np.median(round_ratios(times, key, "forward")))
        benchmark.extra_info[f"{key} / forward{' (cpu)' if how else ''}"] = ratio
        with capsys.disabled():
            print(f"\n{title}: {names[key]} / forward{how} = {ratio:.2f} (goal ≤ {goal}; forward median "
                  f"{forward:.1f} {unit}, {THREADS} threads)", end="")


def cpu_session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # CPU time = work done
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 16])
def test_gradient_cpu_cost(benchmark, model, batch, capsys):
    """The same three models timed in process CPU time (threads do not spin), which other
    processes on a shared machine disturb far less than wall-clock time."""
    name, model = model
    x, seed = _inputs(model, batch)
    layer, output, image = model.default_layer, model.outputs[0].name, model.input.name
    digest = rewrite.content_hash(model.proto)
    requests = {"layer": rewrite.Request(model.input_size, (layer,), (layer,), output),
                "input": rewrite.Request(model.input_size, (), (image,), output)}
    calls = {"forward": partial(cpu_session(model.path).run, None, {image: x})}
    for key, request in requests.items():
        session = cpu_session(rewrite.cached(model.proto, request, digest))
        calls[key] = partial(session.run, None, {image: x, SEED: seed})
    for call in calls.values():
        call()
    one_round, times = rotating_rounds(calls, clock=time.process_time)
    benchmark.group = f"{name} batch {batch} cpu"
    benchmark.pedantic(one_round, rounds=ROUNDS[name, batch], warmup_rounds=0)
    _report(benchmark, capsys, times, f"{name} batch {batch}", {"layer": "layer", "input": "input"},
            " in CPU time", "ms CPU")


def resnet50_request(path, target):
    model = Model(path, threads=THREADS)
    wanted = model.default_layer if target == "layer" else model.input.name
    return model, wanted, rewrite.Request(model.input_size, activations=(wanted,) if target == "layer" else (),
                                          gradients=(wanted,), output=model.outputs[0].name)


@pytest.mark.parametrize("target", ["layer", "input"])
def test_build_time(benchmark, resnet50_path, target):
    model, wanted, request = resnet50_request(resnet50_path, target)
    benchmark.group = "resnet50 rewrite build (uncached)"
    rewritten = benchmark.pedantic(rewrite.build, args=(model.proto, request), rounds=5, iterations=1)
    assert rewritten.graph.output[-1].name == f"{wanted}__grad"


@pytest.mark.parametrize("target", ["layer", "input"])
def test_first_use_time(benchmark, resnet50_path, target, tmp_path):
    """What the first ``Model.run`` of a request pays: content hash, build, cache write, session."""
    model, _, request = resnet50_request(resnet50_path, target)
    folders = iter(tmp_path / str(i) for i in range(100))
    benchmark.group = "resnet50 first use (empty cache)"
    benchmark.pedantic(lambda: rewrite.session(model.proto, request, folder=next(folders), threads=THREADS),
                       rounds=3, iterations=1)
