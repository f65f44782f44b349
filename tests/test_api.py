import os

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from engine import Model
from engine.data.labels import probabilities
from engine.errors import ImageError, InputShapeError, LayerError, ModelLoadError, UsageError
from engine.runtime.session import providers
from tests.tiny_models import classifier, save

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
RNG = np.random.default_rng(7)
IMAGES = [RNG.integers(0, 256, shape, dtype=np.uint8) for shape in [(8, 8, 3), (20, 14, 3), (5, 6, 3)]]


def bare_session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def reference_batch(images, size, layout="NCHW", mean=MEAN, std=STD, bgr=False):
    """Preprocess by hand: resize per interfaces.md, then (v/255 − mean)/std, in float64."""
    out = []
    for image in images:
        h, w = image.shape[:2]
        interpolation = cv2.INTER_AREA if size[0] <= h and size[1] <= w else cv2.INTER_LINEAR
        resized = image if (h, w) == size else cv2.resize(image, (size[1], size[0]), interpolation=interpolation)
        x = resized.astype(np.float64)
        if bgr:
            x, mean_, std_ = x[..., ::-1], mean[::-1], std[::-1]
        else:
            mean_, std_ = mean, std
        out.append((x / 255 - mean_) / std_)
    batch = np.stack(out).astype(np.float32)
    return batch.transpose(0, 3, 1, 2) if layout == "NCHW" else batch


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def model(tmp_path, name="m.onnx", **kwargs):
    return Model(save(classifier(**kwargs), tmp_path / name), threads=1)


# --- loading --------------------------------------------------------------------------------

def test_nchw_static_with_metadata(tmp_path):
    m = model(tmp_path, shape=("N", 3, 8, 8), metadata={"labels": list("abcd"), "preprocess": "unit", "channel_order": "BGR"})
    assert (m.input.name, m.input.layout, m.input.channels, m.input.dtype) == ("image", "NCHW", 3, np.float32)
    assert m.input.dynamic == ("N",) and m.input_size == (8, 8) and m.input.batch is None
    assert m.labels == ["a", "b", "c", "d"]
    assert (m.preprocessing.preset, m.preprocessing.channel_order) == ("unit", "BGR")


def test_nhwc_dynamic_without_metadata(tmp_path):
    m = model(tmp_path, layout="NHWC", shape=("batch", "h", "w", 3))
    assert (m.input.layout, m.input.channels, m.input.dynamic) == ("NHWC", 3, ("N", "H", "W"))
    assert m.input_size is None and m.labels is None
    assert (m.preprocessing.preset, m.preprocessing.channel_order) == ("imagenet", "RGB")
    assert m.preprocess(IMAGES[1]).shape == (1, 20, 14, 3)
    mixed = m.preprocess(IMAGES[1:3])  # images of several sizes: all at the first one's size
    assert mixed.shape == (2, 20, 14, 3)
    np.testing.assert_array_equal(mixed[1], m.preprocess(cv2.resize(IMAGES[2], (14, 20)))[0])
    assert m.preprocess(IMAGES[:2], size=(6, 7)).shape == (2, 6, 7, 3)


def test_static_batch_dynamic_channels_and_gray_inputs(tmp_path):
    static = model(tmp_path, "s.onnx", shape=(1, 3, 8, 8))
    assert static.input.batch is None and static.input.dynamic == ("N",)  # its batch of 1 was freed
    unknown_channels = model(tmp_path, "c.onnx", shape=("N", "C", "H", "W"))
    assert (unknown_channels.input.layout, unknown_channels.input.channels) == ("NCHW", 3)
    gray = model(tmp_path, "g.onnx", layout="NHWC", shape=("N", 8, 8, 1))
    assert (gray.input.layout, gray.input.channels) == ("NHWC", 1)
    assert gray.preprocess(IMAGES[0]).shape == (1, 8, 8, 1)
    half = model(tmp_path, "h.onnx", shape=("N", 3, 8, 8), dtype=TensorProto.FLOAT16)
    assert half.preprocess(IMAGES[0]).dtype == np.float32  # widened (engine.graph.half): rounded inside


def test_layer_catalog_shapes_match_what_onnx_runtime_computes(tmp_path):
    path = save(classifier(layout="NHWC", shape=("N", "H", "W", 3), stages=((6, 2),)), tmp_path / "m.onnx")
    m = Model(path, input_size=(16, 12), threads=1)
    names = [layer.name for layer in m.layers]
    assert names == ["to_nchw", "conv1", "relu1", "pool1", "conv2", "relu2", "gap"]
    assert [layer.op for layer in m.layers] == ["Transpose", "Conv", "Relu", "MaxPool", "Conv", "Relu", "GlobalAveragePool"]
    assert all(layer.shape[0] == "N" for layer in m.layers)
    # Reference: expose every layer as an output and let ORT run a batch of 2 at 16×12.
    proto = onnx.load(str(path))
    proto.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(names, {"image": np.zeros((2, 16, 12, 3), np.float32)})
    for layer, actual in zip(m.layers, outputs):
        assert layer.shape[1:] == actual.shape[1:], layer.name
    assert m.layer("pool1").shape == ("N", 4, 8, 6)
    with pytest.raises(LayerError, match="pool1"):
        m.layer("pool")


def test_summary_describes_the_graph(tmp_path):
    m = model(tmp_path, shape=("N", 3, 8, 8), softmax=True)
    info = m.summary()
    assert info["opset"] == {"ai.onnx": 17} and info["producer"] == "tiny_models"
    assert info["ops"] == {"Conv": 2, "Relu": 2, "MaxPool": 1, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1, "Softmax": 1}
    assert info["outputs"] == [{"name": "probs", "dtype": "float32", "shape": ("N", 4)}]
    assert info["image_input"]["layout"] == "NCHW"


# --- predictions against a bare ONNX Runtime session ----------------------------------------

@pytest.mark.parametrize("layout, shape, bgr", [
    ("NCHW", ("N", 3, 8, 8), False),
    ("NHWC", ("N", 8, 8, 3), False),
    ("NCHW", ("N", 3, 8, 8), True),
])
def test_predict_equals_bare_session(tmp_path, layout, shape, bgr):
    metadata = {"channel_order": "BGR"} if bgr else None
    path = save(classifier(layout=layout, shape=shape, classes=5, metadata=metadata), tmp_path / "m.onnx")
    m = Model(path, threads=1)
    expected = softmax(bare_session(path).run(None, {"image": reference_batch(IMAGES, (8, 8), layout, bgr=bgr)})[0])
    np.testing.assert_allclose(m.preprocess(IMAGES), reference_batch(IMAGES, (8, 8), layout, bgr=bgr), atol=1e-5)
    predictions = m.predict(IMAGES, top=3)
    assert len(predictions) == 3
    for p, row in zip(predictions, expected):
        assert [t.index for t in p.top] == list(np.argsort(-row)[:3])
        np.testing.assert_allclose([t.score for t in p.top], np.sort(row)[::-1][:3], rtol=1e-5)
        assert p.image is None and all(t.label is None for t in p.top)


def test_probability_outputs_are_not_softmaxed_again(tmp_path):
    path = save(classifier(shape=("N", 3, 8, 8), softmax=True), tmp_path / "m.onnx")
    expected = bare_session(path).run(None, {"image": reference_batch(IMAGES, (8, 8))})[0]
    scores = [[t.score for t in p.top] for p in Model(path, threads=1).predict(IMAGES, top=4)]
    np.testing.assert_allclose(scores, -np.sort(-expected, axis=1), rtol=1e-5)


def test_probabilities_helper():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(probabilities(logits), softmax(logits))
    probs = np.array([[0.2, 0.8], [0.5, 0.5]])
    np.testing.assert_array_equal(probabilities(probs), probs)
    np.testing.assert_allclose(probabilities(np.log(probs)), probs)


def test_paths_and_arrays_mixed_with_static_batch_and_input_size(tmp_path):
    image_path = tmp_path / "pic.png"
    image_path.write_bytes(cv2.imencode(".png", IMAGES[1][..., ::-1])[1].tobytes())
    batch2 = save(classifier(shape=(2, 3, 8, 8)), tmp_path / "b2.onnx")
    m = Model(batch2, threads=1, labels=["w", "x", "y", "z"])
    predictions = m.predict([IMAGES[0], str(image_path), IMAGES[2]], top=2)  # 2 + 1 padded
    session = bare_session(batch2)
    for p, image in zip(predictions, [IMAGES[0], IMAGES[1], IMAGES[2]]):
        x = np.concatenate([reference_batch([image], (8, 8))] * 2)
        row = softmax(session.run(None, {"image": x})[0])[0]
        assert [t.index for t in p.top] == list(np.argsort(-row)[:2])
        assert [t.label for t in p.top] == [["w", "x", "y", "z"][i] for i in np.argsort(-row)[:2]]
    assert [p.image for p in predictions] == [None, str(image_path), None]

    dynamic = save(classifier(shape=("N", 3, "H", "W")), tmp_path / "d.onnx")
    m = Model(dynamic, input_size=(12, 10), threads=1)
    row = softmax(bare_session(dynamic).run(None, {"image": reference_batch(IMAGES, (12, 10))})[0])
    np.testing.assert_allclose([p.top[0].score for p in m.predict(IMAGES, top=1)], row.max(axis=1), rtol=1e-5)


def test_labels_from_file_override_metadata(tmp_path):
    path = save(classifier(shape=("N", 3, 8, 8), metadata={"labels": list("abcd")}), tmp_path / "m.onnx")
    labels = tmp_path / "names.txt"
    labels.write_text("north\neast\nsouth\nwest\n")
    m = Model(path, labels=labels, threads=1)
    assert m.labels == ["north", "east", "south", "west"]
    top = m.predict(IMAGES[0], top=4)[0].top
    assert [t.label for t in top] == [m.labels[t.index] for t in top]
    labels.write_text("one\ntwo\n")
    with pytest.raises(UsageError, match="2 labels"):
        Model(path, labels=labels)


# --- external data --------------------------------------------------------------------------

def _external(tmp_path, location):
    """A model in tmp/model/ whose weights live at ``location`` (relative to tmp/model/)."""
    folder = tmp_path / "model"
    folder.mkdir()
    path = save(classifier(shape=("N", 3, 8, 8)), folder / "m.onnx", external="w.bin")
    target = (folder / location) if not os.path.isabs(location) else location
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(folder / "w.bin", target)
    proto = onnx.load(str(path), load_external_data=False)
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = str(location)
    onnx.save(proto, str(path))
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    path = _external(tmp_path, "weights/w.bin")
    inline = save(classifier(shape=("N", 3, 8, 8)), tmp_path / "inline.onnx")
    a = Model(path, threads=1).predict(IMAGES, top=4)
    b = Model(inline, threads=1).predict(IMAGES, top=4)
    assert [[t.score for t in p.top] for p in a] == [[t.score for t in p.top] for p in b]


@pytest.mark.parametrize("location", ["../w.bin", "weights/../../w.bin", "ABS"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    location = str(tmp_path / "elsewhere" / "w.bin") if location == "ABS" else location
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        Model(_external(tmp_path, location))


def test_symlinked_external_data_pointing_outside_is_refused(tmp_path):
    path = _external(tmp_path, "w.bin")
    os.replace(path.parent / "w.bin", tmp_path / "real.bin")
    os.symlink(tmp_path / "real.bin", path.parent / "w.bin")
    with pytest.raises(ModelLoadError, match="outside"):
        Model(path)


def test_missing_external_data_is_a_load_error(tmp_path):
    path = _external(tmp_path, "w.bin")
    os.unlink(path.parent / "w.bin")
    with pytest.raises(ModelLoadError, match="missing"):
        Model(path)


# --- errors ---------------------------------------------------------------------------------

def test_missing_corrupt_and_non_onnx_files(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Model(tmp_path / "nope.onnx")
    with pytest.raises(ModelLoadError, match="folder"):
        Model(tmp_path)
    for name, data in [("empty.onnx", b""), ("text.onnx", b"hello, not a model\n"),
                       ("noise.onnx", RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes())]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelLoadError, match=name):
            Model(tmp_path / name)
    good = classifier().SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelLoadError, match="cut.onnx"):
        Model(tmp_path / "cut.onnx")


def _graph_with_inputs(tmp_path, inputs):
    nodes = [helper.make_node("Identity", [vi.name], [vi.name + "_out"]) for vi in inputs]
    outputs = [helper.make_tensor_value_info(vi.name + "_out", vi.type.tensor_type.elem_type, None) for vi in inputs]
    proto = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(proto, str(tmp_path / "g.onnx"))
    return tmp_path / "g.onnx"


def test_image_input_is_the_first_4d_float_input(tmp_path):
    tokens = helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", 16])
    with pytest.raises(ModelLoadError, match="no 4-D float input"):
        Model(_graph_with_inputs(tmp_path, [tokens]))
    two = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 8, 8]) for n in ("left", "right")]
    m = Model(_graph_with_inputs(tmp_path, two))  # the second 4-D tensor is an extra input
    assert m.input.name == "left" and [t.name for t in m.inputs] == ["left", "right"]
    with pytest.raises(UsageError, match="also needs the inputs right"):
        m.run(np.zeros((1, 3, 8, 8), np.float32))
    odd = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 8, 7])
    with pytest.raises(ModelLoadError, match="channel"):
        Model(_graph_with_inputs(tmp_path, [odd]))


def test_wrong_sizes_and_arrays(tmp_path):
    path = save(classifier(shape=("N", 3, 8, 8)), tmp_path / "m.onnx")
    with pytest.raises(InputShapeError, match="8×8"):
        Model(path, input_size=(16, 16))
    assert Model(path, input_size=(8, 8)).input_size == (8, 8)
    m = Model(path, threads=1)
    with pytest.raises(InputShapeError, match="3×8×8"):
        m.run(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InputShapeError):
        m.run(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(InputShapeError):
        m.predict(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ImageError, match="gone.png"):
        m.predict([IMAGES[0], tmp_path / "gone.png"])
    with pytest.raises(UsageError):
        m.predict(IMAGES[0], top=0)
    np.testing.assert_array_equal(m.run(m.preprocess(IMAGES)).outputs[0].shape, (3, 4))


def test_providers_and_threads():
    assert providers("auto")[-1] == "CPUExecutionProvider"
    assert providers("CPUExecutionProvider") == ["CPUExecutionProvider"]
    with pytest.raises(UsageError, match="CPUExecutionProvider"):
        providers("NoSuchExecutionProvider")
    with pytest.raises(UsageError, match="NoSuchExecutionProvider"):
        providers(["NoSuchExecutionProvider", "CPUExecutionProvider"])


def test_threads_reach_the_session(tmp_path):
    path = save(classifier(), tmp_path / "m.onnx")
    m = Model(path, threads=1, provider="CPUExecutionProvider")
    assert m.session.get_providers() == ["CPUExecutionProvider"]
    assert m.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(UsageError, match="threads"):
        Model(path, threads=0).session


def test_layer_details_without_a_default_layer(tmp_path):
    # A lone Conv: its output is the only 4-D layer and nothing consumes it, so there is no
    # default layer to mark, but the details must still list it.
    w = onnx.numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["out"], pads=[1] * 4)], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 8, 8])], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    m = Model(save(proto, tmp_path / "conv.onnx"), threads=1)
    with pytest.raises(LayerError):
        m.default_layer
    (details,) = m.layer_details()
    assert details["name"] == "out" and details["default"] is False
