"""Rewritten models (taps, gradients) built once and cached on disk.

A request names the tensors to expose and to differentiate; :func:`build` turns a model into
the rewritten one (add_taps → normalize → merge sibling Convs → differentiate) and :func:`cached`
stores it in the verified, size-capped cache of :mod:`engine.runtime.cache` (``$ONNXLENS_CACHE``,
default ``~/.cache/onnxlens``), keyed by the model's content hash, the request and a hash of the
graph code, so a rule change never serves a stale file. A cached model is its small graph plus its
large weights as external data files shared with every other entry that has the same bytes.
"""
import atexit
import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import onnx

from engine.errors import ModelLoadError
from engine.graph.autodiff import differentiate, grad_name
from engine.graph.blocked_forward import blocked_forward
from engine.graph.gradcam import add_gradcam, seed_classes, weights_source
from engine.graph.normalize import normalize
from engine.graph.siblings import merge_sibling_convs
from engine.graph.weightless import without_weights
from engine.graph.pixels import float_image, normalized_pixels
from engine.graph.quantized import integer_forward
from engine.graph.shapes import INTEGER_PIXELS
from engine.graph.taps import add_taps
from engine.runtime.cache import DamagedEntry, Store, blob_name, cache_dir, log
from engine.runtime.session import create_session


@dataclass(frozen=True)
class Request:
    """What to expose: ``activations`` and ``gradients`` (tensor names, the graph input's name
    for the input gradient) of Σ seed · ``output`` in backward ``mode``, at ``input_size`` (H, W).
    ``seed``: "given" (fed as ``SEED``), or one-hot rows made in the graph
    (:func:`engine.graph.gradcam.seed_classes`): "top" (each image's top class of ``output``) or
    "class" (class indices fed as ``CLASSES``); ``cam``: a layer whose raw Grad-CAM maps the graph
    computes (see :mod:`engine.graph.gradcam`; its gradient need not be among ``gradients``); ``pixels``:
    (image input, scale, offset, bgr, layout) to take uint8 RGB images instead of that float
    input, normalized in the graph (:func:`engine.graph.pixels.normalized_pixels`)."""

    input_size: tuple | None
    activations: tuple = ()
    gradients: tuple = ()
    output: str | None = None
    mode: str = "standard"
    seed: str = "given"
    cam: str | None = None
    pixels: tuple = ()


@lru_cache(maxsize=1)
def code_version():
    """Hash of the code rewritten models depend on: engine/graph (normalize, taps, autodiff, rules)
    and this pipeline.

    >>> len(code_version())
    16
    """
    engine = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in [*sorted((engine / "graph").rglob("*.py")), Path(__file__).resolve()]:
        digest.update(path.relative_to(engine).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def content_hash(model):
    """SHA-256 of a ``ModelProto``'s content: the serialized model without its large weights,
    then each large weight's bytes (never re-serializing the whole 100 MB model).

    >>> len(content_hash(model.proto))
    64
    """
    skeleton, weights = without_weights(model)
    digest = hashlib.sha256(skeleton.SerializeToString())
    for tensor in weights.values():  # name, type and shape are in the skeleton
        digest.update(tensor.raw_data if tensor.HasField("raw_data") else tensor.SerializeToString())
    return digest.hexdigest()


def build(model, request):
    """The rewritten model for ``request`` (not cached).

    Requested tensors are tapped before normalization so their names survive it (and sibling Convs
    are merged for the gradients only where none of theirs is requested); taps only
    needed for gradients are dropped from the outputs again, and so is the gradient that only
    Grad-CAM's maps read. An integer (uint8) input whose gradient is requested becomes a float32
    input (:func:`engine.graph.pixels.float_image`).

    >>> [o.name for o in build(model.proto, Request((64, 64), activations=("/layer3/relu_1/Relu_output_0",))).graph.output]
    ['logits', '/layer3/relu_1/Relu_output_0']
    """
    originals = [o.name for o in model.graph.output]
    output = request.output or originals[0]
    cam = [request.cam] if request.cam else []
    wanted = list(dict.fromkeys([*request.activations, *request.gradients, *cam, output]))
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    tapped = add_taps(model, [n for n in wanted if n not in inputs])  # the pipeline's one private copy
    for name in request.gradients:
        if inputs.get(name) in INTEGER_PIXELS:  # uint8 pixels: differentiated as float32 (fed as such)
            float_image(tapped, name, inplace=True)
    rewritten = blocked_forward(normalize(tapped, input_size=request.input_size, inplace=True))
    cam_weights = weights_source(rewritten, request.cam) if request.cam else None
    wrt = [*request.gradients, *([cam_weights[0]] if cam_weights else [])]
    if wrt:
        merged = merge_sibling_convs(rewritten)
        rewritten = differentiate(merged, output, list(dict.fromkeys(wrt)), mode=request.mode)
        if request.seed != "given":
            seed_classes(rewritten, output, top=request.seed == "top")
    rewritten = integer_forward(rewritten)  # the dynamic int8 forward back in integers
    if request.cam:
        add_gradcam(rewritten, request.cam, *cam_weights)
    if request.pixels:
        image, scale, offset, bgr, layout = request.pixels
        normalized_pixels(rewritten, image, scale, offset, bgr, layout)
    keep = set(originals) | set(request.activations)
    extra = {n for n in wanted if n not in keep}
    if cam_weights and cam_weights[0] not in request.gradients:  # read by the maps only
        extra.add(grad_name(cam_weights[0]))
    outputs = [o for o in rewritten.graph.output if o.name not in extra]
    del rewritten.graph.output[:]
    rewritten.graph.output.extend(outputs)
    return rewritten


def cached(model, request, model_hash=None, folder=None, rebuild=False):
    """The verified rewritten model for ``request`` in the cache (``folder`` or ``$ONNXLENS_CACHE``),
    built and stored on first use or when its entry is damaged (said once on stderr). When the
    cache cannot be written (read-only, full, a file) a temporary folder is used for this process,
    and when that fails too the rewritten ``ModelProto`` itself is returned (one warning).

    >>> cached(model.proto, Request((64, 64), gradients=("image",), output="logits")).name
    'model.onnx'
    """
    model_hash = model_hash or content_hash(model)
    meta = {"model": model_hash, "code": code_version(), "request": asdict(request)}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32]
    store = Store(folder or cache_dir())
    if not rebuild:
        try:
            path = store.get(key, model_hash)
            if path is not None:
                return path
        except DamagedEntry as err:
            log.warning("onnxlens: the cached rewritten model %s is damaged (%s): rebuilding it",
                        store.entries / key, err)
    rewritten = build(model, request)
    graph, weights = externalize(rewritten)
    for candidate in (store, None):
        try:
            return (candidate or _fallback_store()).put(key, meta, graph, weights)
        except OSError as err:
            _warn_unusable(candidate.root if candidate else Path(tempfile.gettempdir()), err)
    return rewritten


def externalize(model):
    """``(graph, weights)``: ``model`` serialized with its large weights (the ones
    :func:`~engine.graph.weightless.without_weights` sets apart) as ONNX external data, each in
    its own file named by its SHA-256, and those weights as ``{sha256 hex: bytes}``.

    Serializing a 200 MB rewritten model cost more than building it; the weights' bytes are
    kept as they are and only the small rest is serialized.

    >>> graph, weights = externalize(model.proto)
    >>> len(graph) < 100_000 < sum(map(len, weights.values()))
    True
    """
    out, large = without_weights(model)
    inputs = [i for i in out.graph.input if i.name not in large]
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    weights = {}
    for tensor in large.values():
        if not tensor.HasField("raw_data"):
            out.graph.initializer.append(tensor)
            continue
        raw = tensor.raw_data  # a copy each time it is read
        digest = hashlib.sha256(raw).hexdigest()
        weights[digest] = raw
        ref = out.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                        data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", blob_name(digest)), ("length", len(raw))):
            ref.external_data.add(key=key, value=str(value))
    return out.SerializeToString(), weights


@lru_cache(maxsize=1)
def _fallback_store():
    """A cache in a temporary folder removed when the process ends."""
    root = tempfile.mkdtemp(prefix="onnxlens-cache-")
    atexit.register(shutil.rmtree, root, True)
    return Store(root)


_warned = set()


def _warn_unusable(root, err):
    if root not in _warned:
        _warned.add(root)
        where = "in a temporary folder" if root != Path(tempfile.gettempdir()) else "in memory"
        log.warning("onnxlens: the cache folder %s is not usable (%s): rewritten models are kept %s for this "
                    "run; set ONNXLENS_CACHE to a writable folder", root, err.strerror or err, where)


def session(model, request, model_hash=None, folder=None, provider="auto", threads=None):
    """An ORT session on the cached rewritten model; an entry that fails to load is rebuilt.

    >>> sess = session(model.proto, Request((64, 64), activations=("/layer3/relu_1/Relu_output_0",)), threads=1)
    >>> [o.name for o in sess.get_outputs()]
    ['logits', '/layer3/relu_1/Relu_output_0']
    """
    source = cached(model, request, model_hash, folder)
    try:
        return create_session(source, provider=provider, threads=threads)
    except ModelLoadError:
        if not isinstance(source, Path):
            raise
        return create_session(cached(model, request, model_hash, folder, rebuild=True), provider=provider,
                              threads=threads)
