"""Chunked fixed-batch execution versus a dynamic-batch export of the same network, batch 32.

A model exported with a static batch of 1 whose graph cannot be freed (here a constant
coordinate map of batch 1 joined on channels, as CoordConv and YOLO grid heads export) runs in
32 blocks of one image (``engine.runtime.batch.in_chunks``); its twin expands the same map to the
runtime batch (``Expand`` to ``Shape(image)[0]``) and runs the 32 images at once. Both are built
here with onnx.helper from the same weights, and give the same outputs. Goal: chunked ≤ 1.1 × the
dynamic twin, for ``Model.run`` (forward) and for Grad-CAM's capture (activations and gradients
at a layer). The ratios are timed back to back within each round (order rotating, medians of
per-round ratios); a static/dynamic twin pair exported by torch can be added with
``$ONNXLENS_BENCH_TWINS=static.onnx,dynamic.onnx`` (a static batch that frees is not chunked: the
row then shows the cost of a freed batch).

    python -m pytest benchmarks/bench_chunked.py --benchmark-columns=median,ops --benchmark-group-by=group -s
"""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from paired import rotating_rounds, round_ratios

from engine import Model

BATCH = 32
SIZE = 64
THREADS = int(os.environ.get("ONNXLENS_BENCH_THREADS", "1"))
TWINS = os.environ.get("ONNXLENS_BENCH_TWINS")


def coordconv_net(dynamic, width=32, stages=4, seed=0):
    """A small CNN (Conv/Relu stages, stride 2 from the second) whose last stage reads a constant
    2-channel coordinate map; ``dynamic``: the map is expanded to the runtime batch."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def weight(name, *dims):
        inits.append(numpy_helper.from_array((rng.standard_normal(dims) / np.sqrt(np.prod(dims[1:]))).astype(np.float32), name))
        return name

    x, channels, size = "image", 3, SIZE
    for i in range(stages):
        stride = 1 if i == 0 else 2
        nodes.append(helper.make_node("Conv", [x, weight(f"w{i}", width, channels, 3, 3), weight(f"b{i}", width)],
                                      [f"conv{i}"], pads=[1] * 4, strides=[stride] * 2))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"stage{i}"]))
        x, channels, size = f"stage{i}", width, size // stride
    coords = weight("coords", 1, 2, size, size)
    if dynamic:
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "first"))
        inits.append(numpy_helper.from_array(np.array([2, size, size], np.int64), "rest"))
        nodes += [helper.make_node("Shape", ["image"], ["shape"]),
                  helper.make_node("Gather", ["shape", "first"], ["n"]),
                  helper.make_node("Concat", ["n", "rest"], ["target"], axis=0),
                  helper.make_node("Expand", [coords, "target"], ["grid"])]
        coords = "grid"
    nodes += [helper.make_node("Concat", [x, coords], ["joined"], axis=1),
              helper.make_node("Conv", ["joined", weight("wj", width, width + 2, 3, 3), weight("bj", width)], ["convj"],
                               pads=[1] * 4),
              helper.make_node("Relu", ["convj"], ["features"]),
              helper.make_node("GlobalAveragePool", ["features"], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", weight("fc", 10, width), weight("fcb", 10)], ["logits"], transB=1)]
    batch = "N" if dynamic else 1
    graph = helper.make_graph(nodes, "coordconv", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """(chunked or freed static model, dynamic twin) pairs by name."""
    folder = tmp_path_factory.mktemp("twins")
    pairs = {}
    for dynamic in (False, True):
        onnx.save(coordconv_net(dynamic), folder / f"coordconv_{'dynamic' if dynamic else 'static'}.onnx")
    pairs["coordconv"] = [Model(folder / f"coordconv_{kind}.onnx", threads=THREADS) for kind in ("static", "dynamic")]
    if TWINS:
        static, dynamic = TWINS.split(",")
        pairs["twins"] = [Model(static, threads=THREADS), Model(dynamic, threads=THREADS)]
    return pairs


def _jobs(static, dynamic):
    height, width = static.input_size
    x = static.preprocess(np.random.default_rng(0).integers(0, 256, (BATCH, height, width, 3), dtype=np.uint8))
    seed = np.eye(static.outputs[0].shape[-1], dtype=np.float32)[np.arange(BATCH) % static.outputs[0].shape[-1]]
    layer = dynamic.default_layer
    np.testing.assert_allclose(static.run(x).outputs[0], dynamic.run(x).outputs[0], rtol=1e-4, atol=1e-5)
    return {
        "forward": {"fixed": lambda: static.run(x), "dynamic": lambda: dynamic.run(x)},
        "gradcam-capture": {
            "fixed": lambda: static.run(x, activations=[layer], gradients=[layer], seed=seed),
            "dynamic": lambda: dynamic.run(x, activations=[layer], gradients=[layer], seed=seed)},
    }


@pytest.mark.parametrize("job", ["forward", "gradcam-capture"])
@pytest.mark.parametrize("pair", ["coordconv", "twins"])
def test_chunked_vs_dynamic_batch(benchmark, twins, pair, job, capsys):
    if pair not in twins:
        pytest.skip("set ONNXLENS_BENCH_TWINS=static.onnx,dynamic.onnx to time an exported twin pair")
    static, dynamic = twins[pair]
    calls = _jobs(static, dynamic)[job]
    for call in calls.values():
        call()  # build the rewritten models and warm the sessions
    one_round, times = rotating_rounds(calls)
    benchmark.group = f"{pair} {job} batch {BATCH}"
    benchmark.pedantic(one_round, rounds=20, warmup_rounds=2)
    ratio = float(np.median(round_ratios(times, "fixed", "dynamic")))
    benchmark.extra_info["fixed / dynamic"] = ratio
    plan = f"chunks of {static._chunk}" if static._chunk else "freed batch"
    with capsys.disabled():
        print(f"\n{pair} {job} batch {BATCH} ({plan}): fixed / dynamic = {ratio:.3f} "
              f"(dynamic median {np.median(times['dynamic']) * 1e3:.2f} ms)", end="")
