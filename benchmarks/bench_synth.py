"""Shapes-world throughput (goal ≥ 2,000 images/s at 96×96 on one core).

    python -m pytest benchmarks/bench_synth.py --benchmark-columns=mean,stddev,rounds
"""
import pytest

from engine.data import synth

N = 1000


@pytest.mark.parametrize("size", [(96, 96), (64, 64), (224, 224)])
def test_generate(benchmark, size):
    scene = benchmark.pedantic(synth.generate, args=(N,), kwargs={"seed": 0, "size": size}, rounds=5, warmup_rounds=1)
    assert len(scene) == N
    benchmark.extra_info["images_per_s"] = round(N / benchmark.stats["mean"])
    print(f"\n{size[0]}x{size[1]}: {N / benchmark.stats['mean']:.0f} images/s")
