"""The Ray runner: a pool of actors, each holding one Model and one copy of the job.

Ray actors rather than Ray Data's ``map_batches``: a job's part is an accumulator of a whole
shard, not a batch of rows to write out, some jobs take two passes with a merge on the driver in
between (dissection thresholds), and a second pass goes back to the actor that kept the first
pass's activations (``sticky``). Actors give exactly that; tasks would rebuild the model and its
rewritten sessions per shard. Only shard bounds travel to the workers (the job, with its image
names, travels once per worker and job, and the driver's per-run limits, :data:`LIMITS`, with
each shard) and only accumulators travel back. A worker that dies is restarted and its shards
retried by Ray (``RETRIES`` times).

Ray is imported only here, when a job asks for it.
"""
import copy
import importlib
import inspect
import logging
import os
import socket
from collections import deque
from pathlib import Path

from engine.errors import ClusterError, OnnxlensError, UsageError
from engine.progress import Progress

# Per-run limits held in module globals (set by `onnxlens --max-pixels N` and `--timeout S`):
# a worker takes the driver's values before each shard.
LIMITS = (("engine.data.images", "MAX_PIXELS"), ("engine.runtime.session", "RUN_TIMEOUT"))
RETRIES = 4  # restarts of a dead worker, and retries of the shard it was running
IN_FLIGHT = 2  # shards queued per worker: one running, one waiting (hides the round trip)


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'onnxlens[ray]'") from None
    return ray


def connect(address):
    """Join the Ray cluster at ``address`` ("" starts a local one), unless already connected;
    returns the ``ray`` module. E.g. ``connect("auto")`` joins the cluster of ``ray start --head``."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    try:
        _reachable(address)  # ray.init retries an unreachable host:port for minutes
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClusterError(f"cannot reach the Ray cluster at '{address}' ({first}): start one with "
                           "`ray start --head`, or give --ray alone for a local one") from None
    return ray


def _reachable(address, timeout=5):
    """Raise OSError unless a TCP connection to ``host:port`` (or ``ray://host:port``) opens."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit():
        socket.create_connection((host, int(port)), timeout=timeout).close()


def limits():
    """This process's values of :data:`LIMITS`, as ``{(module, name): value}``.

    >>> limits()[("engine.data.images", "MAX_PIXELS")]
    50000000
    """
    return {(module, name): getattr(importlib.import_module(module), name) for module, name in LIMITS}


def apply_limits(values):
    """Set the module globals of ``values`` (from :func:`limits`) in this process.

    >>> apply_limits(limits())
    """
    for (module, name), value in values.items():
        setattr(importlib.import_module(module), name, value)


class Worker:
    """One Ray actor: the model built once (on the first shard, so that a model this node cannot
    load is the user's one-line error), then ``call(step, start, stop, args, job, limits)`` per
    shard, under the driver's per-run ``limits`` (:func:`limits`).

    ``job`` comes as ``[ObjectRef]`` (nested, so Ray does not resolve it per call): the worker
    fetches a job on its first shard of it, and again after a restart.
    """

    def __init__(self, model_class, path, options):
        self.recipe, self.model = (model_class, path, options), None
        self.job_id, self.job = None, None

    def call(self, step, start, stop, args, job, limits):
        apply_limits(limits)
        if self.model is None:
            model_class, path, options = self.recipe
            self.model = model_class(path, **options)
        if self.job_id != job[0].hex():
            import ray

            self.job_id, self.job = job[0].hex(), ray.get(job[0])
        return getattr(self.job, step)(self.model, start, stop, *args)

    def pid(self):
        return os.getpid()


ATTRIBUTE = {"preprocess": "preprocessing"}  # Model arguments kept under another attribute name


def model_recipe(model, threads):
    """``(class, absolute path, keyword arguments)`` that rebuild ``model`` on a worker with
    ``threads`` ORT threads: every argument of the class's constructor, read back from the
    attribute that holds its resolved value (``preprocess`` → ``preprocessing``).

    >>> cls, path, options = model_recipe(model, threads=1)
    >>> cls(path, **options).layers == model.layers
    True
    """
    names = list(inspect.signature(type(model).__init__).parameters)[2:]  # after self and path
    options = {name: getattr(model, ATTRIBUTE.get(name, name)) for name in names}
    return type(model), str(Path(model.path).resolve()), {**options, "threads": threads}


_POOLS = {}  # (Ray job, model, worker options) → actors, kept for the next job on the same model


def _pool(ray, model, scale):
    """The actors for ``model`` at ``scale``: started on first use, then reused while this
    process stays connected (an audit runs several jobs; the model is built once per worker)."""
    cpus = max(float(ray.cluster_resources().get("CPU", 1)), 1.0)
    count = int(scale.workers or max(1, cpus // scale.threads))
    model_class, path, options = model_recipe(model, scale.threads)
    key = (ray.get_runtime_context().get_job_id(), model_class, path, repr(options), count)
    if key not in _POOLS:
        for other in list(_POOLS):  # one pool at a time: its CPUs go to the new one
            workers = _POOLS.pop(other)
            if other[0] == key[0]:  # (a pool of an earlier connection died with it)
                for worker in workers:
                    ray.kill(worker)
        actor = ray.remote(Worker).options(num_cpus=min(float(scale.threads), cpus / count),
                                           max_restarts=RETRIES, max_task_retries=RETRIES)
        _POOLS[key] = [actor.remote(model_class, path, options) for _ in range(count)]
    return key


class RayRunner:
    """Runs a job's steps on a pool of Ray actors (a context manager; a job that fails takes
    its pool down with it, so no shard of it keeps running). Used as :func:`engine.scale.runner`
    does: ``with RayRunner(model, job, Scale(ray=""), 256) as run: parts = list(run.map("rows",
    shards(1000, 256)))``.
    """

    def __init__(self, model, job, scale, shard_size, progress=None):
        self.ray = connect(scale.ray)
        self.shard_size, self.progress = shard_size, progress
        self.key = _pool(self.ray, model, scale)
        self.workers = _POOLS[self.key]
        self.job = [self.ray.put(job)]  # held here while the actors may need it
        self.limits = limits()
        self.owner = {}  # (start, stop) → the worker that ran it last

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        if kind is not None:
            for worker in _POOLS.pop(self.key, []):
                self.ray.kill(worker)

    def map(self, step, ranges, *args, label="", sticky=False):
        """Yield each range's part in order while up to ``IN_FLIGHT`` shards per worker run.
        ``sticky``: send each range to the worker that ran it last (it may hold a cache)."""
        ranges, pending = list(ranges), deque()
        load = [0] * len(self.workers)

        def submit(bounds):
            k = self.owner[bounds] if sticky and bounds in self.owner else load.index(min(load))
            load[k] += 1
            self.owner[bounds] = k
            pending.append((bounds, k, self.workers[k].call.remote(step, *bounds, args, self.job, self.limits)))

        todo = iter(ranges)
        with Progress(total=sum(b - a for a, b in ranges), label=label, enabled=self.progress) as bar:
            for bounds in todo:
                submit(bounds)
                if len(pending) >= IN_FLIGHT * len(self.workers):
                    break
            while pending:
                (start, stop), k, ref = pending.popleft()
                part = self._get(ref)
                load[k] -= 1
                bar.update(stop - start)
                yield part
                for bounds in todo:
                    submit(bounds)
                    break

    def _get(self, ref):
        """The part (a writable copy: Ray maps large arrays read-only), or the worker's own user
        error (one line, as in process)."""
        ray = self.ray
        try:
            return copy.deepcopy(ray.get(ref))
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, OnnxlensError):
                raise err.cause.with_traceback(None) from None
            raise
        except ray.exceptions.RayActorError as err:
            raise ClusterError(f"a Ray worker died more than {RETRIES} times ({type(err).__name__}): "
                               "check the workers' memory and `ray logs`") from None
