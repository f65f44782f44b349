"""Per-image random streams: image ``i``'s draws depend only on ``(seed, start + i)``.

>>> Streams(seed=3, indices=[0, 1]).integers(0, 10, (2, 1)).shape
(2, 1)
"""
import math

import numpy as np

from engine.errors import UsageError

_GAMMA = np.uint64(0x632BE59BD9B4E019)
_SHIFTS = np.uint64(30), np.uint64(27), np.uint64(31)
_MULTIPLIERS = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x):
    """SplitMix64's finalizer on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> _SHIFTS[0])  # a new array, then in place (arrays wrap without warnings)
    x *= _MULTIPLIERS[0]
    x ^= x >> _SHIFTS[1]
    x *= _MULTIPLIERS[1]
    x ^= x >> _SHIFTS[2]
    return x


class Streams:
    """Per-image random streams, drawn for a whole batch at once.

    Every draw is a hash (SplitMix64) of (seed, image index, draw number, element), so image
    ``i``'s parameters depend only on ``seed`` and ``start + i``: not on the batch size, the
    chunking or the thread. Offers the part of ``numpy.random.Generator`` that ops use, with the
    image axis first in every ``size``.

    >>> Streams(seed=7, indices=range(4)).random((4, 2)).shape
    (4, 2)
    """

    def __init__(self, seed=None, indices=(0,)):
        if seed is None:
            seed = int(np.random.SeedSequence().entropy) & (2**64 - 1)
        if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
            raise UsageError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        self.seed = int(seed)
        self.indices = np.asarray(indices, np.uint64)
        self._draw = 0
        self._keys = _mix(_mix(np.full(1, self.seed, np.uint64) ^ np.uint64(0x9E3779B97F4A7C15))
                          ^ self.indices)

    def split(self):
        """One single-image stream per image, each continuing from this stream's position."""
        parts = []
        for i in self.indices:
            one = Streams(self.seed, [int(i)])
            one._draw = self._draw
            parts.append(one)
        return parts

    def _bits(self, size):
        size = (len(self.indices),) if size is None else (size,) if np.isscalar(size) else tuple(size)
        if size[0] != len(self.indices):
            raise ValueError(f"draws must have one row per image ({len(self.indices)}), got {size}")
        self._draw += 1
        ctr = np.arange(self._draw << 32, (self._draw << 32) + math.prod(size[1:]), dtype=np.uint64)
        bits = _mix(_mix(self._keys[:, None] ^ ctr) + _GAMMA)
        return bits.reshape(size)

    def random(self, size=None):
        """Uniform floats in [0, 1)."""
        return (self._bits(size) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)

    def integers(self, low, high, size=None, dtype=np.int64):
        """Uniform integers in [low, high)."""
        span = np.asarray(high, np.float64) - low
        return (low + np.floor(self.random(size) * span)).astype(dtype)

    def generators(self, size=None):
        """One ``numpy.random.Generator`` per image, for distributions hashing does not offer."""
        return [np.random.default_rng(int(b)) for b in self._bits(size).ravel()]

    def beta(self, a, b, size=None):
        """Beta(a, b) draws, one generator per image."""
        size = (len(self.indices),) if size is None else size
        return np.array([g.beta(a, b) for g in self.generators(size)]).reshape(size)
