"""Hostile inputs through the CLI: each one ends in exactly one line on stderr starting with
"error:", exit status 2 and no traceback (issue 12)."""
import html
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import cli
from engine.errors import OutputError, UnsupportedOpError
from engine.graph.autodiff import differentiate
from tests.onnx_build import Builder
from tests.test_audit import sections_of
from tests.tiny_models import classifier, save

LABELS = ["circle", "square", "star", "ring"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    image = tmp / "img.png"
    image.write_bytes(cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8))[1].tobytes())
    model = save(classifier(shape=("N", 3, 8, 8), metadata={"labels": LABELS}), tmp / "model.onnx")
    (tmp / "labels.csv").write_text("image,label\nimg.png,999\n")
    return {"model": str(model), "image": str(image), "tmp": tmp}


def _args(files, args):
    return [str(a).format(**files) for a in args]


# (case id, CLI arguments with {model}/{image}/{tmp} placeholders, words the error line must contain)
ARGUMENTS = [
    ("noise-nan", ["saliency", "{model}", "{image}", "--out", "{tmp}/s", "--noise", "nan"], "--noise"),
    ("noise-inf", ["saliency", "{model}", "{image}", "--out", "{tmp}/s", "--noise", "inf"], "--noise"),
    ("baseline-nan", ["saliency", "{model}", "{image}", "--out", "{tmp}/s", "--method", "integrated",
                      "--baseline", "nan"], "baseline"),
    ("baseline-inf", ["saliency", "{model}", "{image}", "--out", "{tmp}/s", "--method", "integrated",
                      "--baseline", "-inf"], "baseline"),
    ("lr-nan", ["classviz", "{model}", "--out", "{tmp}/c.png", "--lr", "nan"], "--lr"),
    ("lr-inf", ["classviz", "{model}", "--out", "{tmp}/c.png", "--lr", "inf"], "--lr"),
    ("classviz-seed-negative", ["classviz", "{model}", "--out", "{tmp}/c.png", "--seed", "-1"], "--seed"),
    ("target-overflow", ["cam", "{model}", "{image}", "--out", "{tmp}/c", "--target", "999999999999999999999"],
     "out of range"),
    ("target-beyond-classes", ["cam", "{model}", "{image}", "--out", "{tmp}/c", "--target", "7"], "4 classes"),
    ("gallery-negative", ["audit", "{model}", "--synth", "4", "--out", "{tmp}/a", "--gallery", "-1"], "--gallery"),
    ("embed-negative", ["audit", "{model}", "--synth", "4", "--out", "{tmp}/a", "--embed", "-5"], "--embed"),
    ("audit-synth-zero", ["audit", "{model}", "--synth", "0", "--out", "{tmp}/a"], "--synth"),
    ("worst-negative", ["compare", "{model}", "{model}", "--synth", "4", "--worst", "-3"], "--worst"),
    ("project-seed-negative", ["project", "{tmp}", "--out", "{tmp}/p.png", "--seed", "-1"], "--seed"),
    ("embed-synth-negative", ["embed", "{model}", "--synth", "-4", "--out", "{tmp}/e"], "--synth"),
    ("embed-seed-negative", ["embed", "{model}", "--synth", "4", "--seed", "-4", "--out", "{tmp}/e"], "--seed"),
    ("dissect-iou-nan", ["dissect", "{model}", "--concepts", "{tmp}", "--out", "{tmp}/d", "--iou", "nan"], "--iou"),
    ("demo-n-zero", ["demo", "--n", "0", "--out", "{tmp}/demo"], "--n"),
    ("mixup-nan", ["augment", "{image}", "--ops", "mixup:nan", "--out", "{tmp}/aug"], "alpha"),
    ("rotate-inf", ["augment", "{image}", "--ops", "rotate:inf", "--out", "{tmp}/aug"], "angle"),
    ("rotate-fill-word", ["augment", "{image}", "--ops", "rotate:fill=abc", "--out", "{tmp}/aug"], "0 to 255"),
    ("dropout-fill-negative", ["augment", "{image}", "--ops", "coarsedropout:fill=-1", "--out", "{tmp}/aug"], "fill"),
    ("blur-huge", ["augment", "{image}", "--ops", "blur:1e6", "--out", "{tmp}/aug"], "sigma"),
    ("samples-huge", ["saliency", "{model}", "{image}", "--out", "{tmp}/s", "--samples", str(10**12)], "--samples"),
    ("evaluate-synth-huge", ["evaluate", "{model}", "--synth", str(10**12)], "--synth N"),
    ("robustness-synth-huge", ["robustness", "{model}", "--synth", str(10**12)], "--synth N"),
    ("synth-size-huge", ["synth", "--size", "100000x100000", "--n", "1", "--out", "{tmp}/syn"], "--size HxW"),
    ("labels-beyond-classes-audit", ["audit", "{model}", "--images", "{tmp}", "--labels", "{tmp}/labels.csv",
                                     "--out", "{tmp}/a"], "beyond the model's 4 classes"),
    ("labels-beyond-classes-compare", ["compare", "{model}", "{model}", "--images", "{tmp}", "--labels",
                                       "{tmp}/labels.csv"], "beyond the model's 4 classes"),
    ("audit-embed-zero", ["audit", "{model}", "--synth", "4", "--out", "{tmp}/a", "--embed", "0"], "--embed"),
    ("embed-synth-huge", ["embed", "{model}", "--synth", str(10**12), "--out", "{tmp}/e"], "--synth N"),
    ("compare-synth-huge", ["compare", "{model}", "{model}", "--synth", str(10**12)], "--synth N"),
    ("audit-synth-huge", ["audit", "{model}", "--synth", str(10**12), "--out", "{tmp}/a"], "--synth N"),
    ("timeout-negative", ["predict", "{model}", "{image}", "--timeout", "-1"], "--timeout"),
    ("timeout-nan", ["predict", "{model}", "{image}", "--timeout", "nan"], "--timeout"),
    ("samples-zero", ["saliency", "{model}", "{image}", "--out", "{tmp}/s", "--samples", "0"], "--samples"),
]


def assert_one_line_error(result, *words):
    """Exit 2, one line on stderr that starts with "error:" and names ``words``, no traceback."""
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("args, words", [case[1:] for case in ARGUMENTS], ids=[case[0] for case in ARGUMENTS])
def test_bad_argument_is_one_line_and_exit_2(files, args, words):
    assert_one_line_error(CliRunner().invoke(cli.main, _args(files, args)), words)


def big_png(path, width, height):
    """A valid grey PNG of width×height black pixels in a few MB: one deflate block of 100 zero
    rows, repeated (each ends in a full flush, so the copies are alike), then the Adler-32 of all rows."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = bytes((width + 1) * 100)
    packer = zlib.compressobj(1, zlib.DEFLATED, -15)
    block = packer.compress(rows) + packer.flush(zlib.Z_FULL_FLUSH)
    checksum = 1
    for _ in range(height // 100):
        checksum = zlib.adler32(rows, checksum)
    body = b"\x78\x01" + block * (height // 100) + packer.flush() + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_a_30000_square_png_is_refused_before_decoding(files):
    big = big_png(files["tmp"] / "big.png", 30000, 30000)
    assert big.stat().st_size < 5e6
    assert zlib.decompressobj().decompress(big.read_bytes()[41:], 1 << 20) == bytes(1 << 20)  # zero rows
    script = ("import re, sys; from click.testing import CliRunner; import cli; "
              "r = CliRunner().invoke(cli.main, sys.argv[1:]); sys.stderr.write(r.stderr); "
              "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]); sys.exit(r.exit_code)")
    run = subprocess.run([sys.executable, "-c", script, "predict", files["model"], str(big)],
                         capture_output=True, text=True, timeout=120, cwd=Path(cli.__file__).parent)
    assert run.returncode == 2 and run.stderr.startswith("error:") and len(run.stderr.splitlines()) == 1, run.stderr
    assert "30000×30000 (900 MP)" in run.stderr and "--max-pixels" in run.stderr
    assert int(run.stdout.split()[-1]) < 1_000_000, "peak RSS (KiB): the image was decoded"  # 5.3 GB when it is


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp"])
def test_max_pixels_reads_each_format_header(files, suffix):
    path = files["tmp"] / f"wide{suffix}"
    path.write_bytes(cv2.imencode(suffix, np.zeros((30, 40, 3), np.uint8))[1].tobytes())
    refused = CliRunner().invoke(cli.main, ["--max-pixels", "1199", "predict", files["model"], str(path)])
    assert_one_line_error(refused, "40×30", "--max-pixels")
    assert CliRunner().invoke(cli.main, ["--max-pixels", "1200", "predict", files["model"], str(path)]).exit_code == 0


# --- bad models ---------------------------------------------------------------------------------


def _reshape_to_256():
    """A dynamic-size model whose Reshape fits 8×8 inputs only."""
    b = Builder()
    features = b.op("Relu", [b.op("Conv", ["image", b.weight(4, 3, 3, 3)], pads=[1] * 4)])
    flat = b.op("Reshape", [features, b.const(np.array([0, 256], np.int64))], name="flatten_fixed")
    b.op("Gemm", [flat, b.weight(4, 256)], transB=1, name="logits")
    return b.model([("image", ["N", 3, "H", "W"])], [("logits", None)], 17)


def _with_tail(nodes, output, inits=(), elem_type=onnx.TensorProto.FLOAT):
    """The tiny classifier with ``nodes`` after its logits and ``output`` as its only output."""
    model = classifier(shape=("N", 3, 8, 8))
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(output, elem_type, ["N", 4]))
    return model


def _constant_of_shape_bomb():
    """Adds the sum of a 10**6 × 10**6 × 10**3 ConstantOfShape (its shape computed at run time) to the logits."""
    make = onnx.helper.make_node
    shape = onnx.numpy_helper.from_array(np.array([10**6, 10**6, 10**3], np.int64), "bomb_shape")
    return _with_tail([make("Shape", ["logits"], ["logit_shape"]),
                       make("ReduceSum", ["logit_shape"], ["n"], keepdims=1),
                       make("Mul", ["bomb_shape", "n"], ["huge"]),
                       make("ConstantOfShape", ["huge"], ["big"], name="the_bomb"),
                       make("ReduceSum", ["big"], ["big_sum"], keepdims=0),
                       make("Add", ["logits", "big_sum"], ["out"])], "out", [shape])


def _int64_output():
    return _with_tail([onnx.helper.make_node("Cast", ["logits"], ["int_logits"], to=onnx.TensorProto.INT64)],
                      "int_logits", elem_type=onnx.TensorProto.INT64)


def _labels_shorter_than_dynamic_classes():
    model = classifier(shape=("N", 3, 8, 8), metadata={"labels": ["a", "b"]})
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    return model


def _custom_op_on_the_path():
    """relu2 made by an op nobody knows: no runtime runs it, no shape inference sees through it."""
    model = classifier(shape=("N", 3, 8, 8))
    node = next(n for n in model.graph.node if n.output[0] == "relu2")
    node.op_type, node.domain = "Frobnicate", "com.example"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    return model


def _cycle():
    model = classifier(shape=("N", 3, 8, 8))
    next(n for n in model.graph.node if n.output[0] == "conv2").input[0] = "relu2"
    return model


def _loop(trips, computed=False):
    """The logits plus 1 added ``trips`` times by a Loop; ``computed``: the trip count is
    ``trips`` times the largest logits dimension, computed at run time (no constant to cap)."""
    make, info = onnx.helper.make_node, onnx.helper.make_tensor_value_info
    body = onnx.helper.make_graph(
        [make("Identity", ["cond_in"], ["cond_out"]), make("Add", ["acc_in", "one"], ["acc_out"])], "body",
        [info("i", onnx.TensorProto.INT64, []), info("cond_in", onnx.TensorProto.BOOL, []),
         info("acc_in", onnx.TensorProto.FLOAT, None)],
        [info("cond_out", onnx.TensorProto.BOOL, []), info("acc_out", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    constants = [onnx.numpy_helper.from_array(np.array(trips, np.int64), "trips"),
                 onnx.numpy_helper.from_array(np.array(True), "cond")]
    count = [make("Shape", ["logits"], ["logit_shape"]), make("ReduceMax", ["logit_shape"], ["widest"], keepdims=0),
             make("Mul", ["widest", "trips"], ["computed_trips"])] if computed else []
    return _with_tail([*count, make("Loop", ["computed_trips" if computed else "trips", "cond", "logits"], ["looped"],
                                    body=body, name="the_loop")], "looped", constants)


def computed_loop():
    """A Loop of 4 × 10**14 iterations, its count computed at run time."""
    return _loop(10**14, computed=True)


def _loop_of_10_to_the_15():
    return _loop(10**15)


# (case id, model builder, CLI arguments after the command's model path, words the error line must contain)
MODELS = [
    ("reshape-fails-predict", _reshape_to_256, ["predict", "{image}", "--size", "12x12"],
     ["Reshape", "cannot be reshaped", "12×12"]),
    ("reshape-fails-cam", _reshape_to_256, ["cam", "{image}", "--size", "12x12", "--out", "{tmp}/c"], ["Reshape"]),
    ("constant-of-shape-bomb", _constant_of_shape_bomb, ["predict", "{image}"], ["'the_bomb' (ConstantOfShape)"]),
    ("int64-output-classviz", _int64_output, ["classviz", "--target", "0", "--steps", "2", "--out", "{tmp}/v.png"],
     ["not a float tensor"]),
    ("short-labels-predict", _labels_shorter_than_dynamic_classes, ["predict", "{image}"], ["2 labels", "4 classes"]),
    ("short-labels-cam", _labels_shorter_than_dynamic_classes, ["cam", "{image}", "--out", "{tmp}/c"], ["2 labels"]),
    ("custom-op-cam", _custom_op_on_the_path, ["cam", "{image}", "--layer", "pool1", "--out", "{tmp}/c"], []),
    ("input-100000-square", lambda: classifier(shape=("N", 3, 100000, 100000)), ["predict", "{image}"],
     ["100000×100000", "--size HxW"]),
    ("loop-10-to-the-15", _loop_of_10_to_the_15, ["predict", "{image}"], ["the_loop", "1000000000000000 iterations"]),
    ("loop-cam", lambda: _loop(3), ["cam", "{image}", "--out", "{tmp}/c"], ["'looped'", "Loop"]),
    ("loop-computed-predict", computed_loop, ["predict", "{image}", "--timeout", "0.5"], ["0.5 s", "--timeout"]),
    ("loop-computed-activations", computed_loop, ["activations", "{image}", "--layer", "relu1", "--timeout", "0.5",
                                                  "--out", "{tmp}/a.png"], ["--timeout"]),
    ("loop-computed-saliency", computed_loop, ["saliency", "{image}", "--timeout", "0.5", "--out", "{tmp}/s"],
     ["--timeout"]),
    ("cycle-predict", _cycle, ["predict", "{image}"], ["acyclic"]),
    ("cycle-cam", _cycle, ["cam", "{image}", "--out", "{tmp}/c"], []),
]


@pytest.mark.parametrize("build, args, words", [case[1:] for case in MODELS], ids=[case[0] for case in MODELS])
def test_bad_model_is_one_line_and_exit_2(files, build, args, words):
    path = save(build(), files["tmp"] / f"{build.__name__.strip('<>')}.onnx")
    command, *rest = args
    assert_one_line_error(CliRunner().invoke(cli.main, [command, str(path), *_args(files, rest)]), *words)


def test_a_rule_that_needs_an_unknown_shape_names_it():
    with pytest.raises(UnsupportedOpError, match="GlobalAveragePool node 'gap' needs the shape of 'relu2'"):
        differentiate(_custom_op_on_the_path(), "logits", ["pool1"])


@pytest.mark.parametrize("number, accepted", [("-3", "0..65535"), (str(10**10), "0..65535")])
def test_broden_label_numbers_out_of_range(files, number, accepted):
    concepts = files["tmp"] / f"broden{number}"
    assert CliRunner().invoke(cli.main, ["synth", "--n", "2", "--out", str(concepts)]).exit_code == 0
    with open(concepts / "label.csv", "a") as f:
        f.write(f"{number},odd,shape(0),0,0.0,odd\n")
    result = CliRunner().invoke(cli.main, ["dissect", files["model"], "--concepts", str(concepts), "--out",
                                           str(files["tmp"] / "d")])
    assert_one_line_error(result, "label.csv", number, accepted)


def test_a_small_loop_still_runs(files):
    path = save(_loop(3), files["tmp"] / "loop3.onnx")
    assert CliRunner().invoke(cli.main, ["predict", str(path), files["image"]]).exit_code == 0


def test_external_data_with_a_negative_length(files):
    folder = files["tmp"] / "external"
    folder.mkdir()
    path = save(classifier(shape=("N", 3, 8, 8)), folder / "m.onnx", external="m.data")
    model = onnx.load(str(path), load_external_data=False)
    entry = next(e for e in model.graph.initializer[0].external_data if e.key == "length")
    entry.value = "-5"
    onnx.save(model, str(path))
    assert_one_line_error(CliRunner().invoke(cli.main, ["predict", str(path), files["image"]]), "negative")


# --- failing audit sections, non-finite features, mixed embedding folders, classviz's set ----------


def _nan_weights():
    """The tiny classifier (32×32 inputs) whose second convolution's weights are all NaN."""
    model = classifier(shape=("N", 3, 32, 32))
    w2 = next(init for init in model.graph.initializer if init.name == "w2")
    w2.CopyFrom(onnx.numpy_helper.from_array(np.full(onnx.numpy_helper.to_array(w2).shape, np.nan, np.float32), "w2"))
    return model


@pytest.fixture(scope="module")
def nan_model(files):
    return str(save(_nan_weights(), files["tmp"] / "nan_weights.onnx"))


def test_audit_reports_failed_sections_in_place_and_goes_on(files, nan_model):
    out = files["tmp"] / "nan_audit"
    result = CliRunner().invoke(cli.main, ["audit", nan_model, "--synth", "8", "--embed", "8", "--dissect", "8",
                                           "--gallery", "2", "--classviz-steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = [line for line in result.stderr.splitlines() if line.startswith("audit:")]
    assert len(summary) == 1 and summary[0].startswith("audit: 9 of 11 sections failed (Predictions, "), summary
    assert "Traceback" not in result.output
    sections = {title: body for title, (_, body) in sections_of((out / "index.html").read_text()).items()}
    assert "a t-SNE projection needs finite numbers" in sections["Embeddings and neighbours"]
    assert "outputs hold NaN or infinite values for 8 of 8 images" in sections["Saliency"]
    assert "hold NaN or infinite values" in sections["Top patches"]
    assert "Not available" not in sections["Model"] and "<table" in sections["Model"]


def test_audit_of_a_runaway_loop_stops_each_run_and_says_so_in_each_section(files):
    path = save(computed_loop(), files["tmp"] / "runaway.onnx")
    out = files["tmp"] / "runaway_audit"
    result = CliRunner().invoke(cli.main, ["audit", str(path), "--synth", "4", "--embed", "4", "--dissect", "4",
                                           "--gallery", "1", "--classviz-steps", "1", "--timeout", "0.3",
                                           "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = [line for line in result.stderr.splitlines() if line.startswith("audit:")]
    assert len(summary) == 1 and summary[0].startswith("audit: 9 of 11 sections failed (Predictions, "), summary
    sections = {title: body for title, (_, body) in sections_of((out / "index.html").read_text()).items()}
    assert "took more than 0.3 s and was stopped" in sections["Predictions"]
    assert "--timeout SECONDS" in sections["Augmentation robustness"]


def test_audit_exits_2_when_no_section_runs(files, monkeypatch):
    from engine.audit import report
    from engine.errors import ModelRunError

    def broken(ctx):
        raise ModelRunError("ONNX Runtime cannot run 'm.onnx': node 'x' (Loop) failed")

    monkeypatch.setattr(report, "SECTIONS", (("Broken", broken), ("Also broken", broken)))
    out = files["tmp"] / "all_failed"
    result = CliRunner().invoke(cli.main, ["audit", files["model"], "--synth", "4", "--out", str(out)])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "no section of the audit ran" in errors[0], result.output
    assert html.escape("node 'x' (Loop) failed") in (out / "index.html").read_text()


def test_nan_features_are_refused_by_project_and_neighbors(files, nan_model):
    out = files["tmp"] / "nan_embedding"
    made = CliRunner().invoke(cli.main, ["embed", nan_model, "--synth", "12", "--k", "2", "--out", str(out)])
    assert made.exit_code == 0 and "no kNN purity" in made.stderr, made.output
    for args in (["project", str(out), "--out", str(files["tmp"] / "p.png"), "--method", "pca"],
                 ["neighbors", str(out), "--query", "synth:0:1", "--k", "2", "--out", str(files["tmp"] / "n.png")]):
        assert_one_line_error(CliRunner().invoke(cli.main, args), "12 of 12 feature rows hold NaN")
    assert not (files["tmp"] / "p.png").exists() and not (files["tmp"] / "n.png").exists()


def _mix(folder, other):
    """Corrupt the embedding ``folder`` with a file of the embedding ``other`` (a different run)."""
    return {"features-of-another-run": lambda: shutil.copy(other / "features.npy", folder),
            "index-of-another-run": lambda: shutil.copy(other / "index.csv", folder),
            "binary-index": lambda: (folder / "index.csv").write_bytes(bytes(range(256))),
            "json-without-model": lambda: (folder / "embedding.json").write_text('{"layer": "gap", "n": 6, "dim": 4}'),
            "features-not-2d": lambda: np.save(folder / "features.npy", np.zeros(6, np.float32))}


MIXES = ["features-of-another-run", "index-of-another-run", "binary-index", "json-without-model", "features-not-2d"]
MIX_WORDS = {"features-of-another-run": "mixes runs", "index-of-another-run": "mixes runs",
             "binary-index": "not an embedding folder", "json-without-model": "'model'", "features-not-2d": "N×D"}


@pytest.mark.parametrize("command", ["project", "neighbors"])
@pytest.mark.parametrize("mix", MIXES)
def test_a_mixed_embedding_folder_is_one_line(files, tmp_path, mix, command):
    folder, other = tmp_path / "e", tmp_path / "other"
    for out, n, seed in ((folder, 6, 0), (other, 5 if mix == "features-of-another-run" else 6, 1)):
        assert CliRunner().invoke(cli.main, ["embed", files["model"], "--synth", str(n), "--seed", str(seed),
                                             "--size", "8x8", "--out", str(out)]).exit_code == 0
    _mix(folder, other)[mix]()
    args = {"project": ["project", str(folder), "--method", "pca", "--out", str(tmp_path / "p.png")],
            "neighbors": ["neighbors", str(folder), "--query", "synth:0:1", "--k", "2", "--out",
                          str(tmp_path / "n.png")]}[command]
    assert_one_line_error(CliRunner().invoke(cli.main, args), MIX_WORDS[mix], "embed")
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "n.png").exists()


def test_classviz_writes_image_and_steps_as_one_set(files, tmp_path, monkeypatch):
    out = tmp_path / "viz.png"
    args = ["classviz", files["model"], "--target", "1", "--steps", "2", "--out", str(out)]
    assert CliRunner().invoke(cli.main, args).exit_code == 0
    before = {name: (tmp_path / name).read_bytes() for name in ("viz.png", "viz_steps.png")}
    real = cli.write_image

    def fails_on_the_strip(path, image):
        if Path(path).name == "viz_steps.png":
            raise OutputError("cannot write viz_steps.png: No space left on device: free space or choose another --out")
        return real(path, image)

    monkeypatch.setattr(cli, "write_image", fails_on_the_strip)
    assert_one_line_error(CliRunner().invoke(cli.main, [*args[:3], "2", *args[4:]]), "No space left")
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["viz.png", "viz_steps.png"]


def test_classviz_on_nan_weights_is_one_line(files, nan_model):
    out = files["tmp"] / "nan_viz.png"
    result = CliRunner().invoke(cli.main, ["classviz", nan_model, "--target", "1", "--steps", "2", "--out", str(out)])
    assert_one_line_error(result, "NaN or infinite", "check its weights")
    assert not out.exists()


# --- opset 7 and 8 CNNs ----------------------------------------------------------------------------


def _old_opset(opset, how):
    """The tiny classifier (32×32, the weights of seed 0) at ``opset``: built there with onnx.helper,
    converted down by onnx's version converter, or as an old exporter wrote it (IR 3, every weight
    also listed as a graph input)."""
    if how == "converted":
        return onnx.version_converter.convert_version(classifier(shape=("N", 3, 32, 32), opset=9), opset)
    model = classifier(shape=("N", 3, 32, 32), opset=opset)
    if how == "ir3":
        model.ir_version = 3
        model.graph.input.extend(onnx.helper.make_tensor_value_info(w.name, w.data_type, list(w.dims))
                                 for w in model.graph.initializer)
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("how", ["helper", "converted", "ir3"])
@pytest.mark.parametrize("opset", [7, 8])
def test_opset_7_and_8_cnns_explain_like_their_opset_17_twin(files, opset, how):
    """cam and activations work on old opsets (normalize upgrades them) and give the maps of the
    same network at opset 17."""
    from engine.api import Model
    from engine.explain import cam

    old = save(_old_opset(opset, how), files["tmp"] / f"opset{opset}_{how}.onnx")
    assert onnx.load(str(old)).opset_import[0].version == opset
    new = save(classifier(shape=("N", 3, 32, 32)), files["tmp"] / "opset17.onnx")
    for args in (["cam", "{model}", "{image}", "--out", "{tmp}/o{opset}{how}"],
                 ["activations", "{model}", "{image}", "--layer", "relu1", "--out", "{tmp}/a{opset}{how}.png"]):
        result = CliRunner().invoke(cli.main, _args({**files, "model": old, "opset": opset, "how": how}, args))
        assert result.exit_code == 0, result.output
    pictures = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), np.uint8)
    maps = [cam(Model(path), pictures, layer="relu1", progress=False).maps for path in (old, new)]
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-5)
    assert np.ptp(maps[1]) > 0
