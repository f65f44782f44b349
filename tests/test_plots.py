"""The report's matplotlib plots: the size asked for, RGB uint8, names drawn literally (a `$` in a
class name is not mathtext), the colour bar runs blue to red like the overlays' colormap."""
import numpy as np
import pytest

from engine.viz import plots
from engine.viz.overlay import colorize

NAMES = ["$x^{2$", "<b>", "plain"]


@pytest.mark.parametrize("draw, size", [
    (lambda: plots.scatter(np.random.default_rng(0).random((30, 2)), NAMES * 10, "t-SNE",
                           thumbnails=[np.zeros((8, 8, 3), np.uint8)] * 30), (560, 900)),
    (lambda: plots.heatmap(np.arange(9).reshape(3, 3), NAMES, NAMES, "t", "predicted", "true", "images",
                           size=(400, 300)), (300, 400)),
    (lambda: plots.bars(NAMES, {"a$": [1, 0.5, np.nan]}, "agreement"), (320, 820)),
    (lambda: plots.curves([("deletion", "p", {"$g$": [1, 0.5, 0.1]})]), (300, 820)),
])
def test_plots_have_their_size_and_draw_dollar_names_literally(draw, size):
    rgb = draw()
    assert rgb.dtype == np.uint8 and rgb.shape == (*size, 3)
    assert rgb.std() > 10  # something is drawn


def test_colour_bar_matches_the_overlay_colormap():
    bar = plots.colour_bar("activation").astype(int)
    row = bar[int(0.25 * bar.shape[0])]  # through the bar (figure coordinates 0.62..0.88 from the bottom)
    inside = row[(np.abs(row - 255).sum(axis=1) > 30) & (row.sum(axis=1) > 60)]
    ends = colorize(np.array([[0.0, 1.0]]))[0].astype(int)
    assert np.abs(inside[2] - ends[0]).max() < 40 and np.abs(inside[-3] - ends[1]).max() < 40


def test_examples_take_each_label_in_turn():
    assert plots._examples(["a", "b", "a", "a", "c"], 4) == [0, 1, 4, 2]
