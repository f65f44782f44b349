"""Paired timing: the jobs of one comparison run back to back within each round, order rotating,
so that a shared machine's changing load falls on all of them alike; ratios are taken per round.

>>> one_round, times = rotating_rounds({"short": lambda: time.sleep(0.001), "long": lambda: time.sleep(0.003)})
>>> for _ in range(5): one_round()
>>> float(np.median(round_ratios(times, "long", "short"))) > 1
True
"""
import time

import numpy as np


def rotating_rounds(calls, clock=time.perf_counter, between=None, shuffled=False):
    """``(one_round, times)``: ``one_round()`` runs each of ``calls`` (name → callable) once, each
    round starting one job later, and appends its duration by ``clock`` to ``times[name]``.
    ``between``: run (untimed) before each job, e.g. :func:`cache_pass`. ``shuffled``: each round
    in a new random order (seeded) instead. A job finds in the caches what the job before it left
    there, and with more than two jobs a rotation keeps them in one cyclic order, so a job that
    always follows one sharing its code is favoured; a pass over memory empties the data caches but
    not the instruction cache or the branch predictors, which only a shuffled order spreads evenly.

    >>> one_round, times = rotating_rounds({"a": list, "b": dict}, clock=time.process_time)
    >>> for _ in range(3): one_round()
    >>> [len(t) for t in times.values()]
    [3, 3]
    """
    times = {name: [] for name in calls}
    order, rng = list(calls), np.random.default_rng(0)

    def one_round():
        if shuffled:
            rng.shuffle(order)
        for name in order:
            if between:
                between()
            start = clock()
            calls[name]()
            times[name].append(clock() - start)
        if not shuffled:
            order.append(order.pop(0))

    return one_round, times


def cache_pass(megabytes):
    """A function that reads ``megabytes`` of memory, evicting what the caches held, so that before
    each job of :func:`rotating_rounds` the jobs start alike, whatever ran before: a few MB empty
    the L1 and L2 caches, more than the last level holds empties every cache.

    >>> cache_pass(1)() > 0
    True
    """
    block = np.ones(megabytes * 2**20 // 8)
    return lambda: float(block.sum())


def round_ratios(times, name, base):
    """Per-round ``times[name] / times[base]`` as an array.

    >>> round_ratios({"a": [2.0, 3.0], "b": [1.0, 1.0]}, "a", "b")
    array([2., 3.])
    """
    return np.asarray(times[name], np.float64) / np.asarray(times[base], np.float64)
