"""Stream an image source through a model, batch by batch, with a progress bar."""
from engine.progress import Progress


def stream(model, source, layers, batch_size=32, label="", progress=None):
    """Yield ``(start, images, labels, activations)`` per batch; ``activations`` maps each name
    in ``layers`` to its N×... array. ``progress``: None shows a bar on a terminal only.

    >>> for start, images, labels, acts in stream(model, from_synth(64), ["layer3"]): ...
    """
    with Progress(total=len(source), label=label, enabled=progress) as bar:
        for start, images, labels in source.batches(max(1, int(batch_size))):
            acts = model.run(model.preprocess(images), activations=list(layers)).activations  # any batch
            yield start, images, labels, acts
            bar.update(len(images))
