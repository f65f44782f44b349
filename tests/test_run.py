"""Model.run: activations, gradients, seeds, errors, the on-disk cache of rewritten models."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine import Model
from engine.errors import InputShapeError, LayerError, UsageError
from tests import zoo

FIXTURE = zoo.load("resnet18_ts13")


@pytest.fixture(scope="module")
def model():
    return Model(FIXTURE.path, threads=1)


def bare(model_bytes, names, x):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(names, {"input": x})


def test_activations_equal_the_tensors_of_the_original_model(model):
    inner = [layer.name for layer in model.layers if layer.name not in FIXTURE.taps][5]
    result = model.run(FIXTURE.input, activations=[inner, FIXTURE.taps[0]])
    assert list(result.activations) == [inner, FIXTURE.taps[0]] and result.gradients == {}
    np.testing.assert_allclose(result.activations[FIXTURE.taps[0]], FIXTURE.activations[FIXTURE.taps[0]],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.outputs[0], FIXTURE.outputs["logits"], rtol=1e-4, atol=1e-5)
    # the untapped inner tensor, read from the original model made to output it by hand
    proto = onnx.load(str(FIXTURE.path))
    proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(inner))
    expected = bare(proto.SerializeToString(), [inner], FIXTURE.input)[0]
    np.testing.assert_allclose(result.activations[inner], expected, rtol=1e-5, atol=1e-6)


def test_unknown_layer_names_close_matches(model):
    with pytest.raises(LayerError, match="tap_layer4"):
        model.run(FIXTURE.input, activations=["tap_layer5"])
    with pytest.raises(LayerError):
        model.run(FIXTURE.input, gradients=["nope"], seed=FIXTURE.seed)


def test_seed_errors(model):
    with pytest.raises(UsageError, match="seed"):
        model.run(FIXTURE.input, gradients=["input"])
    with pytest.raises(InputShapeError, match="seed"):
        model.run(FIXTURE.input, gradients=["input"], seed=FIXTURE.seed[:2])
    with pytest.raises(UsageError, match="logits"):
        model.run(FIXTURE.input, gradients=["input"], seed={"nope": FIXTURE.seed})
    with pytest.raises(UsageError, match="mode"):
        model.run(FIXTURE.input, gradients=["input"], seed=FIXTURE.seed, mode="smooth")


def test_single_seed_row_is_repeated(model):
    one = model.run(FIXTURE.input, gradients=["input"], seed=FIXTURE.seed[0])
    rows = model.run(FIXTURE.input, gradients=["input"], seed=np.repeat(FIXTURE.seed[:1], 3, axis=0))
    np.testing.assert_array_equal(one.gradients["input"], rows.gradients["input"])
