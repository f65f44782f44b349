"""Rewritten models (taps, gradients) built once and cached on disk.

A request names the tensors to expose and to differentiate; :func:`build` turns a model into
the rewritten one (add_taps → normalize → differentiate) and :func:`cached` stores it under
``$ONNXLENS_CACHE`` (default ``~/.cache/onnxlens``), keyed by the model's content hash, the
request and a hash of the graph code, so a rule change never serves a stale file. Each cached
model is two files: ``<key>.onnx`` and its large weights in ``<key>.onnx.data``.
"""
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import onnx

from engine.data.files import atomic_path
from engine.errors import ModelLoadError
from engine.graph.autodiff import differentiate
from engine.graph.normalize import normalize, without_weights
from engine.graph.pixels import float_image
from engine.graph.shapes import INTEGER_PIXELS
from engine.graph.taps import add_taps
from engine.runtime.session import create_session


@dataclass(frozen=True)
class Request:
    """What to expose: ``activations`` and ``gradients`` (tensor names, the graph input's name
    for the input gradient) of Σ seed · ``output`` in backward ``mode``, at ``input_size`` (H, W)."""

    input_size: tuple | None
    activations: tuple = ()
    gradients: tuple = ()
    output: str | None = None
    mode: str = "standard"


def cache_dir():
    """The cache folder: ``$ONNXLENS_CACHE`` or ``~/.cache/onnxlens``.

    >>> cache_dir()  # with ONNXLENS_CACHE unset  # doctest: +SKIP
    PosixPath('/root/.cache/onnxlens')
    """
    return Path(os.environ.get("ONNXLENS_CACHE") or Path.home() / ".cache" / "onnxlens")


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

    >>> len(content_hash(model))
    64
    """
    skeleton, weights = without_weights(model)
    digest = hashlib.sha256(skeleton.SerializeToString())
    for tensor in weights.values():  # name, type and shape are in the skeleton
        digest.update(tensor.raw_data if tensor.HasField("raw_data") else tensor.SerializeToString())
    return digest.hexdigest()


def build(model, request):
    """The rewritten model for ``request`` (not cached).

    Requested tensors are tapped before normalization so their names survive it; taps only
    needed for gradients are dropped from the outputs again. An integer (uint8) input whose
    gradient is requested becomes a float32 input (:func:`engine.graph.pixels.float_image`).

    >>> tapped = build(model, Request((64, 64), activations=("layer4",)))
    """
    originals = [o.name for o in model.graph.output]
    output = request.output or originals[0]
    wanted = list(dict.fromkeys([*request.activations, *request.gradients, output]))
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    tapped = add_taps(model, [n for n in wanted if n not in inputs])  # the pipeline's one private copy
    for name in request.gradients:
        if inputs.get(name) in INTEGER_PIXELS:  # uint8 pixels: differentiated as float32 (fed as such)
            float_image(tapped, name, inplace=True)
    rewritten = normalize(tapped, input_size=request.input_size, inplace=True)
    if request.gradients:
        rewritten = differentiate(rewritten, output, list(request.gradients), mode=request.mode)
    keep = set(originals) | set(request.activations)
    extra = {n for n in wanted if n not in keep}
    outputs = [o for o in rewritten.graph.output if o.name not in extra]
    del rewritten.graph.output[:]
    rewritten.graph.output.extend(outputs)
    return rewritten


def cached(model, request, model_hash=None, folder=None):
    """Path of the rewritten model for ``request``, built and written atomically on first use.

    >>> path = cached(model, Request((64, 64), gradients=("image",), output="logits"))
    """
    model_hash = model_hash or content_hash(model)
    key = json.dumps({"model": model_hash, "code": code_version(), "request": asdict(request)}, sort_keys=True)
    path = Path(folder or cache_dir()) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.onnx"
    if not path.is_file():
        write(build(model, request), path)
    return path


def write(model, path, align=4096):
    """Write ``model`` to ``path`` atomically, its large weights (the ones
    :func:`~engine.graph.normalize.without_weights` sets apart) as ONNX external data in
    ``<path>.data`` beside it, written first, at page-aligned offsets.

    Serializing a 200 MB rewritten model cost more than building it; the weights' bytes are
    written as they are and only the small rest is serialized.

    >>> write(rewritten, "cache/model.onnx")  # also writes cache/model.onnx.data
    """
    path = Path(path)
    data = path.with_name(path.name + ".data")
    out, weights = without_weights(model)
    inputs = [i for i in out.graph.input if i.name not in weights]
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    with atomic_path(data) as tmp, open(tmp, "wb") as file:
        for tensor in weights.values():
            if not tensor.HasField("raw_data"):
                out.graph.initializer.append(tensor)
                continue
            raw = tensor.raw_data  # a copy each time it is read
            file.seek(-file.tell() % align, os.SEEK_CUR)
            ref = out.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                            data_location=onnx.TensorProto.EXTERNAL)
            for key, value in (("location", data.name), ("offset", file.tell()), ("length", len(raw))):
                ref.external_data.add(key=key, value=str(value))
            file.write(raw)
    with atomic_path(path) as tmp:
        tmp.write_bytes(out.SerializeToString())


def session(model, request, model_hash=None, folder=None, provider="auto", threads=None):
    """An ORT session on the cached rewritten model; a cached file that fails to load is rebuilt.

    >>> sess = session(model, Request((64, 64), activations=("layer4",)), threads=1)
    """
    path = cached(model, request, model_hash, folder)
    try:
        return create_session(path, provider=provider, threads=threads)
    except ModelLoadError:
        write(build(model, request), path)
        return create_session(path, provider=provider, threads=threads)
