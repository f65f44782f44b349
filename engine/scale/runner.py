"""Shards of a dataset job and the runner that computes them: here, or on Ray (``ray_pool``)."""
import contextlib
from dataclasses import dataclass

from engine.errors import UsageError
from engine.progress import Progress

SHARD_BATCHES = 8  # default shard in process: this many batches (a smooth progress bar)
RAY_SHARD_BATCHES = 32  # default shard on Ray: fewer, larger parts (a dissection part is ~5 MB whatever its size)


@dataclass(frozen=True)
class Scale:
    """Where a dataset job runs.

    ``ray``: None runs in this process; ``""`` starts a local Ray cluster on this machine;
    ``"auto"`` joins the running cluster (``ray start --head``); any other address as
    ``ray.init`` takes it. ``workers``: Ray actors (default: the cluster's CPUs / ``threads``).
    ``shard_size``: images per shard (default 8 batches in process, 32 on Ray), rounded up to a
    whole number of batches so every batch is the one the single-process run computes.
    ``threads``: ONNX Runtime threads per worker.

    >>> Scale(ray="auto", workers=16, shard_size=256)
    Scale(ray='auto', workers=16, shard_size=256, threads=1)
    """

    ray: str | None = None
    workers: int | None = None
    shard_size: int | None = None
    threads: int = 1

    def __post_init__(self):
        for name in ("workers", "shard_size", "threads"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise UsageError(f"{name} must be at least 1, got {value}")
        if self.workers is not None and self.ray is None:
            raise UsageError("--workers sets the number of Ray workers: add --ray (or --ray auto for a cluster)")

    @classmethod
    def from_options(cls, ray=None, workers=None, shard_size=None):
        """The Scale of the command-line options ``--ray``, ``--workers``, ``--shard-size``;
        None when none is given (the plain single-process run).

        >>> Scale.from_options(ray="", workers=2)
        Scale(ray='', workers=2, shard_size=None, threads=1)
        """
        if ray is None and workers is None and shard_size is None:
            return None
        return cls(ray=ray, workers=workers, shard_size=shard_size)

    def shard(self, step):
        """Images per shard for batches of ``step`` images: a multiple of ``step``."""
        size = self.shard_size or (SHARD_BATCHES if self.ray is None else RAY_SHARD_BATCHES) * step
        return -(-int(size) // step) * step


def shards(n, size):
    """``(start, stop)`` of consecutive shards of ``size`` images covering ``0 .. n-1``.

    >>> shards(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    """
    return [(start, min(start + size, n)) for start in range(0, n, size)]


@contextlib.contextmanager
def runner(model, job, scale=None, step=32, progress=None):
    """A runner of ``job``'s steps: in process when ``scale`` is None or has no ``ray``
    address, else a pool of Ray actors (built on entry, killed on exit). ``step``: the job's
    batch size (shards are whole batches). ``progress``: the bar over shards (None: on a
    terminal only).

    >>> from engine.analyze.embeddings import EmbedJob
    >>> from engine.analyze.sources import from_synth
    >>> job = EmbedJob(from_synth(8), "/pool/GlobalAveragePool_output_0", batch_size=4)
    >>> with runner(model, job, step=4) as run:   # one shard of 8 batches here; Scale(ray=""): on Ray
    ...     len(list(run.map("rows", shards(8, run.shard_size))))
    1
    """
    scale = scale or Scale()
    if scale.ray is None:
        yield LocalRunner(model, job, scale.shard(step), progress)
        return
    from engine.scale.ray_pool import RayRunner

    with RayRunner(model, job, scale, scale.shard(step), progress) as pool:
        yield pool


class LocalRunner:
    """Runs a job's steps here, shard after shard, on ``model`` itself.

    >>> from engine.analyze.embeddings import EmbedJob
    >>> from engine.analyze.sources import from_synth
    >>> job = EmbedJob(from_synth(8), "/pool/GlobalAveragePool_output_0", batch_size=4)
    >>> [part.dim for part, _ in LocalRunner(model, job, 4).map("rows", shards(8, 4), label="embed")]
    [96, 96]
    """

    def __init__(self, model, job, shard_size, progress=None):
        self.model, self.job, self.shard_size, self.progress = model, job, shard_size, progress

    def map(self, step, ranges, *args, label="", sticky=False):
        """Yield ``job.step(model, start, stop, *args)`` for each range, in order. ``sticky``:
        on Ray, run each range on the worker that ran it last (its cache); here, no effect."""
        work = getattr(self.job, step)
        with Progress(total=sum(b - a for a, b in ranges), label=label, enabled=self.progress) as bar:
            for start, stop in ranges:
                part = work(self.model, start, stop, *args)
                bar.update(stop - start)
                yield part
