"""One hierarchy for user-facing errors.

Every error a user can cause (bad file, bad image, unknown layer, unsupported op on the
differentiated path, ...) raises a subclass of :class:`OnnxlensError` whose message is one line
saying what is wrong and what to do. The CLI prints that line and exits with status 2.
Internal bugs raise anything else and crash loudly.
"""


class OnnxlensError(Exception):
    """Base class of every error caused by user input."""


class ModelLoadError(OnnxlensError):
    """The model file is missing, corrupt, not ONNX, or references data it may not read."""


class ImageError(OnnxlensError):
    """An image file is missing, unreadable or not an image."""


class InputShapeError(OnnxlensError):
    """An input array or image size does not fit the model."""


class ModelRunError(InputShapeError):
    """ONNX Runtime failed while running the model; the message names the failing node (an input
    size the graph cannot take is the usual cause, hence an InputShapeError)."""


class LayerError(OnnxlensError):
    """A layer (tensor) name is unknown or cannot be used for the request."""


class UnsupportedOpError(OnnxlensError):
    """An operator on the differentiated path has no differentiation rule."""


class DatasetError(OnnxlensError):
    """A dataset folder (images, labels, concept masks) is missing or malformed."""


class UsageError(OnnxlensError):
    """Options that contradict each other or values out of range."""


class ClusterError(OnnxlensError):
    """The Ray cluster is unreachable, or lost a worker more often than it retries."""


class OutputError(OnnxlensError):
    """An output path is unusable (wrong kind, unwritable, bad suffix) or the disk refused a write."""


class RunTimeout(OnnxlensError):
    """A model run took longer than the run time limit (``--timeout``)."""
