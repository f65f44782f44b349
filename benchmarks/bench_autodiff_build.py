"""Time to build the rewritten (differentiated) model for a ResNet-50-size graph (goal < 2 s).

Run: ``python -m pytest benchmarks/bench_autodiff_build.py --benchmark-columns=mean,min,max``.
"""
import pytest

from engine.graph.autodiff import differentiate
from resnet50_graph import resnet50


@pytest.fixture(scope="module")
def model():
    return resnet50()


@pytest.mark.parametrize("wrt", [["layer4"], ["image"], ["image", "layer1", "layer2", "layer3", "layer4"]],
                         ids=["layer4", "input", "input+4-taps"])
def test_build_rewritten_resnet50(benchmark, model, wrt):
    rewritten = benchmark.pedantic(differentiate, args=(model, "logits", wrt), rounds=5, iterations=1)
    assert len(rewritten.graph.output) == 1 + len(wrt)
