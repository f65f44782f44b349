"""Targets -> (image, label, seed) rows."""
import numpy as np
import pytest

from engine.errors import UsageError
from engine.explain.targets import OutputMask, resolve


def test_top_one_per_image_and_lists():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    rows = resolve("top", 2, (3,), outputs=logits)
    assert rows.image.tolist() == [0, 1] and rows.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(rows.seeds, [[0, 1, 0], [1, 0, 0]])
    assert resolve(2, 2, (3,)).labels.tolist() == [2, 2]
    rows = resolve([2, [0, 1]], 2, (3,))
    assert rows.image.tolist() == [0, 1, 1] and rows.labels.tolist() == [2, 0, 1]
    np.testing.assert_array_equal(rows.seeds, [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    assert resolve([-1, 0], 2, (3,)).labels.tolist() == [2, 0]


def test_output_mask_rows_and_broadcast():
    mask = np.zeros((2, 4, 4), bool)
    mask[1, :2, :2] = True
    rows = resolve(OutputMask(mask), 3, (2, 4, 4))
    assert rows.seeds.shape == (3, 2, 4, 4) and rows.seeds[:, 1, :2, :2].all() and rows.seeds.sum() == 12
    assert (rows.labels == -1).all()


@pytest.mark.parametrize("targets,shape", [("top", (3,)), ([1], (3,)), (5, (3,)), ("best", (3,)),
                                           (1, (2, 4)), (OutputMask(np.ones((5,))), (3,))])
def test_bad_targets_raise_usage_errors(targets, shape):
    with pytest.raises(UsageError):
        resolve(targets, 2, shape)
