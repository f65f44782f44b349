"""ONNX Runtime sessions: execution providers and threads.

``provider="auto"`` prefers CUDAExecutionProvider when the installed onnxruntime offers it, else
CPUExecutionProvider; any ORT provider name, or a list of them in order of preference, is accepted.
CPU is always appended as the fallback for ops a provider lacks.
"""
import re
from pathlib import Path

import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from engine.errors import ModelLoadError, ModelRunError, RunTimeout, UsageError
from engine.runtime import timeout

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
LOAD_ERRORS = (ort_state.Fail, ort_state.InvalidGraph, ort_state.InvalidProtobuf, ort_state.InvalidArgument,
               ort_state.NotImplemented, ort_state.NoSuchFile)
RUN_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.RuntimeException)
RUN_TIMEOUT = None  # seconds one session.run may take (None: no limit); `onnxlens --timeout S` sets it
# "... running Reshape node. Name:'x' Status Message: /src/file.cc:91 Type::Method(args) check was false. Reason"
_FAILED_NODE = re.compile(r"running (\S+) node\. Name:'([^']*)' Status Message: (?:\S+:\d+ [^()]*\([^()]*\) )?"
                          r"(?:[^.]* was false\. )?(.*)")


def providers(provider="auto"):
    """Resolve ``provider`` to the list of ORT provider names a session is created with.

    >>> providers("CPUExecutionProvider")
    ['CPUExecutionProvider']
    """
    available = ort.get_available_providers()
    if provider == "auto":
        wanted = [CUDA] if CUDA in available else []
    else:
        wanted = [provider] if isinstance(provider, str) else list(provider)
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise UsageError(
            f"execution provider {', '.join(map(str, unknown))} is not available here: "
            f"use 'auto' or one of {', '.join(available)}"
        )
    return [name for name in wanted if name != CPU] + [CPU]


class Session(ort.InferenceSession):
    """An InferenceSession whose runs stop after :data:`RUN_TIMEOUT` seconds with a
    :class:`RunTimeout` (``engine.runtime.timeout``), e.g. a Loop whose trip count is computed."""

    def run(self, output_names, input_feed, run_options=None):
        limit = RUN_TIMEOUT
        if not limit or run_options is not None:
            return super().run(output_names, input_feed, run_options)
        options = ort.RunOptions()
        options.log_severity_level = 4
        ticket = timeout.watch(options, limit)
        try:
            return super().run(output_names, input_feed, options)
        except RUN_ERRORS:
            if options.terminate:
                raise RunTimeout(f"a run of the model took more than {limit:g} s and was stopped: raise the limit "
                                 "with --timeout SECONDS (0: none)") from None
            raise
        finally:
            timeout.release(ticket)


def create_session(model, provider="auto", threads=None):
    """Create an ``onnxruntime.InferenceSession`` from a model path or ``ModelProto``.

    ``threads`` sets the intra-op thread count (None: ORT's default, one per core). ORT's own log
    is silenced: its errors come back as exceptions, which onnxlens turns into one-line messages
    (:func:`run_error`), so a failing run prints that line only.

    >>> create_session("model.onnx", provider="auto", threads=1).get_inputs()[0].name
    'image'
    """
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if threads is not None:
        if int(threads) < 1:
            raise UsageError(f"threads must be a positive integer, got {threads}: pass 1 or more")
        options.intra_op_num_threads = int(threads)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(Path(model))
    try:
        return Session(source, sess_options=options, providers=providers(provider))
    except LOAD_ERRORS as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"ONNX Runtime cannot load the model: {first_line}") from err


def run_error(err, model_name, shape, hint="try another input size, input_size=(H, W), e.g. a multiple of 32"):
    """A ModelRunError for an ORT failure ``err`` while running ``model_name`` on a batch of
    ``shape`` (a string such as "1×3×8×8"): one line naming the failing node, its op and ORT's reason.

    >>> err = RuntimeError("running Reshape node. Name:'r' Status Message: bad shape")
    >>> print(run_error(err, "m.onnx", "1×3×12×12", hint="try 64×64"))
    ONNX Runtime cannot run 'm.onnx' on a 1×3×12×12 batch: node 'r' (Reshape) failed: bad shape: try 64×64
    """
    text = " ".join(str(err).split()) or type(err).__name__
    found = _FAILED_NODE.search(text)
    if found:
        op, node, reason = found.groups()
        where = f"node '{node}' ({op})" if node else f"an unnamed {op} node"
        text = f"{where} failed: {reason}"
    return ModelRunError(f"ONNX Runtime cannot run '{model_name}' on a {shape} batch: {text[:300]}: {hint}")
