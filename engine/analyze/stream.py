"""Stream an image source through a model, batch by batch, with a progress bar."""
from engine.progress import Progress


def stream(model, source, layers, batch_size=32, label="", progress=None):
    """Yield ``(start, images, labels, activations)`` per batch; ``activations`` maps each name
    in ``layers`` to its N×... array. ``progress``: None shows a bar on a terminal only.

    >>> for start, images, labels, acts in stream(model, from_synth(64), ["layer3"]): ...
    """
    size = None  # dynamic spatial dims: every batch at the size of the first image
    with Progress(total=len(source), label=label, enabled=progress) as bar:
        for start, images, labels in source.batches(max(1, int(batch_size))):
            x = model.preprocess(images, size=size)
            size = x.shape[2:4] if model.input.layout == "NCHW" else x.shape[1:3]
            acts = model.run(x, activations=list(layers)).activations  # any batch
            yield start, images, labels, acts
            bar.update(len(images))
