"""Stream an image source through a model, batch by batch, with a progress bar."""
import numpy as np

from engine.progress import Progress


def stream(model, source, layers, batch_size=32, label="", progress=None, first=0, stop=None):
    """Yield ``(start, images, labels, activations)`` per batch of images ``first .. stop-1``
    (default: all); ``activations`` maps each name in ``layers`` to its N×... array.
    ``progress``: None shows a bar on a terminal only.

    >>> for start, images, labels, acts in stream(model, from_synth(64), ["layer3"]): ...
    """
    fixed = model.input.batch
    step = fixed or max(1, int(batch_size))
    stop = len(source) if stop is None else min(stop, len(source))
    with Progress(total=stop - first, label=label, enabled=progress) as bar:
        for start, images, labels in source.batches(step, first, stop):
            x = model.preprocess(images)
            if fixed and len(x) < fixed:  # a static batch dim: pad, then drop the padding
                x = np.concatenate([x, np.zeros((fixed - len(x), *x.shape[1:]), x.dtype)])
            acts = model.run(x, activations=list(layers)).activations
            yield start, images, labels, {name: value[: len(images)] for name, value in acts.items()}
            bar.update(len(images))
