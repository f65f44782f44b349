"""Cost of graph normalization and receptive-field analysis on a ResNet-50-sized graph.

A ResNet-50 layout (torchvision bottlenecks, 25.5 M random weights, opset 13, symbolic batch
and spatial dims, a TorchScript-style Shape -> Gather -> Concat -> Reshape flatten) built with
onnx.helper, normalized at 224x224 (opset upgrade to 17, folding, shape inference).
Measured 2026-11-30 on the shared 2-core machine: normalize median 78 ms (was 304 ms when every
pass copied the 100 MB model).

    python -m pytest benchmarks/bench_normalize.py --benchmark-columns=median,ops
"""
import numpy as np
import pytest

from engine.graph.normalize import normalize
from engine.graph.receptive import receptive_fields
from tests.onnx_build import Builder


def _resnet50():
    b = Builder()

    def conv(x, cin, cout, k, stride=1):
        return b.op("Conv", [x, b.weight(cout, cin, k, k, scale=0.01), b.weight(cout)],
                    strides=[stride] * 2, pads=[k // 2] * 4)

    h = b.op("Relu", [conv("x", 3, 64, 7, 2)])
    h = b.op("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    cin = 64
    for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for i in range(blocks):
            s = stride if i == 0 else 1
            m = b.op("Relu", [conv(h, cin, width, 1)])
            m = b.op("Relu", [conv(m, width, width, 3, s)])
            m = conv(m, width, width * 4, 1)
            shortcut = conv(h, cin, width * 4, 1, s) if i == 0 else h
            h = b.op("Relu", [b.op("Add", [m, shortcut])])
            cin = width * 4
    pooled = b.op("GlobalAveragePool", [h])
    batch = b.op("Gather", [b.op("Shape", [pooled]), b.const(np.array(0))], axis=0)
    target = b.op("Concat", [b.op("Unsqueeze", [batch, b.const(np.array([0]))]),
                             b.const(np.array([-1]))], axis=0)
    flat = b.op("Reshape", [pooled, target])
    b.op("Gemm", [flat, b.weight(1000, 2048, scale=0.01), b.weight(1000)], transB=1,
         name="logits")
    return b.model([("x", ["N", 3, "H", "W"])], [("logits", None)], 13)


@pytest.fixture(scope="module")
def resnet50():
    return _resnet50()


def test_normalize_resnet50(benchmark, resnet50):
    benchmark.pedantic(normalize, args=(resnet50,), kwargs={"input_size": (224, 224)},
                       rounds=3, iterations=1)


def test_receptive_fields_resnet50(benchmark, resnet50):
    model = normalize(resnet50, input_size=(224, 224))
    benchmark.pedantic(receptive_fields, args=(model,), rounds=3, iterations=1)
