"""Network Dissection (Bau et al., CVPR 2017) over a Broden-layout concept dataset.

Pass 1 streams the layer's activations into a per-unit :class:`Quantile` (threshold ``T_k``, the
top ``1 - quantile`` of all its activations) and a :class:`TopK` of each unit's best images.
Pass 2 upsamples each unit's map bilinearly to the label-map size, thresholds it into a mask and
accumulates :class:`IoUCounts` against every concept (a concept counts only images that label its
category). A unit detects its best concept when that IoU exceeds ``iou``.

A mask holds about ``1 − quantile`` of the pixels, so a concept that covers a much larger share
cannot reach a high IoU with any unit: :func:`reachable_iou` gives each concept's bound, and the
summary says per category whether any of its concepts could have passed ``iou`` at all.

Both passes run shard by shard (:class:`DissectJob`, in process or on Ray through
``engine.scale``) and merge on the driver, so any shard size gives the same result. Within a
shard, pass 1 reads the next batch's images on a thread while the model runs and its
accumulators run on another; pass 2 spreads its batches (masks, counts) over ``WORKERS``
threads, each into its own :class:`IoUCounts`, merged in order, so the result is the
single-threaded one. Pass 2 reads the label maps, and their areas, from a decoded
:class:`~engine.data.label_store.LabelStore` in the cache folder, opened (or, on the first run
over a dataset, built from the PNGs on ``WORKERS`` threads) beside pass 1. Masks are worked out
at the map's resolution (:func:`mask_pixels`): only where a unit's cells exceed its threshold.
"""
import csv
import io
import itertools
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.analyze.accumulators import IoUCounts, Quantile, TopK
from engine.analyze.sources import Source, from_concepts
from engine.analyze.stream import stream
from engine.data.broden import ConceptDataset, read_concepts
from engine.data.files import output_set, write_image, write_json, write_text
from engine.data.label_store import LabelStore, dataset_key
from engine.errors import LayerError, UsageError
from engine.runtime.cache import cache_dir
from engine.scale import runner, shards
from engine.viz.grid import grid
from engine.viz.title import titled

WORKERS = 3  # pass-2 threads: label-map decoding, masks and IoU counts of a batch each
_BACKGROUND = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxlens-labels")  # label stores, beside pass 1
CV_MAX_CHANNELS = 128  # cv2.resize takes at most this many channels at once (OpenCV 5: under 256)
MASK_CHUNK = 1 << 16  # interpolated mask values held at once (cache-resident)


@dataclass(frozen=True)
class Dissection:
    """Per unit: best concept, its category, IoU and the unit's threshold; plus a summary."""

    layer: str
    units: list  # dicts: unit, concept, category, iou, threshold, detector
    summary: dict
    iou: np.ndarray  # units × label numbers
    top: dict  # TopK result: value/image/y/x, units × k
    reachable: np.ndarray = None  # per label number: the highest IoU any unit can reach (reachable_iou)


def primary_categories(dataset):
    """Category index of each label number (the category naming it most often, as NetDissect's
    ``primary_categories_per_index``); -1 for number 0 and numbers without a category.

    >>> from engine.data import synth
    >>> from engine.data.broden import write_concepts
    >>> write_concepts("shapes-broden", synth.batches(16, seed=5))
    >>> int(primary_categories(read_concepts("shapes-broden"))[0])  # number 0: unlabelled
    -1
    """
    out = np.full(len(dataset.labels), -1, np.int64)
    for number, label in enumerate(dataset.labels):
        if number and label and label["category"]:
            name = max(label["category"], key=lambda c: label["category"][c])
            if name in dataset.categories:
                out[number] = dataset.categories.index(name)
    return out


def reachable_iou(dataset, label_area, quantile):
    """Per label number, the highest IoU any unit can reach with it: a mask holds at most
    m = 1 − ``quantile`` of the pixels of the images labelling the concept's category (fewer
    where the unit's values tie at its threshold), so a concept of area L > m reaches at most
    m / L; a smaller one could be matched exactly (1). 0 for numbers without a category or pixels.

    A concept covering 30 % of the pixels is out of reach at the default quantile 0.995
    (bound 0.005 / 0.3 ≈ 0.017 < 0.04) however well a unit detects it.

    >>> from engine.data import synth
    >>> from engine.data.broden import write_concepts
    >>> write_concepts("shapes-broden", synth.batches(16, seed=5))
    >>> dataset = read_concepts("shapes-broden")
    >>> reachable_iou(dataset, np.full(len(dataset.labels), 1000), 0.995).shape  # one bound per label number
    (28,)
    """
    category_of = primary_categories(dataset)
    pixels = np.array([sum(row["sh"] * row["sw"] for row in dataset.rows if row.get(category))
                       for category in dataset.categories], np.float64)
    mask = (1 - quantile) * pixels[category_of]
    label = np.asarray(label_area, np.float64)
    return np.divide(np.minimum(mask, label), label, out=np.zeros(len(label)), where=(category_of >= 0) & (label > 0))


def upsample(maps, size):
    """Bilinear resize of C×h×w maps to C×H×W (OpenCV, half-pixel centres).

    >>> upsample(np.ones((3, 8, 8), np.float32), (96, 96)).shape
    (3, 96, 96)
    """
    maps = np.asarray(maps, np.float32)
    out = np.empty((len(maps), *size), np.float32)
    for s in range(0, len(maps), CV_MAX_CHANNELS):
        chunk = np.ascontiguousarray(maps[s:s + CV_MAX_CHANNELS].transpose(1, 2, 0))
        resized = cv2.resize(chunk, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        out[s:s + CV_MAX_CHANNELS] = resized.reshape(*size, -1).transpose(2, 0, 1)
    return out


def mask_pixels(maps, thresholds, size):
    """Pixels of every unit's mask: each N×U×h×w map upsampled bilinearly to ``size`` (half-pixel
    centres, edges clamped) and compared with its unit's threshold; returns (image, unit, pixel)
    index arrays (pixel = flat index into ``size``).

    Worked at the map's resolution: the output pixels between the same 2×2 map cells form a block
    whose values lie within those four cells' range, so only the blocks where one of the four
    exceeds the threshold are interpolated (in float64, the formula above): a few per cent of
    the pixels at a high quantile. Tie rule: a pixel decides by its float64 value (OpenCV's
    float32 resize, used before, could put a pixel within float32 rounding of the threshold on
    the other side; on 512 Shapes images 21 of 2,688 IoUs moved by < 1e-5, no unit's concept did).

    >>> maps = np.zeros((1, 2, 4, 4), np.float32); maps[0, 1, 2, 2] = 1
    >>> image, unit, pixel = mask_pixels(maps, np.array([0.5, 0.5], np.float32), (8, 8))
    >>> sorted(set(unit.tolist())), sorted(pixel.tolist())
    ([1], [36, 37, 44, 45])
    """
    maps = np.asarray(maps, np.float32)
    thresholds = np.asarray(thresholds)
    cell_y, rows, fy = _blocks(size[0], maps.shape[2])
    cell_x, cols, fx = _blocks(size[1], maps.shape[3])
    n, units, h, w = maps.shape
    hot = maps > thresholds[:, None, None]
    last = hot[:, :, :, -1].copy()  # the blocks (y0, x0) that have a cell above it as a corner:
    hot.reshape(-1)[:-1] |= hot.reshape(-1)[1:]  # x0 or x0 + 1 (flat: fast; the last column kept)
    hot[:, :, :, -1] = last
    hot.reshape(n * units, h * w)[:, :-w] |= hot.reshape(n * units, h * w)[:, w:]  # y0 or y0 + 1
    image, unit, y0, x0 = np.unravel_index(np.flatnonzero(hot), maps.shape)
    by, bx = _runs_of(cell_y, y0), _runs_of(cell_x, x0)  # every run of those cells: hot × runs × runs
    keep = (by[:, :, None] >= 0) & (bx[:, None, :] >= 0)
    hot, by, bx = np.nonzero(keep)[0], np.broadcast_to(by[:, :, None], keep.shape)[keep], \
        np.broadcast_to(bx[:, None, :], keep.shape)[keep]
    image, unit, y0, x0 = image[hot], unit[hot], y0[hot], x0[hot]
    cell = ((image * units + unit) * h + y0) * w + x0
    down, right = np.where(y0 + 1 < h, w, 0), np.where(x0 + 1 < w, 1, 0)  # the next cell, edges clamped
    flat = maps.reshape(-1)
    a, ax, ay, axy = (flat[cell + d].astype(np.float64) for d in (0, right, down, down + right))
    base = rows[by, 0] * size[1] + cols[bx, 0]  # each block's first pixel: runs are consecutive coordinates
    offset = (np.arange(rows.shape[1])[:, None] * size[1] + np.arange(cols.shape[1])).reshape(-1)
    fy, fx = np.ascontiguousarray(fy.T), np.ascontiguousarray(fx.T)  # blocks last: long inner loops
    step = max(1, MASK_CHUNK // len(offset))  # a cache-sized number of values at once, in reused buffers
    values, other = np.empty((2, len(offset) * min(step, len(image))))
    inside = np.empty(values.shape, bool)
    found = [(np.zeros(0, np.int64),) * 2]
    for s in range(0, len(image), step):
        b = slice(s, s + step)
        m = len(image[b])
        wx, wy = fx[:, bx[b]], fy[:, by[b]][:, None]  # cols × blocks, rows × 1 × blocks
        top, bottom = a[b] * (1 - wx) + ax[b] * wx, ay[b] * (1 - wx) + axy[b] * wx
        shape = (rows.shape[1], cols.shape[1], m)
        v, o = values[:len(offset) * m].reshape(shape), other[:len(offset) * m].reshape(shape)
        np.multiply(top, 1 - wy, out=v)
        np.multiply(bottom, wy, out=o)
        v += o
        hits = np.flatnonzero(np.greater(v, thresholds[unit[b]], out=inside[:v.size].reshape(shape)))
        j, k = np.divmod(hits, m)  # padding is NaN: never inside
        k += s
        found.append((k, base[k] + offset[j]))
    which, pixel = (np.concatenate(v) for v in zip(*found))
    return image[which], unit[which], pixel


def _runs_of(run_cell, cells):
    """For each of ``cells``, the indices of the runs whose cell it is (padded with -1)."""
    first = np.searchsorted(run_cell, cells)
    count = np.searchsorted(run_cell, cells, side="right") - first
    index = first[:, None] + np.arange(max(1, np.bincount(run_cell).max()))
    return np.where(np.arange(index.shape[1]) < count[:, None], index, -1)


def _blocks(out, cells):
    """Runs of output coordinates along one axis that share their lower source cell, at most
    ceil(out / cells) long: each run's cell, its coordinates and their weight of the next cell
    (padded with coordinate 0 and weight NaN)."""
    position = np.clip((np.arange(out) + 0.5) * cells / out - 0.5, 0, cells - 1)
    low = np.floor(position).astype(np.int64)
    longest = -(-out // cells)
    offset = np.arange(out) - np.searchsorted(low, low)  # position within the cell's coordinates
    starts = np.flatnonzero(offset % longest == 0)
    runs = np.diff(starts, append=out)
    coords = starts[:, None] + np.arange(runs.max())
    real = np.arange(coords.shape[1]) < runs[:, None]
    coords = np.where(real, coords, 0)
    return low[starts], coords, np.where(real, (position - low)[coords], np.nan)


def dissect(model, concepts, layer="auto", quantile=0.995, iou=0.04, top=8, batch_size=32, cache=True,
            progress=None, scale=None, label_store=True):
    """Dissect ``layer`` of ``model`` over the Broden-layout folder ``concepts`` (two passes).

    ``cache``: keep pass 1's activations in temporary files (read back, not memory-mapped, so
    memory stays flat) and let pass 2 read them instead of running the model again; False runs
    the model twice and needs no disk. ``label_store``: read the label maps from their decoded
    store in the cache folder (``$ONNXLENS_CACHE``), writing it on the first run over the
    dataset; False decodes the PNGs every run. ``scale``: run in shards on Ray
    (:class:`engine.scale.Scale`; each worker caches the shards it ran); the result is the same.

    >>> from engine.data import synth
    >>> from engine.data.broden import write_concepts
    >>> write_concepts("shapes-broden", synth.batches(16, seed=5))
    >>> result = dissect(Model("model.onnx"), "shapes-broden", progress=False)
    >>> len(result.units), result.summary["images"]
    (96, 16)
    """
    if not 0 < quantile < 1:
        raise UsageError(f"--quantile is the fraction of activations below the threshold, in (0, 1); got {quantile}")
    dataset = read_concepts(concepts) if isinstance(concepts, (str, Path)) else concepts
    if len(dataset) == 0:
        raise UsageError(f"{dataset.root} lists no images in index.csv")
    layer = model.default_layer if layer == "auto" else model.layer(layer).name
    job = DissectJob(dataset, layer, quantile, int(top), int(batch_size), cache, label_store)
    with runner(model, job, scale, job.batch_size, progress) as run:
        parts = shards(len(dataset), run.shard_size)
        thresholds = best = None
        for part_thresholds, part_best in run.map("pass1", parts, label="dissect 1/2"):
            thresholds = part_thresholds if thresholds is None else thresholds.merge(part_thresholds)
            best = part_best if best is None else best.merge(part_best)
        t = thresholds.result().astype(np.float32)
        counts = IoUCounts(len(t), dataset.categories, primary_categories(dataset))
        for part in run.map("pass2", parts, t, label="dissect 2/2", sticky=True):
            counts.merge(part)
    return _result(layer, dataset, counts, t, best.result(), quantile, iou)


class DissectJob:
    """The two passes of a dissection over shards of ``dataset`` (steps of :mod:`engine.scale`).

    With ``cache``, pass 1 keeps each shard's maps in a temporary file that pass 2 of that shard
    reads back (then deletes); a shard this copy of the job did not see (another Ray worker, a
    restarted one) runs the model again. With ``label_store`` (and a dataset read from a
    folder), pass 2 takes the label maps from the shard's decoded store in this node's cache
    folder, building it when missing.
    """

    def __init__(self, dataset, layer, quantile, top, batch_size, cache=True, label_store=True):
        self.dataset, self.layer, self.quantile, self.top = dataset, layer, quantile, top
        self.batch_size, self.cache = batch_size, cache
        self.label_store = label_store and isinstance(dataset, ConceptDataset)
        self._spools = {}  # (first, stop) → (file of pass 1's maps, map shape)
        self._labels_ready = {}  # (first, stop) → future of _labels, started beside pass 1
        self._key = None  # the dataset's store key, computed where the job runs

    def __getstate__(self):  # open files and running work stay where they are
        return {**self.__dict__, "_spools": {}, "_labels_ready": {}}

    def pass1(self, model, first, stop):
        """(Quantile, TopK) of images ``first .. stop-1``: thresholds and top images per unit."""
        spool = tempfile.TemporaryFile(prefix="onnxlens-dissect-") if self.cache else None
        self._labels_ready[first, stop] = _BACKGROUND.submit(self._labels, first, stop)  # key, store: beside the model

        def absorb(start, maps):  # pass 1's accumulators, on a thread while the model runs the next batch
            thresholds.update_maps(maps)
            best.update(maps, start)
            if spool:
                spool.write(maps)  # a contiguous array: written from its buffer, no copy

        batches = self._maps(model, first, stop)
        start, maps = next(batches)
        total = len(self.dataset) * int(np.prod(maps.shape[2:]))  # values per unit over every shard
        thresholds, best = Quantile(maps.shape[1], q=self.quantile, total=total), TopK(maps.shape[1], self.top)
        for _ in _in_threads(absorb, itertools.chain([(start, maps)], batches), workers=1):
            pass
        if spool:
            self._spools[first, stop] = spool, maps.shape[1:]
        return thresholds, best

    def pass2(self, model, first, stop, t):
        """IoUCounts of images ``first .. stop-1`` with unit thresholds ``t``."""
        concept_category = primary_categories(self.dataset)
        ready = self._labels_ready.pop((first, stop), None)
        labels = ready.result() if ready else self._labels(first, stop)
        stored = labels.label_area if isinstance(labels, LabelStore) else None  # counted once, when stored

        def tally(start, maps):  # one batch, on a worker thread: its own mergeable counts
            part = IoUCounts(len(t), self.dataset.categories, concept_category)
            for size, members in _by_size(self.dataset, start, len(maps)).items():
                part.update(mask_pixels(maps[members], t, size), [labels.label_maps(start + i) for i in members],
                            count_labels=stored is None)
            return part

        counts = IoUCounts(len(t), self.dataset.categories, concept_category)
        if stored is not None:
            counts.add_label_area(stored)
        for part in _in_threads(tally, self._second_pass(model, first, stop)):
            counts.merge(part)
        return counts

    def _labels(self, first, stop):
        """The label maps of rows ``first .. stop-1``: their store (built now if missing), or the
        dataset itself without a store or where the cache folder cannot be written."""
        if not self.label_store:
            return self.dataset
        self._key = self._key or dataset_key(self.dataset)
        store = LabelStore.open(self.dataset, cache_dir(), first, stop, self._key)
        if store is None:
            try:
                with ThreadPoolExecutor(max_workers=WORKERS) as pool:
                    store = LabelStore.build(self.dataset, cache_dir(), first, stop, self._key, decode=pool.map)
            except OSError:
                return self.dataset
        return store or self.dataset

    def _maps(self, model, first, stop):
        with ThreadPoolExecutor(max_workers=1) as reader:
            source = _read_ahead(from_concepts(self.dataset), reader, stop)
            for start, _, _, acts in stream(model, source, [self.layer], self.batch_size, progress=False,
                                            first=first, stop=stop):
                yield start, np.ascontiguousarray(_maps(acts[self.layer], self.layer), np.float32)

    def _second_pass(self, model, first, stop):
        """Yield ``(start, maps)`` again: read back from pass 1's file, else by running the model."""
        if (first, stop) not in self._spools:
            yield from self._maps(model, first, stop)
            return
        spool, shape = self._spools.pop((first, stop))
        with spool:
            spool.seek(0)
            per_image = int(np.prod(shape)) * 4
            for start in range(first, stop, self.batch_size):
                n = min(self.batch_size, stop - start)
                yield start, np.frombuffer(spool.read(n * per_image), np.float32).reshape(n, *shape)


def _read_ahead(source, pool, stop):
    """``source`` whose next batch (up to image ``stop``) is read on ``pool`` while the model runs
    the current one: image decoding overlaps the forward pass."""
    pending = {}

    def load(start, end):
        future = pending.pop((start, end), None) or pool.submit(source.load, start, end)
        following = (end, min(2 * end - start, stop))
        if following[0] < following[1]:
            pending[following] = pool.submit(source.load, *following)
        return future.result()

    return Source(source.names, load)


def _in_threads(work, items, workers=WORKERS):
    """Yield ``work(*item)`` for each item in order, computed on ``workers`` threads (PNG
    decoding, cv2.resize and most numpy kernels release the GIL); at most ``workers + 1`` items
    are in flight, so memory stays bounded."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(work, *item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _maps(activation, layer):
    if activation.ndim != 4:
        raise LayerError(f"'{layer}' is not a 4-D feature map (shape {activation.shape}): pick a conv layer")
    return activation


def _by_size(dataset, start, n):
    """Batch members grouped by label-map size (real Broden mixes sizes)."""
    groups = {}
    for i in range(n):
        row = dataset.rows[start + i]
        groups.setdefault((row["sh"], row["sw"]), []).append(i)
    return groups


def _result(layer, dataset, counts, thresholds, best, quantile, iou_threshold):
    iou = counts.result()
    names = [label["name"] if label else "" for label in dataset.labels]
    units = []
    for u in range(len(thresholds)):
        c = int(np.argmax(iou[u])) if iou.shape[1] else 0
        category = dataset.categories[counts.concept_category[c]] if counts.concept_category[c] >= 0 else ""
        units.append({"unit": u, "concept": names[c] if iou[u, c] > 0 else "", "category": category if iou[u, c] > 0 else "",
                      "iou": float(iou[u, c]), "threshold": float(thresholds[u]),
                      "detector": bool(iou[u, c] > iou_threshold)})
    detectors = [u for u in units if u["detector"]]
    per_category = {}
    reachable = reachable_iou(dataset, counts.label_area, quantile)
    for g, category in enumerate(dataset.categories):
        found = [u for u in detectors if u["category"] == category]
        own = (counts.concept_category == g) & (counts.label_area > 0)
        per_category[category] = {"detectors": len(found), "concepts": sorted({u["concept"] for u in found}),
                                  "labelled_concepts": int(own.sum()),
                                  "reachable_concepts": int((reachable[own] > iou_threshold).sum()),
                                  "best_reachable_iou": float(reachable[own].max()) if own.any() else 0.0}
    summary = {"layer": layer, "images": len(dataset), "units": len(units), "quantile": quantile,
               "iou_threshold": iou_threshold, "detectors": len(detectors),
               "concepts": len({u["concept"] for u in detectors}), "categories": per_category}
    return Dissection(layer, units, summary, iou, best, reachable)


def write_dissection(result, out, model, concepts, images_per_unit=8):
    """Write ``units.csv``, ``summary.json`` and ``unit_NNNN.png`` (top images, mask outlined)
    for each detector unit into ``out`` (the previous run's files there replaced as a whole).

    >>> from engine.data import synth
    >>> from engine.data.broden import write_concepts
    >>> write_concepts("shapes-broden", synth.batches(16, seed=5))
    >>> result = dissect(model, "shapes-broden", progress=False)
    >>> write_dissection(result, "dissect-out", model, "shapes-broden")
    """
    out = Path(out)
    dataset = read_concepts(concepts) if isinstance(concepts, (str, Path)) else concepts
    buf = io.StringIO()
    writer = csv.DictWriter(buf, ["unit", "concept", "category", "iou", "threshold", "detector"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.units)
    with output_set(out, ["units.csv", "summary.json", "unit_*.png"]) as stage:
        for unit in (u for u in result.units if u["detector"]):
            images = result.top["image"][unit["unit"]][:images_per_unit]
            write_image(stage / f"unit_{unit['unit']:04d}.png", unit_sheet(model, dataset, result.layer, unit, images))
        write_json(stage / "summary.json", result.summary)
        write_text(stage / "units.csv", buf.getvalue())


def unit_sheet(model, dataset, layer, unit, images):
    """A grid of ``images`` (dataset rows) with the mask of ``unit`` outlined in yellow, titled
    with :func:`unit_caption`.

    >>> from engine.data import synth
    >>> from engine.data.broden import write_concepts
    >>> write_concepts("shapes-broden", synth.batches(16, seed=5))
    >>> dataset = read_concepts("shapes-broden")
    >>> result = dissect(model, dataset, progress=False)
    >>> unit_sheet(model, dataset, result.layer, result.units[7], result.top["image"][7][:4]).dtype
    dtype('uint8')
    """
    return titled(grid(unit_images(model, dataset, layer, unit, images), ncols=len(images)), unit_caption(unit))


def unit_caption(unit):
    """What a unit detects, e.g. "unit 7: red (color) IoU 0.123".

    >>> unit_caption({"unit": 7, "concept": "red", "category": "color", "iou": 0.1234})
    'unit 7: red (color) IoU 0.123'
    """
    return f"unit {unit['unit']}: {unit['concept']} ({unit['category']}) IoU {unit['iou']:.3f}"


def unit_images(model, dataset, layer, unit, images):
    """The ``images`` (dataset rows) with the mask of ``unit`` outlined in yellow, uint8 RGB each.

    >>> from engine.data import synth
    >>> from engine.data.broden import write_concepts
    >>> write_concepts("shapes-broden", synth.batches(16, seed=5))
    >>> dataset = read_concepts("shapes-broden")
    >>> unit = {"unit": 7, "threshold": 1.0}
    >>> len(unit_images(model, dataset, model.default_layer, unit, [0, 5]))
    2
    """
    pictures = [dataset.image(int(i)) for i in images]
    maps = model.run(model.preprocess(pictures), activations=[layer]).activations[layer][:, unit["unit"]]
    cells = []
    for picture, unit_map in zip(pictures, maps):
        mask = upsample(unit_map[None], picture.shape[:2])[0] > unit["threshold"]
        outlined = np.ascontiguousarray(picture.copy())
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(outlined, contours, -1, (255, 255, 0), 1)
        cells.append(outlined)
    return cells
