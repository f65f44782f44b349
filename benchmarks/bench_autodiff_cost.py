"""Cost of the rewritten (differentiated) model versus the plain forward pass, on ONNX Runtime.

ResNet-50 (random weights, explicit BatchNormalization, 224×224; ``resnet50_graph.py``), batch 1
and 16. Per round, back to back in rotating order: the plain forward pass, the model rewritten
for the gradient at ``layer4`` (the Grad-CAM layer; goal ≤ 1.2×) and for the input gradient
(goal ≤ 2.5×); prints the median of the per-round ratios. Threads: ``$ONNXLENS_BENCH_THREADS``
(default 1).

    python -m pytest benchmarks/bench_autodiff_cost.py -s --benchmark-disable

Measured (2-core machine shared with ~6 other jobs, onnxruntime 1.32, two runs each; the spread
between runs is the machine's load, not the model):

    threads  batch  layer4         input gradient
    1        1      1.01x, 1.02x   2.55x, 2.54x
    1        16     0.96x, 0.99x   2.64x, 2.37x
    2        1      1.04x, 1.01x   2.31x, 2.08x
    2        16     0.96x, 0.91x   2.80x, 2.58x

Before the NCHWc-friendly backward (ReLU mask as a depthwise step Conv, layout re-entry after
each ConvTranspose) the input gradient measured 2.63-2.92x; in one paired run of both rewritten
models against the same forward pass: batch 1 2.64x → 2.54x (1 thread), 2.35x → 2.13x (2 threads).
"""
import os
import time

import numpy as np
import onnxruntime as ort
import pytest

from engine.graph.autodiff import SEED, differentiate
from resnet50_graph import resnet50

THREADS = int(os.environ.get("ONNXLENS_BENCH_THREADS", "1"))


def session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def sessions():
    model = resnet50()
    return {"forward": session(model),
            "layer4": session(differentiate(model, "logits", ["layer4"])),
            "input": session(differentiate(model, "logits", ["image"]))}


@pytest.mark.parametrize("batch,rounds", [(1, 25), (16, 5)])
def test_gradient_cost_paired(benchmark, sessions, batch, rounds):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
    feeds = {"image": x, SEED: np.eye(1000, dtype=np.float32)[rng.integers(0, 1000, batch)]}
    calls = {name: (lambda s=s, f=({"image": x} if name == "forward" else feeds): s.run(None, f))
             for name, s in sessions.items()}
    for call in calls.values():
        call()  # warm-up
    ratios = {name: [] for name in calls if name != "forward"}
    names = list(calls)
    for r in range(rounds):
        times = {}
        for name in names[r % 3:] + names[:r % 3]:
            start = time.perf_counter()
            calls[name]()
            times[name] = time.perf_counter() - start
        for name in ratios:
            ratios[name].append(times[name] / times["forward"])
    medians = {name: float(np.median(v)) for name, v in ratios.items()}
    benchmark.extra_info.update(medians)
    print(f"\nResNet-50 batch {batch}, {THREADS} thread(s): " +
          ", ".join(f"{name} {m:.2f}x forward" for name, m in medians.items()))
    benchmark.pedantic(calls["input"], rounds=1, iterations=1)
