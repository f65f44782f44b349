"""Report plots drawn with matplotlib (Agg backend): crisp text, axes and colour bars, returned as
uint8 RGB arrays for :func:`engine.viz.report.image`.

Text from model files (class names) is drawn literally: mathtext is off, so a ``$`` in a name
is a dollar sign.

>>> rgb = bars(["hflip", "rotate"], {"top-1 agreement": [1.0, 0.8]}, "agreement")
"""
import numpy as np

from engine.viz.scatter import PALETTE as RGB_PALETTE

DPI = 100
PALETTE = ["#%02x%02x%02x" % tuple(int(v) for v in rgb) for rgb in RGB_PALETTE]  # the CLI scatter's colours
STYLE = {"text.parse_math": False, "font.size": 10, "axes.titlesize": 11, "axes.spines.top": False,
         "axes.spines.right": False, "figure.dpi": DPI, "savefig.dpi": DPI}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _draw(width, height, paint):
    """Run ``paint(plt, fig)`` on a ``width``×``height`` px figure; returns its RGB pixels."""
    plt = _pyplot()
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(width / DPI, height / DPI))
        try:
            paint(plt, fig)
            fig.canvas.draw()
            return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
        finally:
            plt.close(fig)


def colour_of(names):
    """{name: colour} over the sorted distinct ``names``.

    >>> colour_of(["b", "a"])["a"]
    '#1f77b4'
    """
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(names)))}


def scatter(points, labels, method, thumbnails=None, examples=12, size=(900, 560)):
    """A 2-D projection (N×2 ``points``) coloured by ``labels`` with a legend; the axes name the
    ``method`` ("t-SNE", "PCA"). ``thumbnails``: N images; up to ``examples`` of them (one per
    label in turn) are shown in a panel beside the plot, numbered like the ringed points.

    >>> scatter(np.random.rand(50, 2), ["a", "b"] * 25, "t-SNE").shape
    (560, 900, 3)
    """
    points = np.asarray(points, np.float64)
    labels = [str(label) for label in labels]
    colours = colour_of(labels)
    chosen = _examples(labels, examples) if thumbnails is not None else []

    def paint(plt, fig):
        main = fig.add_axes((0.07, 0.1, 0.5 if chosen else 0.72, 0.82))
        for name, colour in colours.items():
            rows = [i for i, label in enumerate(labels) if label == name]
            main.scatter(points[rows, 0], points[rows, 1], s=22, color=colour, label=name, edgecolors="white",
                         linewidths=0.4)
        for k, i in enumerate(chosen):
            main.scatter(*points[i], s=120, facecolors="none", edgecolors="black", linewidths=1.2)
            main.annotate(str(k + 1), points[i], xytext=(5, 5), textcoords="offset points", fontsize=9,
                          fontweight="bold")
        main.set_xlabel(f"{method} 1")
        main.set_ylabel(f"{method} 2")
        main.set_title(f"{method} projection, {len(points)} images")
        main.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        columns = 3
        for k, i in enumerate(chosen):
            row, col = divmod(k, columns)
            ax = fig.add_axes((0.72 + col * 0.093, 0.78 - row * 0.22, 0.085, 0.14))
            ax.imshow(thumbnails[i])
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(colours[labels[i]])
                spine.set_linewidth(2)
            ax.set_title(f"{k + 1}: {labels[i]}", fontsize=8)

    return _draw(*size, paint)


def _examples(labels, k):
    """Up to ``k`` indices, taking the first unused image of each label in turn."""
    queues = {name: [i for i, label in enumerate(labels) if label == name] for name in sorted(set(labels))}
    chosen = []
    while len(chosen) < k and any(queues.values()):
        for queue in queues.values():
            if queue and len(chosen) < k:
                chosen.append(queue.pop(0))
    return chosen


def curves(panels, size=(820, 300)):
    """Line plots side by side: ``panels`` is a list of (title, y label, {name: y values}), each
    series sampled at equal fractions of the x axis from 0 to 1 ("fraction of pixels").

    >>> curves([("deletion", "probability", {"gradcam": [0.9, 0.3, 0.1]})]).shape
    (300, 820, 3)
    """
    def paint(plt, fig):
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, ylabel, series) in zip(axes, panels):
            for k, (name, values) in enumerate(series.items()):
                values = np.asarray(values, np.float64)
                ax.plot(np.linspace(0, 1, len(values)), values, marker="o", markersize=3, label=name,
                        color=PALETTE[k % len(PALETTE)])
            ax.set_title(title)
            ax.set_xlabel("fraction of pixels")
            ax.set_ylabel(ylabel)
            ax.set_xlim(0, 1)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, frameon=False)
        fig.tight_layout()

    return _draw(*size, paint)


def bars(names, series, ylabel, size=(820, 320), limits=(0, 1)):
    """Grouped vertical bars: one group per name, one bar per series ({series name: values}).

    >>> bars(["hflip"], {"top-1 agreement": [0.9], "IoU": [0.7]}, "agreement").shape
    (320, 820, 3)
    """
    def paint(plt, fig):
        ax = fig.add_subplot()
        x = np.arange(len(names))
        width = 0.8 / max(1, len(series))
        for k, (name, values) in enumerate(series.items()):
            ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=name, color=PALETTE[k % len(PALETTE)])
        ax.set_xticks(x, [str(n) for n in names], rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4
                      else "center")
        ax.set_ylabel(ylabel)
        ax.set_ylim(*limits)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series))
        fig.tight_layout()

    return _draw(*size, paint)


def heatmap(matrix, rows, columns, title, xlabel, ylabel, colour_label, size=None):
    """A matrix as a coloured grid with each value written in its cell and a colour bar, e.g. a
    confusion matrix (rows: true class, columns: predicted class).

    >>> heatmap([[5, 1], [0, 6]], ["a", "b"], ["a", "b"], "confusion", "predicted", "true", "images").ndim
    3
    """
    matrix = np.asarray(matrix)
    n = max(len(rows), len(columns))
    size = size or (min(1000, 260 + 46 * n), min(900, 200 + 40 * n))

    def paint(plt, fig):
        ax = fig.add_subplot()
        shown = ax.imshow(matrix, cmap="Blues", vmin=0)
        top = matrix.max() if matrix.size else 0
        for (r, c), value in np.ndenumerate(matrix):
            ax.text(c, r, f"{value:g}", ha="center", va="center", fontsize=8,
                    color="white" if top and value > 0.6 * top else "black")
        ax.set_xticks(range(len(columns)), [str(c) for c in columns], rotation=45, ha="right")
        ax.set_yticks(range(len(rows)), [str(r) for r in rows])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        fig.colorbar(shown, ax=ax, label=colour_label, fraction=0.046, pad=0.04)
        fig.tight_layout()

    return _draw(*size, paint)


def colour_bar(label, low="0", high="1", cmap="jet", size=(420, 76)):
    """A horizontal colour bar for the heatmaps of a section (jet: OpenCV's colormap of
    :func:`engine.viz.overlay.colorize`).

    >>> colour_bar("Grad-CAM (scaled per image)").shape
    (76, 420, 3)
    """
    def paint(plt, fig):
        import matplotlib as mpl

        ax = fig.add_axes((0.04, 0.62, 0.92, 0.26))
        bar = fig.colorbar(mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0, 1), cmap=cmap), cax=ax,
                           orientation="horizontal")
        bar.set_ticks([0, 1], labels=[low, high])
        bar.set_label(label, fontsize=9)

    return _draw(*size, paint)
