"""Structured targets on hand-built models of each output kind: seed rows against numpy
references, input gradients against central differences, the default layer per output."""
import itertools

import numpy as np
import pytest

from engine.api import Model
from engine.errors import UsageError
from engine.explain import cam, methods, saliency
from engine.explain.outputs import describe
from engine.explain.targets import Target, ctc_greedy, iou, parse, resolve
from tests import target_models as tm

RNG = np.random.default_rng(0)
IMAGES = list(RNG.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8))
LINES = list(RNG.integers(0, 256, size=(2, 8, 32, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("targets")
    return {
        "yolov8": Model(tm.yolov8(folder / "yolov8.onnx"), provider="CPUExecutionProvider", threads=1),
        "yolov5": Model(tm.yolov5(folder / "yolov5.onnx"), provider="CPUExecutionProvider", threads=1),
        "pair": Model(tm.pair(folder / "pair.onnx"), provider="CPUExecutionProvider", threads=1),
        "ctc": Model(tm.ctc(folder / "ctc.onnx"), provider="CPUExecutionProvider", threads=1),
        "ctc_tnc": Model(tm.ctc(folder / "ctc_tnc.onnx", time_major=True), provider="CPUExecutionProvider", threads=1),
        "dense": Model(tm.dense(folder / "dense.onnx"), provider="CPUExecutionProvider", threads=1),
        "nc11": Model(tm.conv_head(folder / "nc11.onnx"), provider="CPUExecutionProvider", threads=1),
        "n1c_softmax": Model(tm.conv_head(folder / "n1c.onnx", layout="N1C", softmax=True),
                             provider="CPUExecutionProvider", threads=1),
        "picodet": Model(tm.picodet(folder / "picodet.onnx"), provider="CPUExecutionProvider", threads=1),
    }


# --- the vocabulary -------------------------------------------------------------------------


@pytest.mark.parametrize("text,want", [
    ("top", Target("top")), ("text", Target("text")), ("3", Target("class", 3)), ("class:3", Target("class", 3)),
    ("dog", Target("class", 1)), ("class:dog", Target("class", 1)), ("box:2", Target("box", 2)),
    ("box:1,2,30.5,40", Target("box", box=(1.0, 2.0, 30.5, 40.0))), ("char:5", Target("char", 5)),
    ("region:0,0,8,8", Target("region", box=(0.0, 0.0, 8.0, 8.0))), ("channel:2", Target("channel", 2)),
    ("class:3@region:0,0,8,8", Target("region", 3, (0.0, 0.0, 8.0, 8.0))), ("mask:m.png", Target("mask", mask="m.png")),
    ("dog@mask:m.npy", Target("mask", 1, mask="m.npy")), ("0,2", [0, 2]),
])
def test_parse_reads_the_vocabulary(text, want):
    assert parse(text, labels=["cat", "dog"]) == want


@pytest.mark.parametrize("text", ["best", "box:", "box:1,2", "box:5,5,1,1", "char:-1", "char:x", "region:1,2,3",
                                  "class:3@box:0", "channel:a", "cow"])
def test_bad_targets_name_the_vocabulary(text):
    with pytest.raises(UsageError) as err:
        parse(text, labels=["cat", "dog"])
    assert "\n" not in str(err.value)


# --- seed rows against numpy references -------------------------------------------------------


def _outputs(model, images):
    x = model.preprocess(images)
    return x, model.run(x).outputs


def test_yolov8_box_rows(models):
    model = models["yolov8"]
    _, (out,) = _outputs(model, IMAGES)
    for i in range(2):
        cls = out[i, 4:]                         # C×A
        best = cls.max(axis=0)
        order = np.argsort(-best, kind="stable")
        for k in (0, 3):
            rows = resolve("box:%d" % k, 1, out.shape[1:], outputs=out[i:i + 1], kind="yolov8")
            a = order[k]
            c = cls[:, a].argmax()
            want = np.zeros(out.shape[1:], np.float32)
            want[4 + c, a] = 1
            np.testing.assert_array_equal(rows.seeds[0], want)
            cx, cy, w, h = out[i, :4, a]
            want_box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
            np.testing.assert_allclose(rows.details[0]["box"], want_box, atol=0.01)
            assert rows.details[0]["rank"] == k and rows.labels[0] == c
    # the box nearest a given xyxy: that box itself, even slightly moved
    box = np.array(resolve("box:5", 1, out.shape[1:], outputs=out[:1], kind="yolov8").details[0]["box"])
    near = resolve("box:" + ",".join(str(v) for v in box + 0.2), 1, out.shape[1:], outputs=out[:1], kind="yolov8")
    assert near.details[0]["rank"] == 5


def test_yolov5_seed_is_the_gradient_of_objectness_times_class(models):
    model = models["yolov5"]
    _, (out,) = _outputs(model, IMAGES[:1])
    row = out[0]
    conf = row[:, 4:5] * row[:, 5:]
    a, c = np.unravel_index(np.argmax(conf), conf.shape)
    rows = resolve("top", 1, row.shape, outputs=out, kind="yolov5")
    want = np.zeros(row.shape, np.float32)
    want[a, 4], want[a, 5 + c] = row[a, 5 + c], row[a, 4]
    np.testing.assert_allclose(rows.seeds[0], want, rtol=1e-6)
    assert rows.details[0]["score"] == pytest.approx(conf[a, c], rel=1e-5)


def test_ctc_char_and_text_rows(models):
    model = models["ctc"]
    _, (out,) = _outputs(model, LINES[:1])
    best = out[0].argmax(axis=1)
    runs = [(c, [t for t, _ in grp]) for c, grp in itertools.groupby(enumerate(best), key=lambda p: p[1])]
    chars = [(int(c), frames) for c, frames in runs if c != 0]
    assert ctc_greedy(out[0]) == chars and len(chars) >= 2
    rows = resolve("char:1", 1, out.shape[1:], outputs=out, kind="sequence")
    want = np.zeros(out.shape[1:], np.float32)
    want[chars[1][1], chars[1][0]] = 1
    np.testing.assert_array_equal(rows.seeds[0], want)
    text = resolve("text", 1, out.shape[1:], outputs=out, kind="sequence", labels=list("-abcde"))
    assert text.details[0]["text"] == "".join("-abcde"[c] for c, _ in chars)
    assert text.seeds.sum() == sum(len(f) for _, f in chars)
    # another blank: the frames of class 0 become characters
    other = resolve("text", 1, out.shape[1:], outputs=out, kind="sequence", blank=5)
    assert [c for c, _ in ctc_greedy(out[0], blank=5)] == [c for c, _ in runs if c != 5]
    assert other.seeds.sum() == sum(len(f) for c, f in runs if c != 5)
    with pytest.raises(UsageError, match="has %d characters" % len(chars)):
        resolve("char:%d" % len(chars), 1, out.shape[1:], outputs=out, kind="sequence")


def test_time_major_ctc_is_read_batch_first(models):
    model = models["ctc_tnc"]
    x, (out,) = _outputs(model, LINES)
    view = describe(model, x[:1])
    assert view.kind == "sequence" and out.shape == (16, 2, 6) and view.rows(out).shape == (2, 16, 6)
    rows = resolve("char:0", 2, (16, 6), outputs=view.rows(out), kind="sequence")
    seeds = view.seeds(rows.seeds)
    assert seeds.shape == out.shape
    for i in range(2):
        (c, frames), *_ = ctc_greedy(out[:, i])
        assert seeds[frames, i, c].tolist() == [1] * len(frames) and seeds[:, i].sum() == len(frames)


def test_dense_region_and_mask_rows(models, tmp_path):
    model = models["dense"]
    _, (out,) = _outputs(model, IMAGES[:1])
    rows = resolve("class:2@region:4,0,12,8", 1, out.shape[1:], outputs=out, kind="dense", input_size=(16, 16))
    want = np.zeros(out.shape[1:], np.float32)
    want[2, 0:8, 4:12] = 1
    np.testing.assert_array_equal(rows.seeds[0], want)
    strongest = int(out[0][:, 0:8, 4:12].mean(axis=(1, 2)).argmax())
    rows = resolve("region:4,0,12,8", 1, out.shape[1:], outputs=out, kind="dense", input_size=(16, 16))
    assert rows.labels[0] == strongest
    mask = np.zeros((32, 32), np.uint8)
    mask[16:, :8] = 255           # a mask at twice the output size: the bottom-left 8×4 cells
    np.save(tmp_path / "m.npy", mask)
    rows = resolve(parse(f"class:1@mask:{tmp_path / 'm.npy'}"), 1, out.shape[1:], outputs=out, kind="dense")
    assert rows.seeds[0, 1, 8:, :4].all() and rows.seeds.sum() == 32
    with pytest.raises(UsageError, match="channel 3 out of range"):
        resolve("channel:3", 1, out.shape[1:], outputs=out, kind="dense")


def test_targets_that_do_not_fit_the_kind_say_which_do(models):
    _, (out,) = _outputs(models["yolov8"], IMAGES[:1])
    with pytest.raises(UsageError, match="does not apply to a yolov8 output.*box:K"):
        resolve("char:0", 1, out.shape[1:], outputs=out, kind="yolov8")
    with pytest.raises(UsageError, match="does not apply to a classifier"):
        resolve("box:0", 1, (5,), outputs=np.zeros((1, 5)), kind="classifier")


def test_iou():
    np.testing.assert_allclose(iou((0, 0, 2, 2), np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]])),
                               [1 / 7, 1, 0])


# --- output kinds, classifier shapes, logits ---------------------------------------------------


def test_kinds_are_inferred_from_the_real_outputs(models):
    kinds = {name: describe(m, m.preprocess(LINES[:1] if "ctc" in name else IMAGES[:1])) for name, m in models.items()}
    assert {n: v.kind for n, v in kinds.items()} == {
        "yolov8": "yolov8", "yolov5": "yolov5", "pair": "boxes", "ctc": "sequence", "ctc_tnc": "sequence",
        "dense": "dense", "nc11": "classifier", "n1c_softmax": "classifier", "picodet": "scores"}
    assert kinds["pair"].name == "scores" and kinds["pair"].boxes == "boxes"
    x = models["yolov8"].preprocess(IMAGES[:1])
    assert describe(models["yolov8"], x, kind="yolov5").kind == "yolov5"
    with pytest.raises(UsageError, match="cannot be read as dense"):
        describe(models["yolov8"], x, kind="dense")
    with pytest.raises(UsageError, match="already is the logits"):
        describe(models["yolov8"], x, logits=True)


@pytest.mark.parametrize("name", ["nc11", "n1c_softmax"])
def test_class_targets_on_nc11_and_n1c_outputs(models, name):
    model = models[name]
    x, (out,) = _outputs(model, IMAGES)
    exp = cam(model, IMAGES, targets=[1, 3])
    np.testing.assert_allclose(exp.scores, out.reshape(2, -1), rtol=1e-5)
    seeds = np.zeros((2, 5), np.float32)
    seeds[[0, 1], [1, 3]] = 1
    layer = model.default_layer
    run = model.run(x, activations=[layer], gradients=[layer], seed=seeds.reshape(out.shape))
    want = methods.gradcam(run.activations[layer], run.gradients[layer])
    np.testing.assert_allclose(exp.raw[layer], want, rtol=1e-5, atol=1e-7)
    top = cam(model, IMAGES)
    assert top.targets.tolist() == out.reshape(2, -1).argmax(axis=1).tolist()


def test_logits_of_a_softmax_head(models):
    model = models["n1c_softmax"]
    x = model.preprocess(IMAGES)
    view = describe(model, x[:1], logits=True)
    logits = model.run(x, activations=[view.name]).activations[view.name]
    exp = cam(model, IMAGES, logits=True, targets=2)
    assert exp.output == {"name": view.name, "kind": "classifier", "probabilities": False, "logits": None}
    np.testing.assert_allclose(exp.scores, logits.reshape(2, -1), rtol=1e-5)
    probs = cam(model, IMAGES, targets=2)
    assert probs.output["probabilities"] and probs.output["logits"] == view.name
    assert not np.allclose(exp.raw[exp.layers[0]], probs.raw[probs.layers[0]])
    sal = saliency(model, IMAGES, method="vanilla", logits=True, targets=2)
    seed = np.zeros_like(logits)
    seed[..., 2] = 1
    want = model.run(x, gradients=["input"], seed={view.name: seed}).gradients["input"]
    np.testing.assert_allclose(sal.attributions, want, rtol=1e-5, atol=1e-7)


# --- input gradients against central differences --------------------------------------------


CASES = [("yolov8", "box:0", IMAGES), ("yolov8", "box:7", IMAGES), ("yolov5", "top", IMAGES),
         ("pair", "box:2", IMAGES), ("ctc", "char:1", LINES), ("ctc", "text", LINES),
         ("dense", "class:1@region:2,2,10,10", IMAGES)]


@pytest.mark.parametrize("name,target,images", CASES)
def test_input_gradient_of_each_target_matches_central_differences(models, name, target, images):
    model = models[name]
    x = model.preprocess(images[:1]).astype(np.float64)
    view = describe(model, x.astype(np.float32))
    values = model.run(x.astype(np.float32)).outputs
    out = values[[t.name for t in model.outputs].index(view.name)]
    boxes = values[0] if view.boxes else None
    rows = resolve(target, 1, out.shape[1:], outputs=out, kind=view.kind, boxes=boxes, input_size=x.shape[2:])
    d = rows.details[0]
    index = [t.name for t in model.outputs].index(view.name)
    values_of = lambda xx: model.run(xx.astype(np.float32)).outputs[index]  # noqa: E731

    def score(xx):
        o = values_of(xx)[0].astype(np.float64)
        if view.kind == "yolov8":
            return o[4 + d["class"], d["anchor"]]
        if view.kind == "yolov5":
            return o[d["anchor"], 4] * o[d["anchor"], 5 + d["class"]]
        if view.kind == "boxes":
            return o[d["class"], d["anchor"]]
        if view.kind == "sequence":
            best = out[0].argmax(axis=1)
            return sum(o[t, best[t]] for t in d["frames"])
        return float((o * rows.seeds[0]).sum())

    exp = saliency(model, images[:1], method="vanilla", targets=target)
    grad = exp.attributions[0].astype(np.float64)
    assert exp.details[0] == d
    rng = np.random.default_rng(1)
    for _ in range(3):
        v = rng.standard_normal(x.shape[1:])
        h = 1e-3
        fd = (score(x + h * v) - score(x - h * v)) / (2 * h)
        assert np.sum(grad * v) == pytest.approx(fd, rel=1e-2, abs=1e-3 * np.abs(grad).sum() / np.sqrt(grad.size))


# --- default layer and empty maps -------------------------------------------------------------


def test_default_layer_feeds_every_stride_and_empty_maps_are_flagged(models):
    model = models["yolov8"]
    assert model.default_layer == "n3" and model.default_layer_for("out") == "n3"
    exp = cam(model, IMAGES, targets="box:0")
    assert exp.layers == ["n3"] and not exp.empty.any() and exp.raw["n3"].max() > 0
    # each stride's class head feeds only its own anchors (64 of stride 2, then 16 of stride 4)
    heads = [layer.name for layer in model.layers if layer.op == "Sigmoid"]
    anchor = exp.details[0]["anchor"]
    own, other = (heads[0], heads[1]) if anchor < 64 else (heads[1], heads[0])
    both = cam(model, IMAGES[:1], targets="box:0", layer=[own, other], method="gradcam")
    assert both.raw[own].max() > 0 and (both.raw[other] == 0).all()
    alone = cam(model, IMAGES[:1], targets="box:0", layer=other)
    assert alone.empty.tolist() == [True]


def test_per_stride_scores_default_layer_feeds_the_explained_output(models):
    model = models["picodet"]
    x = model.preprocess(IMAGES)
    s2, _, s4, _ = model.run(x).outputs
    for output, scores in (("cls_s2", s2), ("cls_s4", s4)):
        exp = cam(model, IMAGES, targets="box:1", output=output)
        assert exp.output["kind"] == "scores" and not exp.empty.any()
        for i in range(2):
            best = scores[i].max(axis=1)
            anchor = int(np.argsort(-best, kind="stable")[1])
            assert exp.details[i] == {"class": int(scores[i, anchor].argmax()), "score": pytest.approx(best[anchor]),
                                      "anchor": anchor, "rank": 1}
        assert exp.layers == [model.default_layer_for(output)]
    # the last spatial layer of the graph (the stride-4 head) does not feed the stride-2 scores
    consumed = {i for node in model.proto.graph.node for i in node.input}
    last = [layer.name for layer in model.layers if layer.name in consumed][-1]
    assert model.default_layer == model.default_layer_for("cls_s2") != last
    assert cam(model, IMAGES, targets="box:0", layer=last).empty.all()
    with pytest.raises(UsageError, match="without decoded boxes"):
        cam(model, IMAGES, targets="box:0,0,4,4")


def test_per_stride_outputs_share_their_default_layer(models):
    """Each stride's scores (and box distributions) of a PicoDet head get the neck map every stride
    comes from (n4 = conv(n3) + c2), not the map before their own 1×1 head (layout_cdla: Grad-CAM
    there was empty for stride 8's low scores; the gradient lives at the anchor's cell only)."""
    from engine.graph.cone import strides_of

    model = models["picodet"]
    declared = [(t.name, t.shape) for t in model.outputs]
    assert strides_of(declared, "cls_s4") == ["cls_s4", "cls_s2"] and strides_of(declared, "reg_s2") == ["reg_s2", "reg_s4"]
    assert strides_of(declared, "n3") == ["n3"]
    assert {model.default_layer_for(o) for o, _ in declared} == {"n3"} == {model.default_layer}
    for output in ("cls_s2", "cls_s4"):
        exp = cam(model, IMAGES, targets="box:3", output=output)
        assert exp.layers == ["n3"] and not exp.empty.any()


def test_seeds_fit_the_real_output_when_the_declared_rank_is_wrong(tmp_path, models):
    """A T×N×C output declared [1, seqlen] (as older exporters wrote it) takes T×N×C seeds."""
    from engine.errors import InputShapeError

    model = Model(tm.ctc(tmp_path / "wrong.onnx", time_major=True, declared=[1, "seqlen"]),
                  provider="CPUExecutionProvider", threads=1)
    assert model.outputs[0].shape == (1, "seqlen")
    got = saliency(model, LINES, method="vanilla", targets="char:0")
    want = saliency(models["ctc_tnc"], LINES, method="vanilla", targets="char:0")
    assert got.details == want.details and got.output["kind"] == "sequence"
    np.testing.assert_allclose(got.attributions, want.attributions, rtol=1e-5, atol=1e-7)
    x = model.preprocess(LINES)
    with pytest.raises(InputShapeError, match="seed of shape 2×16×6 does not fit output 'out' \\(16×2×6\\)"):
        model.run(x, gradients=["input"], seed=np.zeros((2, 16, 6), np.float32))


def test_real_output_dims_are_measured_once_per_input_shape(tmp_path):
    """Seeds for an output whose declared dims do not fit take its real dims from one forward pass;
    later runs on inputs of that shape reuse them (no forward pass). Dims that a later input does
    not give (a data-dependent output) are measured again: a seed shaped for the old dims is then
    refused instead of seeding the wrong positions."""
    from engine.errors import InputShapeError

    model = Model(tm.ctc(tmp_path / "wrong.onnx", time_major=True, declared=[1, "seqlen"]),
                  provider="CPUExecutionProvider", threads=1)
    x = model.preprocess(LINES)
    seed = np.zeros((16, 2, 6), np.float32)
    seed[:, :, 1] = 1
    want = model.run(x, gradients=["input"], seed=seed).gradients["input"]
    forward_runs = []
    real_run = model.session.run
    model.session.run = lambda *args: forward_runs.append(1) or real_run(*args)
    np.testing.assert_array_equal(model.run(x, gradients=["input"], seed=seed).gradients["input"], want)
    assert forward_runs == []
    key = ("out", x.shape)
    model._seen_dims[key] = (8, 2, 6)  # as if an earlier input of this shape had given 8 frames
    with pytest.raises(InputShapeError, match="seed of shape 8×2×6 does not fit output 'out' \\(16×2×6\\)"):
        model.run(x, gradients=["input"], seed=seed[:8])
    assert forward_runs == [1] and model._seen_dims[key] == (16, 2, 6)


def test_crnn_default_layer_is_before_the_frames_and_one_frame_is_read_time_major(tmp_path):
    """A CRNN's W×N×C×H Transpose is 4-D but not an image map (ddddocr: Grad-CAM gave T maps per
    image there); with one image and one frame (T = N = 1) the batch axis is the one that grows."""
    model = Model(tm.crnn(tmp_path / "crnn.onnx"), provider="CPUExecutionProvider", threads=1)
    assert model.default_layer == "feat"
    lines = list(np.random.default_rng(1).integers(0, 256, size=(3, 8, 32, 3), dtype=np.uint8))
    exp = cam(model, lines, targets="top")
    assert exp.output["kind"] == "sequence" and exp.maps.shape == (3, 8, 32) and exp.image.tolist() == [0, 1, 2]
    x = np.random.default_rng(2).standard_normal((3, 1, 8, 2)).astype(np.float32)
    view = describe(model, x[:1])
    out = model.run(x).outputs[0]
    assert out.shape == (1, 3, 6) and view.perm == (1, 0, 2)
    np.testing.assert_array_equal(view.rows(out), out.transpose(1, 0, 2))


@pytest.mark.parametrize("name", ["yolov8", "yolov5", "pair"])
def test_default_layer_is_the_neck_both_strides_come_from(models, name):
    """n4 = conv(n3) + c2: the stride-4 head comes from n3 too, the stride-2 head not from n4."""
    model = models[name]
    assert model.default_layer == "n3"
    for k in range(0, 40, 7):
        exp = cam(model, IMAGES, targets=f"box:{k}")
        assert not exp.empty.any(), (k, [d["anchor"] for d in exp.details])


def test_image_like_layers():
    from engine.graph.cone import image_like

    assert image_like(("N", 64, 80, 80), (640, 640)) and image_like(("N", 64, 20, 20), (640, 640))
    assert not image_like(("N", 1, 4, 8400), (640, 640))          # YOLOv8's DFL
    assert image_like(("N", 32, 1, 24), (32, 96))                 # a recognizer's collapsed height
    assert not image_like(("N", 64, 1, 1), (224, 224))            # pooled
    assert not image_like(("N", 20, 20, 64), (640, 640)) and image_like(("N", 20, 20, 64), (640, 640), "NHWC")
    assert image_like(("N", 8, "h", "w"), (None, None))


def test_ablation_cam_of_the_logits_under_a_softmax(models):
    """The head from the layer to the logits is GAP → Gemm: ablating channel k lowers logit c by
    W[c, k]·mean(A_k), so w_k = W[c, k]·mean(A_k) / y_c (a reference that runs no sub-model)."""
    from onnx import numpy_helper

    model = models["n1c_softmax"]
    exp = cam(model, IMAGES, method="ablationcam", logits=True, targets=2)
    gemm = next(node for node in model.proto.graph.node if node.op_type == "Gemm")
    weights = {t.name: numpy_helper.to_array(t) for t in model.proto.graph.initializer}
    w, b = weights[gemm.input[1]].astype(np.float64), weights[gemm.input[2]].astype(np.float64)
    acts = model.run(model.preprocess(IMAGES), activations=[exp.layers[0]]).activations[exp.layers[0]]
    mean = acts.astype(np.float64).mean(axis=(2, 3))
    y = mean @ w[2] + b[2]
    want = np.maximum(np.einsum("nk,nkhw->nhw", w[2] * mean / y[:, None], acts), 0)
    np.testing.assert_allclose(exp.raw[exp.layers[0]], want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
