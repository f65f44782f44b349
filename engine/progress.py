"""A dependency-free progress bar with rate and ETA, written to stderr.

Quiet when stderr is not a terminal unless forced, so logs and tests stay clean.
"""
import sys
import time


class Progress:
    """Count work items and show ``label  37/200  18.5 it/s  ETA 9s``.

    >>> import io
    >>> with Progress(total=200, label="dissect", stream=io.StringIO(), enabled=True) as bar:
    ...     for batch in range(4):
    ...         bar.update(50)
    >>> bar.stream.getvalue().split("  ")[:2]
    ['\\rdissect', '200/200']
    """

    def __init__(self, total=None, label="", unit="img", stream=None, enabled=None, min_interval=0.2):
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.min_interval = min_interval
        self.done = 0
        self._start = self._last = time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n=1):
        """Count ``n`` more items done; redraws at most every ``min_interval`` seconds."""
        self.done += n
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.min_interval:
            self._last = now
            self._draw(now)

    def close(self):
        """Draw the final count and end the line (called on leaving the ``with`` block)."""
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, now):
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        eta = ""
        if self.total and rate > 0:
            eta = f"  ETA {max(self.total - self.done, 0) / rate:.0f}s"
        self.stream.write(f"\r{self.label}  {count}  {rate:.1f} {self.unit}/s{eta}   ")
        self.stream.flush()
