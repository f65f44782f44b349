"""Shapes-world throughput (goal ≥ 2,000 images/s at 96×96 on one core).

Prints images per wall-clock second and per CPU second of this process; on a shared machine the
second is the one-core figure.

    python -m pytest benchmarks/bench_synth.py -s --benchmark-columns=mean,stddev,rounds
"""
import time

import pytest

from engine.data import synth

N = 1000


@pytest.mark.parametrize("size", [(96, 96), (64, 64), (224, 224)])
def test_generate(benchmark, size):
    cpu = time.process_time()
    scene = benchmark.pedantic(synth.generate, args=(N,), kwargs={"seed": 0, "size": size}, rounds=5, warmup_rounds=1)
    cpu = (time.process_time() - cpu) / 6
    assert len(scene) == N
    benchmark.extra_info.update(images_per_s=round(N / benchmark.stats["mean"]), images_per_cpu_s=round(N / cpu))
    print(f"\n{size[0]}x{size[1]}: {N / benchmark.stats['mean']:.0f} images/s wall, {N / cpu:.0f} images/cpu-s")
