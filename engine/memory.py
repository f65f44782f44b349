"""Memory estimates before big allocations: refuse with a clear message instead of dying in numpy.

>>> check_fits(10**15, "SmoothGrad's noisy copies", "lower samples (--samples)")  # doctest: +ELLIPSIS
Traceback (most recent call last):
engine.errors.UsageError: SmoothGrad's noisy copies need about 1 PB of memory, more than the ... available: lower samples (--samples)
"""
import os

from engine.errors import UsageError


def available_bytes():
    """Memory the system can still give (MemAvailable), or None where it cannot tell.

    >>> available_bytes() > 0
    True
    """
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(nbytes, what, remedy):
    """Raise UsageError when ``nbytes`` exceeds the available memory; ``what`` needs it and
    ``remedy`` says which option lowers it.

    >>> check_fits(1024, "the images", "lower --synth")
    """
    free = available_bytes()
    if free is not None and nbytes > free:
        raise UsageError(f"{what} need about {_human(nbytes)} of memory, more than the {_human(free)} available: {remedy}")


def _human(nbytes):
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if nbytes < 1000 or unit == "PB":
            return f"{nbytes:.0f} {unit}"
        nbytes /= 1000
