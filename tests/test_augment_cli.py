"""`onnxlens augment`: files, the before/after grid, mixing report, usage errors, --bench."""
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from engine.augment.bench import sample_images
from engine.augment.pipeline import parse_ops
from engine.viz.grid import grid


@pytest.fixture()
def photos(tmp_path):
    paths = []
    for i, img in enumerate(sample_images(2, size=48, seed=8)):
        path = tmp_path / f"photo{i}.png"
        cv2.imwrite(str(path), img[..., ::-1])
        paths.append(str(path))
    return paths


def test_augment_writes_images_and_grid(photos, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["augment", *photos, "--ops", "rotate:30,hflip,cutmix:1.0",
                                    "--seed", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    a0 = cv2.imread(str(out / "photo0_aug.png"))
    assert a0.shape == (48, 48, 3)
    assert cv2.imread(str(out / "grid.png")).shape[1] > 4 * 48
    assert "photo1.png" in res.output and "×" in res.output  # the CutMix composition
    again = tmp_path / "again"
    CliRunner().invoke(main, ["augment", *photos, "--ops", "rotate:30,hflip,cutmix:1.0",
                              "--seed", "3", "--out", str(again)])
    np.testing.assert_array_equal(cv2.imread(str(again / "photo0_aug.png")), a0)
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


@pytest.mark.parametrize("spec", ["rotat:30", "rotate:abc", "rotate:foo=1", "rotate:1:2:3",
                                  "randaugment:2:11", "rotate:30..10", ""])
def test_bad_ops_are_usage_errors(photos, tmp_path, spec):
    res = CliRunner().invoke(main, ["augment", photos[0], "--ops", spec, "--out",
                                    str(tmp_path / "o")])
    assert res.exit_code == 2 and res.output.startswith("error: ")
    assert not (tmp_path / "o").exists()


def test_unreadable_image_and_missing_images(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert CliRunner().invoke(main, ["augment", str(bad)]).exit_code == 2
    assert CliRunner().invoke(main, ["augment"]).exit_code == 2


def test_bench_prints_the_table():
    res = CliRunner().invoke(main, ["augment", "--bench", "--bench-images", "2"])
    assert res.exit_code == 0, res.output
    assert "| Rotate |" in res.output and "Pipeline, 2 threads" in res.output


def test_parse_ops_ranges_and_keywords():
    rot, aff = parse_ops("rotate:-30..30, affine:angle=15:scale=0.9..1.1:border=reflect")
    assert rot.angle == (-30.0, 30.0)
    assert aff.angle == (15.0, 15.0) and aff.scale == (0.9, 1.1) and aff.border == "reflect"


def test_grid_tiles_and_captions():
    a = np.zeros((10, 12, 3), np.uint8)
    b = np.full((6, 8), 0.5, np.float32)
    out = grid([a, b, a], ncols=2, pad=2)
    assert out.shape == (2 * (10 + 2) + 2, 2 * (12 + 2) + 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[2:8, 16:24], 128)  # the float image, scaled to 0–255
    assert (out[14:24, 16:28] == 255).all()  # the empty cell keeps the background
    captioned = grid([a, a], ncols=2, labels=["one", "two"])
    assert captioned.shape[0] > out.shape[0] // 2 + 10
    assert (captioned[:18] < 255).any()  # caption text drawn above the cells
