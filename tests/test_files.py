import json

import numpy as np
import pytest

from engine.data.files import atomic_path, write_image, write_json
from engine.errors import UsageError


def test_atomic_write_leaves_no_file_when_interrupted(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_write_json_and_image_roundtrip(tmp_path):
    write_json(tmp_path / "a" / "s.json", {"x": 1})
    assert json.loads((tmp_path / "a" / "s.json").read_text()) == {"x": 1}
    import cv2

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red
    write_image(tmp_path / "r.png", rgb)
    back = cv2.imread(str(tmp_path / "r.png"))
    assert back.shape == (4, 5, 3) and back[0, 0].tolist() == [0, 0, 200]


def test_write_image_rejects_float(tmp_path):
    with pytest.raises(UsageError):
        write_image(tmp_path / "f.png", np.zeros((2, 2, 3), np.float32))
    assert not list(tmp_path.iterdir())


def test_outputs_get_usual_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        write_json(tmp_path / "s.json", {})
    finally:
        os.umask(mask)
    assert (tmp_path / "s.json").stat().st_mode & 0o777 == 0o644
