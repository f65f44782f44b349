"""Mergeable dataset accumulators: ``update(batch)``, ``merge(other)``, ``result()``.

Each one summarises a stream of batches so that splitting a dataset into parts, accumulating the
parts apart (other processes, other machines) and merging gives exactly the single-pass result.

- :class:`Quantile` — per-channel quantile (dissection thresholds), bounded memory.
- :class:`IoUCounts` — intersection and area counts of unit masks and concept labels.
- :class:`TopK` — the k images where each channel peaks, with the peak's position.
- :class:`Embeddings` — feature rows by image index, in memory or in a memory-mapped ``.npy``.
"""
import errno
import os

import numpy as np

from engine.data.files import disk_errors
from engine.errors import UsageError


def _indices(start, n):
    """Image indices of a batch: ``start .. start+n-1``, or ``start`` itself when it is an array."""
    return np.arange(start, start + n) if np.isscalar(start) else np.asarray(start, np.int64)


class Quantile:
    """Per-channel ``q``-quantile of a stream of values (numpy's linear interpolation).

    Exact while the values at or above the quantile fit in ``tail`` per channel (the top ``tail``
    values are kept), i.e. up to about ``tail / (1 - q)`` values per channel; beyond that it reads
    the quantile from a histogram of ``bins`` bins, interpolated within the bin. Bin widths are
    powers of two, the smallest whose bins span the channel's range, so the histogram after any
    split and merge equals the single-pass one. Memory is ``channels × (bins + 2·tail)`` numbers
    whatever the dataset size. ``total``: the values per channel of the whole stream (all parts
    merged) when known in advance; if the exact path covers that many, no histogram is kept and
    only the values the quantile of ``total`` values can read are kept (the same result, less
    work per update).

    >>> acc = Quantile(channels=2, q=0.995)
    >>> acc.update(np.random.rand(1000, 2))      # rows of values, one column per channel
    >>> acc.update_maps(np.random.rand(4, 2, 8, 8))  # or N×channels×H×W maps
    >>> acc.result().shape
    (2,)
    """

    FINEST = -40  # the finest bin width is 2**FINEST

    def __init__(self, channels, q=0.995, bins=4096, tail=4096, total=None):
        if not 0 < q < 1:
            raise UsageError(f"the quantile must lie strictly between 0 and 1, got {q}")
        self.channels, self.q, self.bins, self.tail = int(channels), float(q), int(bins), int(tail)
        self.total = None if total is None else int(total)
        self.exact = self.total is not None and self._from_top(self.total) < self.tail  # top values suffice
        self.keep = self._from_top(self.total) + 1 if self.exact else self.tail  # top values the result may read
        self.count = 0
        self.top = np.zeros((self.channels, 0), np.float32)  # the largest values, unordered (-inf: padding)
        self.floor = np.full(self.channels, -np.inf, np.float32)  # values at or below it never enter ``top``
        self.lo = np.full(self.channels, np.inf)
        self.hi = np.full(self.channels, -np.inf)
        self.exponent = np.full(self.channels, self.FINEST, np.int64)  # bin width 2**exponent
        self.start = np.zeros(self.channels, np.int64)  # floor(lo / width): the index of bin 0
        self.hist = np.zeros((self.channels, 0 if self.exact else self.bins), np.int64)

    def update(self, values):
        """Add values: an array N×channels, one column per channel (finite numbers)."""
        self._add(np.ascontiguousarray(np.asarray(values, np.float32).reshape(-1, self.channels).T))

    def update_maps(self, maps):
        """Add every value of N×channels×H×W ``maps`` (one transposing copy instead of two)."""
        maps = np.asarray(maps, np.float32)
        self._add(np.ascontiguousarray(maps.transpose(1, 0, 2, 3)).reshape(self.channels, -1))

    def _add(self, values):
        """Add a channels×n array of values."""
        if values.shape[1] == 0:
            return
        if not np.isfinite(values).all():
            raise UsageError("activations hold NaN or infinity: check the model and its preprocessing")
        self._count(values.shape[1])
        self._keep_top(values)
        if self.exact:
            return
        self._fit(np.minimum(self.lo, values.min(axis=1)), np.maximum(self.hi, values.max(axis=1)), self.exponent)
        scale = np.ldexp(np.float32(1), -self.exponent).astype(np.float32)[:, None]  # exact: a power of two
        index = np.floor(values * scale).astype(np.int64) - self.start[:, None]
        self.hist += self._bincount(index)

    def merge(self, other):
        """Fold another Quantile over the same channels into this one; returns self."""
        if (other.channels, other.q, other.bins, other.tail, other.total) != \
                (self.channels, self.q, self.bins, self.tail, self.total):
            raise UsageError("only Quantile accumulators with the same channels, q, bins, tail and total merge")
        if other.count == 0:
            return self
        self._count(other.count)
        self._keep_top(other.top)
        if self.exact:
            return self
        self._fit(np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi),
                  np.maximum(self.exponent, other.exponent))
        self.hist += other._rebinned(self.exponent, self.start)
        return self

    def result(self):
        """The per-channel quantiles as a float64 array (NaN before any value)."""
        n = self.count
        if n == 0:
            return np.full(self.channels, np.nan)
        position = self.q * (n - 1)  # 0-based ascending rank, fractional
        frac = position - np.floor(position)
        from_top = self._from_top(n)  # descending rank of the lower neighbour
        if from_top < min(self.tail, self.top.shape[1]):
            top = -np.sort(-self.top, axis=1).astype(np.float64)
            lower, upper = top[:, from_top], top[:, max(from_top - 1, 0)]
            return lower + frac * (upper - lower)
        cumulative = np.cumsum(self.hist, axis=1)
        k = (cumulative <= position).sum(axis=1)  # the bin holding rank `position`
        rows = np.arange(self.channels)
        before = np.where(k > 0, cumulative[rows, np.maximum(k - 1, 0)], 0)
        inside = np.minimum((position - before + 0.5) / self.hist[rows, k], 1.0)
        return (self.start + k + inside) * np.ldexp(1.0, self.exponent)

    def __getstate__(self):
        """Compact for shipping between processes (a Ray shard's part): the top ``tail`` values
        only, and the histogram as int32 while its counts fit."""
        state = dict(self.__dict__)
        if state["top"].shape[1] > self.tail:
            state["top"] = _largest(state["top"], self.tail)
        if self.count < 2**31:
            state["hist"] = state["hist"].astype(np.int32)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.hist = self.hist.astype(np.int64)

    # ----------------------------------------------------------------------------- internals
    def _from_top(self, n):
        """Descending rank of the value below the ``q``-quantile of ``n`` values."""
        return n - 1 - int(np.floor(self.q * (n - 1)))

    def _count(self, n):
        self.count += n
        if self.exact and self.count > self.total:
            raise ValueError(f"Quantile(total={self.total}) was given {self.count} values per channel")

    def _keep_top(self, values):
        if self._from_top(self.count) >= self.tail:
            self.top = self.top[:, :0]  # too many values for the exact path: it is never read again
            return
        both = np.concatenate([self.top, _above(values.astype(np.float32), self.floor)], axis=1)
        if both.shape[1] > 2 * self.keep:  # trim to the top ``keep`` only now and then (amortized)
            both = _largest(both, self.keep)
            self.floor = both[:, 0]  # each channel's keep-th largest: values up to it change no top value
        self.top = both

    def _fit(self, lo, hi, exponent):
        """Coarsen each channel from ``exponent`` until [lo, hi] spans fewer than ``bins`` bins."""
        exponent = exponent.copy()
        while True:
            width = np.ldexp(1.0, exponent)
            grow = np.isfinite(lo) & (np.floor(hi / width) - np.floor(lo / width) >= self.bins)
            if not grow.any():
                break
            exponent += grow
        start = np.where(np.isfinite(lo), np.floor(lo / np.ldexp(1.0, exponent)), 0).astype(np.int64)
        changed = np.flatnonzero((exponent != self.exponent) | (start != self.start))
        if len(changed):
            self.hist[changed] = self._rebinned(exponent, start, changed)
        self.lo, self.hi, self.exponent, self.start = lo, hi, exponent, start

    def _rebinned(self, exponent, start, rows=None):
        """The histogram of channels ``rows`` (default all) at the coarser (or equal) widths
        ``2**exponent`` with bin 0 at ``start``."""
        rows = np.arange(self.channels) if rows is None else rows
        hist = self.hist[rows]
        r, b = np.nonzero(hist)
        channel = rows[r]
        index = ((self.start[channel] + b) >> (exponent - self.exponent)[channel]) - start[channel]
        counts = np.bincount(r * self.bins + index, weights=hist[r, b], minlength=hist.size)
        return np.rint(counts).astype(np.int64).reshape(hist.shape)

    def _bincount(self, index):
        flat = (index + (np.arange(self.channels) * self.bins)[:, None]).ravel()
        return np.bincount(flat, minlength=self.hist.size).reshape(self.hist.shape)


def _stacked(stacks):
    """Label planes of several images (each K×H×W) as one images×depth×H·W array, images with
    fewer planes padded with number 0.

    >>> _stacked([np.ones((1, 2, 2), np.uint8), np.full((2, 2, 2), 3, np.uint8)])[:, :, 0]
    array([[1, 0],
           [3, 3]], dtype=uint8)
    """
    stacks = [np.asarray(s) for s in stacks]
    depth, size = max(len(s) for s in stacks), stacks[0][0].size
    if all(len(s) == depth for s in stacks):
        return np.stack(stacks).reshape(len(stacks), depth, size)
    out = np.zeros((len(stacks), depth, size), np.result_type(*stacks))
    for i, s in enumerate(stacks):
        out[i, :len(s)] = s.reshape(len(s), size)
    return out


def _largest(values, k):
    """The ``k`` largest of each row, ascending. A sort: np.partition slows down tenfold on the
    many equal values of ReLU maps (zeros), where sorting does not.

    >>> _largest(np.array([[3, 0, 0, 5]], np.float32), 2)
    array([[3., 5.]], dtype=float32)
    """
    return np.sort(values, axis=1)[:, -k:]


def _above(values, floor):
    """The values of each row (channels×n) above the row's ``floor``, left-aligned in a
    channels×(most kept) array padded with -inf.

    >>> _above(np.array([[3, 1, 2], [0, 5, 0]], np.float32), np.array([1, 0], np.float32))
    array([[  3.,   2.],
           [  5., -inf]], dtype=float32)
    """
    keep = values > floor[:, None]
    kept = keep.sum(axis=1)
    if kept.min() == values.shape[1]:
        return values
    flat = np.flatnonzero(keep)
    row = flat // values.shape[1]
    out = np.full((len(values), kept.max()), -np.inf, np.float32)
    out[row, np.arange(len(row)) - np.repeat(np.cumsum(kept) - kept, kept)] = values.ravel()[flat]
    return out


class IoUCounts:
    """Intersection and area counts between unit masks and concept labels (Network Dissection).

    A concept's IoU counts only the images where its category is labelled, as Broden's tally
    does: ``IoU[u, c] = I[u, c] / (A_unit[u, cat(c)] + A_label[c] - I[u, c])`` where ``A_unit``
    sums a unit's mask area over the images that label category ``cat(c)``.

    ``concept_category`` gives the category index of each label number (-1 for number 0,
    the unlabelled pixels, and for numbers no category uses).

    Masks come as the coordinates of their pixels, e.g. ``np.nonzero(masks.reshape(n, units, -1))``
    for dense N×units×H×W bool masks.

    >>> masks = np.zeros((1, 2, 2, 2), bool); masks[0, 0, 0] = True        # unit 0: the top row
    >>> labels = np.array([[[1, 1], [2, 2]]])                               # planes×H×W numbers
    >>> acc = IoUCounts(units=2, categories=["color"], concept_category=[-1, 0, 0])
    >>> acc.update(np.nonzero(masks.reshape(1, 2, -1)), [{"color": labels}])
    >>> acc.result()                                                        # units × label numbers
    array([[0., 1., 0.],
           [0., 0., 0.]])
    """

    def __init__(self, units, categories, concept_category):
        self.units, self.categories = int(units), list(categories)
        self.concept_category = np.asarray(concept_category, np.int64)
        self.concepts = len(self.concept_category)
        self.intersection = np.zeros((self.units, self.concepts), np.int64)
        self.unit_area = np.zeros((self.units, len(self.categories)), np.int64)
        self.label_area = np.zeros(self.concepts, np.int64)

    def update(self, pixels, label_maps, count_labels=True):
        """Add a batch of N images: ``pixels`` = (image, unit, pixel) index arrays of every mask
        pixel (pixel = flat index into the H×W label map); ``label_maps`` a list of N dicts,
        category → planes×H×W label numbers (0 = unlabelled; a category absent or with no planes
        is not labelled in that image). ``count_labels=False`` leaves the label areas to
        :meth:`add_label_area` (a label-map store keeps them).

        Per category, the labelling images' planes are stacked in their own dtype (uint8 from a
        store) and every mask pixel's (unit, label number) code is read in one gather and counted
        by one bincount (the pixels' places in the stack shared by categories of one shape)."""
        image, unit, pixel = (np.asarray(v, np.int64) for v in pixels)
        n = len(label_maps)
        area = np.bincount(image * self.units + unit, minlength=n * self.units).reshape(n, self.units)
        unit_key = unit * self.concepts
        places = {}  # plane size → each mask pixel's place in a stack of every image's planes
        intersection = np.zeros(self.units * self.concepts, np.int64)
        for g, category in enumerate(self.categories):
            labelled = [i for i in range(n) if len(label_maps[i].get(category, ())) > 0]
            if not labelled:
                continue
            self.unit_area[:, g] += area[labelled].sum(axis=0)
            planes = _stacked([label_maps[i][category] for i in labelled])  # labelled × depth × H·W
            if count_labels:
                self._count_labels(planes, category)
            depth, size = planes.shape[1:]
            if len(labelled) == n:  # every image labels the category (the usual case): no selection
                if depth * size not in places:
                    places[depth * size] = image * (depth * size) + pixel
                where, owners = places[depth * size], unit_key
            else:
                row = np.full(n, -1)
                row[labelled] = np.arange(len(labelled))
                inside = row[image] >= 0  # mask pixels of images that label the category
                where, owners = row[image[inside]] * (depth * size) + pixel[inside], unit_key[inside]
            flat = planes.reshape(-1)
            for k in range(depth):  # number 0 (unlabelled, padding) lands in column 0
                codes = owners + (flat[where + k * size] if k else flat[where])
                intersection += np.bincount(codes, minlength=len(intersection))
        self.intersection += intersection.reshape(self.units, self.concepts)
        self.intersection[:, 0] = 0
        self.label_area[0] = 0

    def add_label_area(self, area):
        """Add label areas counted elsewhere: pixels per label number over the labelled planes."""
        area = np.asarray(area, np.int64)
        self.label_area[:len(area)] += area
        self.label_area[0] = 0

    def _count_labels(self, planes, category):
        counts = np.bincount(planes.reshape(-1))
        if len(counts) > self.concepts:
            raise UsageError(f"label number {len(counts) - 1} in category '{category}' exceeds label.csv")
        self.label_area[:len(counts)] += counts

    def merge(self, other):
        """Add another IoUCounts over the same units, categories and concepts; returns self."""
        if other.intersection.shape != self.intersection.shape or other.categories != self.categories:
            raise UsageError("only IoUCounts over the same units, categories and concepts merge")
        self.intersection += other.intersection
        self.unit_area += other.unit_area
        self.label_area += other.label_area
        return self

    def result(self):
        """IoU per (unit, label number) as float64 units×concepts; 0 where the union is empty."""
        known = self.concept_category >= 0
        unit_area = np.where(known, self.unit_area[:, np.maximum(self.concept_category, 0)], 0)
        union = unit_area + self.label_area - self.intersection
        return np.divide(self.intersection, union, out=np.zeros(union.shape), where=known & (union > 0))


class TopK:
    """Per channel, the ``k`` images with the highest peak value, with the peak's (y, x).

    Ties go to the lower image index, so any split and merge gives the single-pass result.

    >>> acc = TopK(channels=4, k=3)
    >>> acc.update(np.random.rand(10, 4, 7, 7), start=0)  # N×C×H×W maps of images 0..9
    >>> acc.result()["image"].shape
    (4, 3)
    """

    FIELDS = ("value", "image", "y", "x")

    def __init__(self, channels, k=8):
        self.channels, self.k = int(channels), int(k)
        self.value = np.zeros((self.channels, 0), np.float32)
        self.image = np.zeros((self.channels, 0), np.int64)
        self.y = np.zeros((self.channels, 0), np.int64)
        self.x = np.zeros((self.channels, 0), np.int64)

    def update(self, maps, start):
        """Add N×C×H×W maps of images ``start .. start+N-1`` (or an ``images`` index array)."""
        maps = np.asarray(maps, np.float32)
        n, c, h, w = maps.shape
        flat = maps.reshape(n, c, h * w)
        where = flat.argmax(axis=2)  # first maximum in row-major order
        peak = np.take_along_axis(flat, where[..., None], axis=2)[..., 0]
        images = _indices(start, n)
        self._keep(peak.T, np.broadcast_to(images, (c, n)), (where // w).T, (where % w).T)

    def merge(self, other):
        """Fold another TopK over the same channels into this one; returns self."""
        if (other.channels, other.k) != (self.channels, self.k):
            raise UsageError("only TopK accumulators with the same channels and k merge")
        self._keep(other.value, other.image, other.y, other.x)
        return self

    def result(self):
        """Dict of channels×k' arrays ``value``, ``image``, ``y``, ``x`` (best first; k' ≤ k)."""
        return {name: getattr(self, name).copy() for name in self.FIELDS}

    def _keep(self, value, image, y, x):
        value = np.concatenate([self.value, value], axis=1)
        image = np.concatenate([self.image, image], axis=1)
        order = np.lexsort((image, -value), axis=1)[:, : self.k]
        self.value = np.take_along_axis(value, order, axis=1)
        self.image = np.take_along_axis(image, order, axis=1)
        self.y = np.take_along_axis(np.concatenate([self.y, y], axis=1), order, axis=1)
        self.x = np.take_along_axis(np.concatenate([self.x, x], axis=1), order, axis=1)


class Embeddings:
    """Feature rows of images ``first .. first+n-1``, filled in any order; in memory, or in a
    memory-mapped ``.npy`` when ``path`` is given (then memory stays flat whatever ``n``).
    A shard's rows (``first`` > 0) merge into the whole set's.

    >>> acc = Embeddings(n=100, dim=96)
    >>> acc.update(np.zeros((10, 96)), start=0)
    >>> int(acc.merge(Embeddings(n=10, dim=96, first=90)).filled.sum())
    10
    """

    def __init__(self, n, dim, path=None, first=0):
        self.n, self.dim, self.first = int(n), int(dim), int(first)
        if path is None:
            self.features = np.zeros((self.n, self.dim), np.float32)
        else:
            with disk_errors(path):
                self.features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(self.n, self.dim))
                _reserve(path)
        self.filled = np.zeros(self.n, bool)

    def update(self, rows, start):
        """Store N×dim ``rows`` for images ``start .. start+N-1`` (or an index array)."""
        rows = np.asarray(rows, np.float32).reshape(len(rows), self.dim)
        index = _indices(start, len(rows)) - self.first
        self.features[index] = rows
        self.filled[index] = True

    def merge(self, other):
        """Copy the rows another Embeddings (the same set or a shard inside it) holds; returns self."""
        if other.dim != self.dim or other.first < self.first or other.first + other.n > self.first + self.n:
            raise UsageError("only Embeddings of the same dim merge, a shard into the set that holds it")
        index = np.flatnonzero(other.filled)
        self.features[index + other.first - self.first] = other.features[index]
        self.filled[index + other.first - self.first] = True
        return self

    def result(self):
        """The n×dim float32 features (the memmap itself when on disk); every row must be filled."""
        if not self.filled.all():
            raise UsageError(f"{int((~self.filled).sum())} of {self.n} embedding rows were never filled")
        if isinstance(self.features, np.memmap):
            self.features.flush()
        return self.features


def _reserve(path):
    """Allocate the blocks of a memory-mapped file now, so a full disk is an error here rather than
    a SIGBUS when a page is first written."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
