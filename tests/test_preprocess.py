import cv2
import numpy as np
import pytest

from engine.data.images import as_rgb, image_list, read_image, resize
from engine.data.labels import parse_labels, read_labels
from engine.data.preprocess import Preprocess, resolve
from engine.errors import ImageError, InputShapeError, UsageError

# Two pixels, (R, G, B) = (255, 0, 128) and (0, 255, 64); expected values worked out by hand
# from the preset formulas in interfaces.md.
PIXELS = np.array([[[[255, 0, 128], [0, 255, 64]]]], np.uint8)  # 1×1×2×3
EXPECTED_RGB = {
    # (255/255 − 0.485)/0.229, (0 − 0.456)/0.224, (128/255 − 0.406)/0.225 ; second pixel likewise
    "imagenet": [[2.2489083, -2.0357143, 0.4264924], [-2.1179039, 2.4285714, -0.6889760]],
    "unit": [[1.0, 0.0, 0.5019608], [0.0, 1.0, 0.2509804]],  # v/255
    "symmetric": [[1.0, -1.0, 0.0039216], [-1.0, 1.0, -0.4980392]],  # v/127.5 − 1
    "raw": [[255.0, 0.0, 128.0], [0.0, 255.0, 64.0]],
}


@pytest.mark.parametrize("preset", sorted(EXPECTED_RGB))
def test_presets_match_hand_computed_values(preset):
    out = Preprocess(preset)(PIXELS)
    assert out.dtype == np.float32 and out.shape == (1, 1, 2, 3)
    np.testing.assert_allclose(out[0, 0], EXPECTED_RGB[preset], atol=2e-6 * (255 if preset == "raw" else 1))


@pytest.mark.parametrize("preset", sorted(EXPECTED_RGB))
def test_bgr_reverses_channels_with_their_own_statistics(preset):
    out = Preprocess(preset, channel_order="BGR")(PIXELS)
    np.testing.assert_allclose(out[0, 0], np.array(EXPECTED_RGB[preset])[:, ::-1], atol=1e-5)


def test_one_channel_models_get_luma_with_mean_statistics():
    out = Preprocess("imagenet")(PIXELS, channels=1)
    assert out.shape == (1, 1, 2, 1)
    # luma(255, 0, 128) = 0.299·255 + 0.114·128 = 90.837 → (90.837/255 − 0.449)/0.226
    np.testing.assert_allclose(out[0, 0, 0, 0], -0.4105154, atol=1e-5)
    # luma(0, 255, 64) = 0.587·255 + 0.114·64 = 156.981, raw
    np.testing.assert_allclose(Preprocess("raw")(PIXELS, channels=1)[0, 0, 1, 0], 156.981, atol=1e-3)


def test_resolve_layers_defaults_metadata_and_option():
    assert resolve() == Preprocess("imagenet", "RGB")
    metadata = {"preprocess": "unit", "channel_order": "bgr"}
    assert resolve(None, metadata) == Preprocess("unit", "BGR")
    assert resolve("symmetric", metadata) == Preprocess("symmetric", "BGR")
    assert resolve({"channel_order": "RGB"}, metadata) == Preprocess("unit", "RGB")
    assert resolve({"preset": "raw", "channel_order": "BGR"}) == Preprocess("raw", "BGR")


def test_bad_metadata_is_named_and_can_be_overridden():
    with pytest.raises(UsageError, match="model metadata"):
        resolve(None, {"preprocess": "caffe"})
    assert resolve("unit", {"preprocess": "caffe"}) == Preprocess("unit")


@pytest.mark.parametrize("option", ["caffe", {"preset": "unit", "order": "BGR"}, {"channel_order": "GBR"}, 3])
def test_bad_preprocess_options_raise_usage_error(option):
    with pytest.raises(UsageError):
        resolve(option)


def test_resize_uses_area_to_shrink_and_linear_to_enlarge():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize(image, (12, 17)), cv2.resize(image, (17, 12), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(resize(image, (45, 60)), cv2.resize(image, (60, 45), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(resize(image, (12, 17)), cv2.resize(image, (17, 12), interpolation=cv2.INTER_LINEAR))
    assert resize(image, (30, 40)) is image


def test_read_image_unicode_path_gray_and_rgb_order(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red
    path = tmp_path / "ünïcødé 画像.png"
    path.write_bytes(cv2.imencode(".png", rgb[..., ::-1])[1].tobytes())
    np.testing.assert_array_equal(read_image(path), rgb)
    gray = tmp_path / "gray.png"
    gray.write_bytes(cv2.imencode(".png", np.full((3, 3), 77, np.uint8))[1].tobytes())
    np.testing.assert_array_equal(read_image(gray), np.full((3, 3, 3), 77, np.uint8))


def test_unreadable_images_raise_image_error_naming_the_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="notes.png"):
        read_image(text)
    with pytest.raises(ImageError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="sub"):
        (tmp_path / "sub").mkdir()
        read_image(tmp_path / "sub")


@pytest.mark.parametrize("array", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)])
def test_arrays_must_be_uint8_rgb(array):
    with pytest.raises(InputShapeError):
        as_rgb(array)


def test_labels_files_lines_or_json(tmp_path):
    lines = tmp_path / "labels.txt"
    lines.write_text("circle\nsquare \n\ntriangle\n")
    assert read_labels(lines) == ["circle", "square", "triangle"]
    listed = tmp_path / "labels.json"
    listed.write_text('["a b", "c"]')
    assert read_labels(listed) == ["a b", "c"]
    with pytest.raises(UsageError):
        parse_labels("[1, 2]", "x")
    with pytest.raises(UsageError):
        parse_labels("[broken", "x")
    with pytest.raises(UsageError, match="nope.txt"):
        read_labels(tmp_path / "nope.txt")


@pytest.mark.parametrize("channels, order", [(3, "RGB"), (3, "BGR"), (1, "RGB")])
def test_nchw_output_is_the_nhwc_output_transposed(channels, order):
    images = np.random.default_rng(1).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    preprocess = Preprocess("imagenet", order)
    nhwc = preprocess(images, channels=channels)
    nchw = preprocess(images, channels=channels, layout="NCHW")
    assert nchw.shape == (2, channels, 5, 4) and nchw.flags.c_contiguous
    np.testing.assert_allclose(nchw, nhwc.transpose(0, 3, 1, 2), rtol=1e-6)


def test_image_list_accepts_a_path_an_image_a_batch_or_a_list():
    image = np.zeros((4, 5, 3), np.uint8)
    assert image_list("a.png") == ["a.png"]
    assert len(image_list(image)) == 1 and image_list(image)[0] is image
    assert [im.shape for im in image_list(np.zeros((2, 4, 5, 3), np.uint8))] == [(4, 5, 3), (4, 5, 3)]
    assert image_list(("a.png", image))[0] == "a.png" and image_list([]) == []
