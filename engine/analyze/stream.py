"""Stream an image source through a model, batch by batch, with a progress bar."""
from engine.progress import Progress


def stream(model, source, layers, batch_size=32, label="", progress=None, first=0, stop=None):
    """Yield ``(start, images, labels, activations)`` per batch of images ``first .. stop-1``
    (default: all); ``activations`` maps each name in ``layers`` to its N×... array.
    ``progress``: None shows a bar on a terminal only. A model with dynamic spatial dims runs
    every batch at :func:`run_size` (the whole source's, so any shard gives the same result).

    >>> from engine.analyze.sources import from_synth
    >>> [(start, acts["/layer3/relu_1/Relu_output_0"].shape) for start, _, _, acts in
    ...  stream(model, from_synth(6), ["/layer3/relu_1/Relu_output_0"], batch_size=4)]
    [(0, (4, 96, 8, 8)), (4, (2, 96, 8, 8))]
    """
    size = run_size(model, source)
    stop = len(source) if stop is None else min(stop, len(source))
    with Progress(total=stop - first, label=label, enabled=progress) as bar:
        for start, images, labels in source.batches(max(1, int(batch_size)), first, stop):
            x = model.preprocess(images, size=size)
            acts = model.run(x, activations=list(layers)).activations  # any batch (chunked when fixed)
            yield start, images, labels, acts
            bar.update(len(images))


def run_size(model, source):
    """(H, W) a model runs ``source`` at: its input size, else (dynamic H×W) the first image's.

    >>> from engine.analyze.sources import from_synth
    >>> run_size(model, from_synth(4))
    (64, 64)
    """
    if model.input_size is not None or None not in model.input.size:
        return model.input_size or model.input.size
    _, images, _ = next(source.batches(1))
    x = model.preprocess(images)
    return tuple(x.shape[2:4] if model.input.layout == "NCHW" else x.shape[1:3])
