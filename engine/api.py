"""``engine.Model``: load any ONNX image model, preprocess images for it, predict, list its layers."""
import difflib
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from engine.data import preprocess as presets
from engine.data.images import as_rgb, image_list, resize
from engine.data.labels import check_labels, parse_labels, probabilities, read_labels
from engine.errors import InputShapeError, LayerError, ModelLoadError, UnsupportedOpError, UsageError
from engine.graph import cone, modules as module_scopes, pixels, shapes
from engine.graph.half import rounding_tensors, widen_float16
from engine.graph.load import load
from engine.graph.coverage import gradient_blockers
from engine.graph.normalize import normalize
from engine.graph.quantized import dequantize_operators
from engine.graph.receptive import receptive_fields
from engine.graph.taps import add_taps
from engine.graph.autodiff import MODES, SEED, grad_name
from engine.memory import check_fits
from engine.runtime import feeds as extras, rewrite
from engine.runtime.batch import batch_plan, in_chunks
from engine.runtime.session import RUN_ERRORS, create_session, run_error


MEMORY_CHECKED_FROM = 64 << 20  # smaller batches are not checked against the free memory (a file read per call)


@dataclass(frozen=True)
class Tensor:
    """A graph input or output: name, numpy dtype name and shape (int, symbolic name or None)."""

    name: str
    dtype: str
    shape: tuple | None


@dataclass(frozen=True)
class Layer:
    """A 4-D float tensor of the graph: its name, the op type producing it, its shape."""

    name: str
    op: str
    shape: tuple


@dataclass(frozen=True)
class Top:
    """One ranked class: its index, its label (None without labels) and its score."""

    index: int
    label: str | None
    score: float


@dataclass(frozen=True)
class Prediction:
    """The top classes of one image; ``image`` is its path, or None for an array."""

    image: str | None
    top: list

    def to_dict(self):
        """JSON-ready: ``{"image": ..., "top": [{"index", "label", "score"}, ...]}``.

        >>> model.predict("cat.png", top=1)[0].to_dict()["top"][0]["label"]
        'hexagon'
        """
        return {"image": self.image, "top": [vars(t) for t in self.top]}


@dataclass(frozen=True)
class RunResult:
    """What :meth:`Model.run` returns: ``outputs`` in the model's output order, ``activations``
    and ``gradients`` keyed by the names requested (``"input"`` for the input gradient)."""

    outputs: list
    activations: dict = field(default_factory=dict)
    gradients: dict = field(default_factory=dict)


def _dtype_name(elem_type):
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError):
        return helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower()


class Model:
    """An ONNX image model on ONNX Runtime.

    ``provider``: "auto" (CUDA when available, else CPU), an ORT provider name or a list.
    ``input_size``: (H, W) to run at; must equal the declared size of static inputs. With
    dynamic spatial dims and no ``input_size``, each call runs at the size of its first image
    and resizes the other images of the call to it. Any batch size works: a static batch is made
    symbolic when running the freed graph at batches 3 and 1 gives the original's outputs, else
    the model runs in blocks of its batch (``-1`` and unnamed dims count as dynamic). ``preprocess``: a preset
    name (imagenet, unit, symmetric, raw) or a mapping with keys ``preset``, ``channel_order``,
    ``mean``, ``std`` (per channel, 0–1 scale) and ``resize`` (squash or shorter-side+center-crop);
    fields given here override the model's metadata (keys ``preprocess``, ``channel_order``,
    ``mean``, ``std``, ``resize``; ``onnxlens tag`` writes them), and the default guess is imagenet
    RGB squash (``preprocessing.sources`` says which applied). ``labels``: a labels file path or a list of names, else the
    metadata's ``labels`` (JSON list). ``threads``: ORT intra-op threads. ``extra_inputs``:
    ``{name: array}`` for the graph inputs besides the image, fed on every run (one row of an
    input whose first dim is a dynamic batch is repeated for every image; see
    :mod:`engine.runtime.feeds`).

    >>> model = Model("model.onnx")
    >>> model.predict(["cat.png"], top=3)[0].top[0].label
    'hexagon'
    """

    def __init__(self, path, provider="auto", input_size=None, preprocess=None, labels=None, threads=None,
                 extra_inputs=None):
        self.path = Path(path)
        # Integer and float16 models in the form they are explained in (their float tensors are
        # the layers, float32 in and out): the first passes of normalize, applied once here.
        deployed = load(self.path)
        self._float16_io = any(vi.type.tensor_type.elem_type == TensorProto.FLOAT16
                               for vi in [*deployed.graph.input, *deployed.graph.output])
        self.proto = widen_float16(dequantize_operators(deployed, inplace=True), inplace=True)
        self.provider = provider
        self.threads = threads
        self.metadata = {prop.key: prop.value for prop in self.proto.metadata_props}
        self.input = shapes.image_input(self.proto, source=self.path)
        if self.input.channels not in (1, 3):
            raise ModelLoadError(
                f"input '{self.input.name}' of '{self.path}' has shape {self.input.shape}: "
                "no channel dim of size 1 or 3 in position 1 or 3; onnxlens feeds RGB or gray images")
        self.input_size = self._choose_size(input_size)
        self.proto, self._chunk, self._freed = self._batch_plan()
        self.input = shapes.image_input(self.proto, source=self.path)  # a freed batch is symbolic
        raw_pixels = ({"preset": "raw"}, f"{self.input.dtype.name} input") if self.input.dtype.kind in "iu" else None
        self.preprocessing = presets.resolve(preprocess, self.metadata, inferred=raw_pixels)
        self.labels = self._choose_labels(labels)
        self.extra_inputs = self._choose_extra_inputs(extra_inputs)
        self._sessions = {}  # rewritten-model sessions per run request
        self._executors = {}  # run's session callables per (activations, gradients, output, mode, size)
        self._default_layers = {}  # output name → default layer
        self._seed_specs = {}  # seeded tensor → (declared dims, dtype)
        self._seen_dims = {}  # (seeded graph output, input shape) → its real dims where the declared ones do not fit

    def __repr__(self):
        return (f"Model('{self.path}', {self.input.layout} {self.input.shape}, input_size={self.input_size}, "
                f"preprocess={self.preprocessing.preset}/{self.preprocessing.channel_order})")

    def _choose_size(self, input_size):
        declared = self.input.size
        if input_size is None:
            return None if None in declared else declared
        try:
            height, width = (int(v) for v in input_size)
        except (TypeError, ValueError) as err:
            raise UsageError(f"input_size is (height, width), got {input_size!r}") from err
        if height < 1 or width < 1:
            raise UsageError(f"input_size must be positive, got {height}×{width}")
        for want, have in zip((height, width), declared):
            if have is not None and have != want:
                raise InputShapeError(
                    f"'{self.path.name}' takes {_shown(declared)} images (static input), not {height}×{width}: "
                    "leave the input size out or pass the declared one"
                )
        return (height, width)

    def _batch_plan(self):
        """(model to run, fixed batch to run in chunks of or None, whether the batch was freed)."""
        plan = batch_plan(self.proto, self.input_size, provider=self.provider, threads=self.threads)
        return plan.proto, plan.chunk, plan.freed

    def _choose_labels(self, labels):
        if labels is None and "labels" in self.metadata:
            labels = parse_labels(self.metadata["labels"], f"the 'labels' metadata of '{self.path.name}'")
        elif isinstance(labels, (str, Path)):
            labels = read_labels(labels)
        elif labels is not None:
            labels = [str(name) for name in labels]
        classes = shapes.value_info_shape(self.proto.graph.output[0])
        if labels is not None and classes and len(classes) == 2 and isinstance(classes[1], int) and classes[1] != len(labels):
            raise UsageError(f"{len(labels)} labels given but '{self.path.name}' has {classes[1]} classes: fix the labels")
        return labels

    @cached_property
    def _extra_specs(self):
        return extras.declared(self.proto, self.input)

    def _choose_extra_inputs(self, given):
        declared = self._extra_specs
        given = dict(given or {})
        unknown = [name for name in given if name not in declared]
        if unknown:
            listed = ", ".join(spec.describe() for spec in declared.values()) or "none"
            raise UsageError(f"'{self.path.name}' has no extra input {', '.join(unknown)} (its inputs besides "
                             f"the image '{self.input.name}': {listed}): name one of those")
        return {name: extras.coerce(declared[name], value) for name, value in given.items()}

    def extra_feeds(self, batch, names=None):
        """``{name: array}`` for the extra inputs of a run over ``batch`` images (only ``names``
        when given); raises UsageError naming the inputs still missing. For a detector with an
        extra input ``scale`` (N×1), ``Model(path, extra_inputs={"scale": 0.5}).extra_feeds(2)["scale"]``
        is a 2×1 array; a model without extra inputs gives none:

        >>> model.extra_feeds(2)
        {}
        """
        declared = self._extra_specs
        wanted = [name for name in declared if names is None or name in names]
        missing = [declared[name].describe() for name in wanted if name not in self.extra_inputs]
        if missing:
            raise UsageError(f"'{self.path.name}' also needs the inputs {', '.join(missing)}: pass "
                             "extra_inputs={name: array}")
        return {name: extras.feed(declared[name], self.extra_inputs[name], batch) for name in wanted}

    # --- graph facts ---------------------------------------------------------------------

    @cached_property
    def _infos(self):
        dims = list(self.input.shape)
        if dims[0] is None:
            dims[0] = "batch"
        if self.input_size is not None:
            h, w = self.input.spatial_axes
            dims[h], dims[w] = self.input_size
        return shapes.infer(self.proto, {self.input.name: dims})

    def _tensor(self, name):
        info = self._infos.get(name)
        return Tensor(name, _dtype_name(info.elem_type), info.shape) if info else Tensor(name, "?", None)

    @cached_property
    def inputs(self):
        """Graph inputs that are not weights, with shapes at the chosen input size."""
        initializers = {init.name for init in self.proto.graph.initializer}
        return [self._tensor(vi.name) for vi in self.proto.graph.input if vi.name not in initializers]

    @cached_property
    def outputs(self):
        """Graph outputs with shapes at the chosen input size."""
        return [self._tensor(vi.name) for vi in self.proto.graph.output]

    @cached_property
    def layers(self):
        """The layer catalog: every 4-D float tensor produced by a node, in graph order."""
        catalog = []
        rounding = rounding_tensors(self.proto.graph)  # float16 models: the copies around each layer
        for node in self.proto.graph.node:
            for name in node.output:
                info = self._infos.get(name)
                if node.op_type != "Constant" and name not in rounding and info and info.is_float and info.shape and len(info.shape) == 4:
                    catalog.append(Layer(name, node.op_type, info.shape))
        return catalog

    @cached_property
    def gradient_input(self):
        """The tensor that input gradients are taken with respect to: the image input, or for
        integer (uint8) pixels the first float tensor computed from them (their Cast), in which
        case ``run`` returns them per input pixel (for a uint8 NHWC export, e.g. ``'/Cast_output_0'``).
        None where the pixels go through other ops than layout ones before their Cast (an
        input-gradient request then raises UnsupportedOpError).

        >>> model.gradient_input
        'image'
        """
        if self.input.dtype.kind not in "iu":
            return self.input.name
        try:
            return pixels.first_float(self.proto, self.input.name)
        except UnsupportedOpError:
            return None

    @cached_property
    def modules(self):
        """``{tensor: module path}`` where the exporter recorded the torch module that produced a
        tensor (dynamo name scopes, TorchScript node names); empty for other files.

        >>> model.modules["/layer3/relu_1/Relu_output_0"]
        'layer3.relu'
        """
        return module_scopes.module_paths(self.proto)

    def layer(self, name):
        """Look a layer up by tensor name, else by module path (``layer4``, ``layer4.1`` or its
        unique ending ``1.relu``): the last 4-D tensor produced inside that module. An unknown or
        ambiguous name raises LayerError with close matches.

        >>> model.layer("layer1.conv1").shape
        ('batch', 32, 16, 16)
        >>> model.layer("layer3").name
        '/layer3/relu_1/Relu_output_0'
        """
        for layer in self.layers:
            if layer.name == name:
                return layer
        module, several = module_scopes.resolve(name, self.modules)
        if module is not None:
            inner = [layer for layer in self.layers if module_scopes.inside(self.modules.get(layer.name, ""), module)]
            if not inner:
                raise LayerError(f"module '{module}' of '{self.path.name}' produces no 4-D tensor: "
                                 "name a layer `onnxlens inspect` lists")
            return inner[-1]
        if several:
            raise LayerError(f"'{name}' ends several module paths of '{self.path.name}' "
                             f"({', '.join(several[:4])}{', ...' if len(several) > 4 else ''}): give the whole path")
        known = [layer.name for layer in self.layers] + module_scopes.modules_of(self.modules)
        raise self._unknown("layer", name, known)

    @property
    def default_layer(self):
        """The layer Grad-CAM-style methods use by default for the first output: see
        :meth:`default_layer_for`.

        >>> model.default_layer
        '/layer3/relu_1/Relu_output_0'
        """
        return self.default_layer_for(self.proto.graph.output[0].name)

    def default_layer_for(self, output):
        """The default layer for explaining tensor ``output`` (see
        :func:`engine.graph.cone.default_layer`): the last image-like 4-D activation before its
        last Conv/Gemm that every branch of ``output`` comes from (a YOLO neck's stride-8 map, a
        classifier's last conv stage). A per-stride detector output (N×A×C beside other strides'
        N×A'×C outputs) gets the layer all its strides share: the map nearest a 1×1 head holds the
        anchor's gradient at one position only, and its Grad-CAM is empty for a low score.

        >>> model.default_layer_for("logits")
        '/layer3/relu_1/Relu_output_0'
        """
        if output not in self._default_layers:
            layer = cone.default_layer(self.proto.graph.node, [(lay.name, lay.shape) for lay in self.layers],
                                       cone.strides_of([(t.name, t.shape) for t in self.outputs], output),
                                       self.input_size or self.input.size, self.input.layout)
            if layer is None:
                raise LayerError(f"'{self.path.name}' has no 4-D activation with spatial size > 1 feeding "
                                 f"'{output}': name a layer")
            self._default_layers[output] = layer
        return self._default_layers[output]

    def layer_details(self):
        """Per layer: name, its torch ``module`` (None where the file records none), op, shape,
        whether gradients reach it (``gradients``: True, or why not), its receptive field ``field``
        and ``stride`` in input pixels (None where it sees the whole image) and whether it is the
        ``default`` layer.

        >>> details = model.layer_details()[-1]
        >>> details["name"], details["op"], details["shape"], details["gradients"], details["field"]
        ('/pool/GlobalAveragePool_output_0', 'GlobalAveragePool', ('batch', 96, 1, 1), True, None)
        """
        names = [layer.name for layer in self.layers]
        clean = normalize(add_taps(self.proto, names), input_size=self.input_size, inplace=True)
        blockers = gradient_blockers(clean, self.proto.graph.output[0].name, names)
        fields = receptive_fields(clean)
        try:
            default = self.default_layer
        except LayerError:  # no consumed spatial layer (e.g. a lone Conv): no default to mark
            default = None
        details = []
        for layer in self.layers:
            f = fields.get(layer.name)
            seen = f is not None and not f.whole_image
            details.append({
                "name": layer.name, "module": self.modules.get(layer.name), "op": layer.op, "shape": layer.shape,
                "gradients": True if blockers[layer.name] is None else f"no: {blockers[layer.name]}",
                "field": list(f.size) if seen else None, "stride": list(f.stride) if seen else None,
                "default": layer.name == default,
            })
        return details

    def summary(self):
        """A JSON-ready description: producer, opset, inputs, outputs, preprocessing (with where each
        setting came from: ``sources``, and the ``guessed`` ones), labels, ops, layers.

        >>> model.summary()["ops"]["Conv"]
        10
        """
        graph = self.proto.graph
        as_dict = lambda tensor: {"name": tensor.name, "dtype": tensor.dtype, "shape": tensor.shape}  # noqa: E731
        return {
            "path": str(self.path),
            "producer": f"{self.proto.producer_name} {self.proto.producer_version}".strip(),
            "ir_version": self.proto.ir_version,
            "opset": {imp.domain or "ai.onnx": imp.version for imp in self.proto.opset_import},
            "inputs": [as_dict(t) for t in self.inputs],
            "outputs": [as_dict(t) for t in self.outputs],
            "image_input": {
                "name": self.input.name,
                "layout": self.input.layout,
                "dtype": self.input.dtype.name,
                "shape": self.input.shape,
                "dynamic": self.input.dynamic,
                "size": self.input_size,
                "gradients": self.gradient_input,
            },
            "preprocess": {**self.preprocessing.to_dict(), "sources": dict(self.preprocessing.sources),
                           "guessed": self.preprocessing.guessed()},
            "labels": self.labels,
            "ops": dict(Counter(node.op_type for node in graph.node).most_common()),
            "layers": [{"name": layer.name, "module": self.modules.get(layer.name), "op": layer.op,
                        "shape": layer.shape} for layer in self.layers],
        }

    # --- running -------------------------------------------------------------------------

    @cached_property
    def session(self):
        """The ONNX Runtime session, created on first use."""
        # A float16 file takes float16 arrays: run its widened form, which takes float32 ones; a freed
        # static batch runs the freed graph.
        source = self.proto if self._float16_io or self._freed else self.path
        return create_session(source, provider=self.provider, threads=self.threads)

    def preprocess(self, images, size=None, layout="HWC"):
        """Turn images into one float batch in the model's layout.

        ``images``: paths, uint8 RGB arrays, torch tensors or PIL images (one or a list; ``layout``
        "CHW" for channels-first arrays and tensors, see :func:`engine.data.images.image_list`).
        Images are brought to the input size by the preprocessing's resize policy (squash, or
        shorter-side+center-crop; INTER_AREA shrinking, INTER_LINEAR enlarging); with dynamic
        spatial dims and no ``input_size``, to ``size`` (H, W) when given, else to the size of the
        first image.

        >>> model.preprocess(["cat.png", np.zeros((96, 96, 3), np.uint8)]).shape
        (2, 3, 64, 64)
        """
        x = self.preprocessing(self.pixels(images, size, layout), channels=self.input.channels,
                               layout=self.input.layout)
        return _as_dtype(x, self.input.dtype)

    def pixels(self, images, size=None, layout="HWC"):
        """The images :meth:`preprocess` normalizes: one uint8 N×H×W×3 RGB batch at the input size
        (arguments as for :meth:`preprocess`).

        >>> model.pixels(["cat.png", np.zeros((96, 96, 3), np.uint8)]).shape
        (2, 64, 64, 3)
        """
        items = image_list(images, layout)
        if not items:
            raise UsageError("no images given: pass image paths or uint8 H×W×3 RGB arrays")
        rgbs = [as_rgb(item) for item in items]
        size = self.input_size or tuple(d or int(s) for d, s in zip(self.input.size, size or rgbs[0].shape[:2]))
        nbytes = len(rgbs) * size[0] * size[1] * self.input.channels * 9  # uint8 resized + float32 twice
        if nbytes > MEMORY_CHECKED_FROM:
            check_fits(nbytes, f"{len(rgbs)} inputs of {size[0]}×{size[1]}", "use a smaller input size, "
                       "input_size=(H, W), or fewer images per batch")
        resized = [resize(rgb, size, self.preprocessing.resize) for rgb in rgbs]
        return resized[0][None] if len(resized) == 1 else np.stack(resized)  # (preprocessing copies)

    def run(self, x, activations=None, gradients=None, seed=None, mode="standard"):
        """Run the model on a preprocessed batch ``x`` in its own layout; returns a RunResult.

        ``activations``: tensor names to return. ``gradients``: tensor names, or ``"input"``,
        whose gradients of Σ seed · output to return (same shape as the tensor or the input).
        ``seed``: an array shaped like the first output (one row per image; a single row is
        repeated), or ``{tensor_name: array}`` to seed another output or any intermediate tensor
        (e.g. one channel of a layer, to maximize it). ``mode``: standard, guided or deconvnet backward.
        The rewritten model is built once per request and cached on disk (``$ONNXLENS_CACHE``).
        Any batch size works: a model exported with a static batch that the graph does not let
        go of runs in blocks of that batch (the last one padded), seeds and gradients included.

        >>> x = model.preprocess(images[:1])
        >>> layer = model.default_layer
        >>> r = model.run(x, activations=[layer], gradients=[layer, "input"], seed=np.eye(8)[[3]])
        >>> r.gradients["input"].shape == x.shape, r.gradients[layer].shape
        (True, (1, 96, 8, 8))
        """
        x, given = self._check_input(x), x
        activations, gradients, output = self._request(activations, gradients, seed, mode)
        seeds, seen = self._seed(seed, output, x) if gradients else (np.zeros((len(x), 0), np.float32), None)
        pixels = "input" in gradients and self.input.dtype.kind in "iu"  # uint8 pixels differentiated as float32
        feed = np.asarray(given, np.float32) if pixels else x
        key = (activations, gradients, output, mode if gradients else "standard", self._size_of(x))
        execute = self._executors.get(key) or self._executors.setdefault(key, self._executor(*key))
        try:
            if self._chunk and len(x) != self._chunk:  # a static batch the graph holds on to
                values = in_chunks(execute, self._chunk, feed, seeds, axes=[0, _batch_axis(seeds, len(x))])
            else:
                values = execute(feed, seeds)
        except RUN_ERRORS as err:  # e.g. a dynamic-size model given a size its graph cannot take
            if not seen:
                raise run_error(err, self.path.name, _shown(x.shape)) from err
            values = None
        n, k = len(self._output_names), len(activations)
        if seen and (values is None or values[self._output_names.index(output)].shape != seeds.shape):
            self._seen_dims.pop(seen, None)  # this input's output is not shaped as the one seen before
            return self.run(given, activations, gradients, seed, mode)  # (data-dependent): measure it
        return RunResult(values[:n], dict(zip(activations, values[n:n + k])), dict(zip(gradients, values[n + k:])))

    def _request(self, activations, gradients, seed, mode):
        """(activations, gradients, seeded tensor or None) of a run request: names checked,
        duplicates dropped."""
        activations = tuple(dict.fromkeys(self._names(activations, "activations")))
        gradients = tuple(dict.fromkeys(self._names(gradients, "gradients")))
        output = None
        if gradients:
            if mode not in MODES:
                raise UsageError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
            output = self._seeded(seed)
        return activations, gradients, output

    def _executor(self, activations, gradients, output, mode, size):
        """``execute(x, seeds)`` → [outputs..., activations..., gradients...] of one batch (extra
        inputs fed for its rows). :meth:`run` keeps one per request (names, output, mode, size),
        so that a repeated call only checks its input and seed and runs the session."""
        image = self.input.name
        extra = self._extra_specs
        if not activations and not gradients:
            session = self.session
            if not extra:
                return lambda x, seeds: session.run(None, {image: x})
            return lambda x, seeds: session.run(None, {image: x, **self.extra_feeds(len(x))})
        wrt = [image if g == "input" else g for g in gradients]
        request = rewrite.Request(size, tuple(activations), tuple(dict.fromkeys(wrt)), output, mode)
        session = self.rewritten_session(request)
        wanted = [*self._output_names, *activations, *(grad_name(t) for t in wrt)]
        fetch = [name for name in dict.fromkeys(wanted) if name != image]  # the input is returned as given
        if fetch == wanted:  # the usual case: the session's outputs are the answer as they come
            if not extra:
                return lambda x, seeds: session.run(fetch, {image: x, SEED: seeds} if gradients else {image: x})

        def execute(x, seeds):
            feeds = {image: x, **self.extra_feeds(len(x)), **({SEED: seeds} if gradients else {})}
            values = dict(zip(fetch, session.run(fetch, feeds)))
            values[image] = x
            return [values[name] for name in wanted]

        return execute

    def _check_input(self, x):
        x = np.asarray(x)
        expected = (None, *self._expected_shape[1:])  # any batch: a fixed one runs in chunks
        if x.ndim != 4 or any(e is not None and e != d for e, d in zip(expected, x.shape)):
            raise InputShapeError(
                f"'{self.path.name}' takes {self.input.layout} arrays of shape {_shown(expected)}, got {_shown(x.shape)}: "
                "make them with Model.preprocess(images)"
            )
        return _as_dtype(x, self.input.dtype)

    def _size_of(self, x):
        return self.input_size or tuple(x.shape[2:4] if self.input.layout == "NCHW" else x.shape[1:3])

    def _names(self, names, what):
        names = [names] if isinstance(names, str) else list(names or ())
        known = self._tensor_names
        for name in names:
            if name not in known and not (what == "gradients" and name == "input"):
                raise self._unknown("tensor", name, known)
        return names

    def _unknown(self, kind, name, known):
        """The LayerError for an unknown ``kind`` (layer or tensor) name, with close matches."""
        close = difflib.get_close_matches(name, sorted(known), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return LayerError(f"no {kind} named '{name}' in '{self.path.name}': {hint}`onnxlens inspect` lists the layers")

    @cached_property
    def _output_names(self):
        return tuple(o.name for o in self.proto.graph.output)

    @cached_property
    def _tensor_names(self):
        graph = self.proto.graph
        return {self.input.name} | {o for node in graph.node if node.op_type != "Constant" for o in node.output if o}

    def _seeded(self, seed):
        """The tensor ``seed`` seeds: the first output, or the one name of a ``{name: array}`` seed."""
        names = self._output_names
        if seed is None:
            raise UsageError("gradients need a seed: an array shaped like the output, e.g. the one-hot rows of "
                             "the classes to explain")
        if not isinstance(seed, dict):
            return names[0]
        if len(seed) != 1:
            raise UsageError(f"seed as a mapping takes one tensor name (e.g. {names[0]}), got {list(seed)}")
        return self._names(list(seed), "seed")[0]

    def _seed(self, seed, output, x):
        """``(seed array, key)`` for tensor ``output``, the array checked against its shape: the
        declared one, or else the real one from a forward pass. A graph output's real dims are kept
        per input shape, so later runs skip that pass; ``key`` (else None) then says that :meth:`run`
        must check them against the output it gets."""
        names = self._output_names
        dims, dtype = self._seed_specs.get(output) or self._seed_specs.setdefault(output, self._seed_spec(output))
        seed = np.asarray(seed[output] if isinstance(seed, dict) else seed, dtype=dtype)
        batch = len(x)
        fitted = _fitted(seed, dims, batch)
        if fitted is not None:
            return np.ascontiguousarray(fitted), None
        key = (output, x.shape) if output in names else None
        seen = self._seen_dims.get(key)
        fitted = _shaped(seed, seen, batch) if seen else None
        if fitted is not None:
            return np.ascontiguousarray(fitted), key
        real = self.run(x).outputs[names.index(output)] if output in names else \
            self.run(x, activations=[output]).activations[output]
        if key:
            self._seen_dims[key] = real.shape
        fitted = _shaped(seed, real.shape, batch)
        if fitted is None:
            raise InputShapeError(f"seed of shape {_shown(seed.shape)} does not fit output '{output}' "
                                  f"({_shown(real.shape)}) for a batch of {batch}: give one row per image")
        return np.ascontiguousarray(fitted), None

    def _seed_spec(self, output):
        """(declared dims or None, numpy dtype) of a seed for tensor ``output``."""
        info = self._infos.get(output)
        dims = info.shape if info and info.shape else None
        return dims, helper.tensor_dtype_to_np_dtype(info.elem_type) if info and info.is_float else np.float32

    @cached_property
    def _content_hash(self):
        return rewrite.content_hash(self.proto)

    def rewritten_session(self, request):
        """The ORT session on this model rewritten for an :class:`engine.runtime.rewrite.Request`,
        built (or read from the cache) once per request.

        >>> request = rewrite.Request(model.input_size, activations=(model.default_layer,))
        >>> [o.name for o in model.rewritten_session(request).get_outputs()][1] == model.default_layer
        True
        """
        if request not in self._sessions:
            self._sessions[request] = rewrite.session(self.proto, request, self._content_hash,
                                                provider=self.provider, threads=self.threads)
        return self._sessions[request]

    @cached_property
    def _expected_shape(self):
        n, c, (h, w) = self.input.batch, self.input.channels, self.input_size or self.input.size
        return (n, c, h, w) if self.input.layout == "NCHW" else (n, h, w, c)

    def predict(self, images, top=5, batch_size=32, layout="HWC"):
        """Rank the classes of each image; returns one Prediction per image, in order.

        ``images``: a path, a uint8 H×W×3 RGB array, an N×H×W×3 array, or a list of paths and
        arrays of any sizes; torch tensors and PIL images too (``layout`` as in :meth:`preprocess`).
        Scores are the model's first output when its rows are already
        probability vectors (non-negative, summing to 1), else the softmax of that output.

        >>> [(t.label, round(t.score, 2)) for t in model.predict("cat.png", top=2)[0].top]
        [('hexagon', 0.92), ('square', 0.02)]
        """
        if int(top) < 1:
            raise UsageError(f"top must be at least 1, got {top}")
        items = image_list(images, layout)
        step = max(1, int(batch_size))
        predictions = []
        for start in range(0, len(items), step):
            chunk = items[start:start + step]
            scores = probabilities(self.run(self.preprocess(chunk)).outputs[0])
            check_labels(self.labels, scores.shape[1])
            for item, row in zip(chunk, scores):
                order = np.argsort(-row, kind="stable")[: int(top)]
                ranked = [Top(int(i), self.labels[i] if self.labels else None, float(row[i])) for i in order]
                predictions.append(Prediction(str(item) if isinstance(item, (str, Path)) else None, ranked))
        return predictions


def _batch_axis(seeds, batch):
    """The axis of ``seeds`` with one row per image: 0, else the first of that length (T×N×C)."""
    return 0 if seeds.shape[0] == batch else next((a for a, d in enumerate(seeds.shape) if d == batch), 0)


def _as_dtype(x, dtype):
    """``x`` as ``dtype``; float values bound for integer pixels are rounded and clipped to its range.

    >>> _as_dtype(np.array([-3.0, 7.6, 300.0]), np.dtype("uint8")).tolist()
    [0, 8, 255]
    """
    if x.dtype == dtype:
        return x
    if dtype.kind in "iu" and x.dtype.kind == "f":
        limits = np.iinfo(dtype)
        return np.clip(np.rint(x), limits.min, limits.max).astype(dtype)
    return x.astype(dtype)


def _shown(dims):
    """A shape as ``3×?×64``: "?" for unknown or symbolic dims."""
    return "×".join(str(d) if isinstance(d, (int, np.integer)) else "?" for d in dims)


def _shaped(seed, dims, batch):
    """``seed`` when shaped as the real ``dims``, broadcast over a leading batch when one rank short; else None."""
    if seed.ndim == len(dims) - 1 and dims[0] == batch:
        seed = np.broadcast_to(seed, (batch, *seed.shape))
    return seed if seed.shape == tuple(dims) else None


def _fitted(seed, dims, batch):
    """``seed`` when it fits declared ``dims`` (the batch on the axis of the symbolic "batch" dim,
    else axis 0), broadcast over the batch when one rank short (one row for every image); else None."""
    if dims is None:
        return None
    axis = dims.index("batch") if "batch" in dims else 0
    if seed.ndim == len(dims) - 1:
        seed = np.broadcast_to(np.expand_dims(seed, axis), (*seed.shape[:axis], batch, *seed.shape[axis:]))
    fits = seed.ndim == len(dims) and seed.shape[axis] == batch and all(
        not isinstance(d, int) or d == s for i, (d, s) in enumerate(zip(dims, seed.shape)) if i != axis)
    return seed if fits else None
