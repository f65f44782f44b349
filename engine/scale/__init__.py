"""Dataset jobs in shards: in this process, or on a Ray cluster with identical results.

A dataset job (embeddings, dissection, patches, faithfulness, robustness) is written once as a
*job*: a picklable object whose step methods ``step(model, start, stop, *args)`` compute a
mergeable part (an accumulator) for images ``start .. stop-1``. A :class:`Runner` maps a step
over the shards and yields the parts in shard order; the job's driver code merges them. In
process (``scale=None``) the shards run here, one after another; with ``Scale(ray=...)`` they
run in a pool of Ray actors, each holding one :class:`~engine.api.Model` built once.

>>> from engine.analyze.embeddings import EmbedJob
>>> from engine.analyze.sources import from_synth
>>> job = EmbedJob(from_synth(8), "/pool/GlobalAveragePool_output_0", batch_size=4)
>>> with runner(model, job, Scale(shard_size=4), step=4) as run:   # Scale(ray="", workers=2): on Ray
...     parts = list(run.map("rows", shards(len(job.source), run.shard_size)))
>>> [len(labels) for _, labels in parts]
[4, 4]
"""
from engine.scale.runner import Scale, LocalRunner, runner, shards

__all__ = ["Scale", "LocalRunner", "runner", "shards"]
