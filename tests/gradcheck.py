"""Finite-difference checks of rewritten models through ONNX Runtime (shared by the autodiff tests).

``check(make)`` builds the model with ``make(dtype)`` in float64 and falls back to float32 when
ONNX Runtime has no float64 kernel for some op; it compares the directional derivative from the
rewritten model, Σ_t <grad_t, v_t>, with the central difference (f(x + h v) − f(x − h v)) / 2h of
f = Σ seed · output, along random directions v.
"""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from engine.graph.autodiff import SEED, differentiate, grad_name

# dtype → (step h, relative tolerance): truncation error ~h², rounding error ~eps/h.
SETTINGS = {np.float64: (1e-5, 1e-6), np.float32: (3e-3, 3e-3)}


def session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def node_model(op_type, inputs, dtype, opset=17, outputs=1, **attributes):
    """A one-node model. ``inputs`` items: a shape tuple (a graph input, "N" = symbolic batch),
    a numpy array (an initializer, float arrays cast to ``dtype``), or "" (omitted optional)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph_inputs, inits, names = [], [], []
    for i, spec in enumerate(inputs):
        if isinstance(spec, str):
            names.append(spec)
            continue
        name = f"in{i}"
        names.append(name)
        if isinstance(spec, (np.ndarray, np.generic)):
            arr = np.asarray(spec.astype(dtype) if spec.dtype.kind == "f" else spec)
            inits.append(numpy_helper.from_array(arr, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, elem, list(spec)))
    out_names = [f"out{i}" for i in range(outputs)]
    node = helper.make_node(op_type, names, out_names, **attributes)
    graph = helper.make_graph([node], op_type.lower(), graph_inputs,
                              [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in out_names],
                              initializer=inits)
    return finish(graph, opset)


def finish(graph, opset=17):
    """Wrap ``graph`` in a model at ``opset`` and infer shapes (as normalization leaves it)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def random_inputs(model, rng, batch=2, scale=1.0):
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits or vi.name == SEED:
            continue
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in t.shape.dim]
        feeds[vi.name] = (rng.standard_normal(shape) * scale).astype(helper.tensor_dtype_to_np_dtype(t.elem_type))
    return feeds


def check(make, wrt=None, output=None, batch=2, directions=3, seed=0, feeds=None, tol=None,
          dtypes=(np.float64, np.float32), runner=None):
    """Check the gradients of ``make(dtype)`` against central differences; returns the relative
    errors. ``feeds(rng, dtype)`` may supply inputs (e.g. away from kinks). ``runner(model)``
    runs both models (default: an ONNX Runtime session; ``ReferenceEvaluator`` for float64 ops
    ONNX Runtime lacks, such as LSTM)."""
    for dtype in dtypes:
        model = make(dtype)
        try:
            return _check(model, dtype, wrt, output, batch, directions, seed, feeds, tol, runner or session)
        except ort.capi.onnxruntime_pybind11_state.NotImplemented:
            if dtype is np.float32:
                raise
    raise AssertionError("unreachable")


def _check(model, dtype, wrt, output, batch, directions, seed, feeds, tol, runner):
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    output = output or model.graph.output[0].name
    wrt = wrt or [vi.name for vi in model.graph.input if vi.name not in inits]
    rewritten = differentiate(model, output, wrt)
    onnx.checker.check_model(rewritten, full_check=True)
    forward, backward = runner(model), runner(rewritten)
    x = feeds(rng, dtype) if feeds else random_inputs(model, rng, batch)
    y = forward.run([output], x)[0]
    s = rng.standard_normal(y.shape).astype(y.dtype)
    got = dict(zip(wrt, backward.run([grad_name(t) for t in wrt], {**x, SEED: s})))
    for t in wrt:
        assert got[t].shape == x[t].shape, (t, got[t].shape, x[t].shape)
    h, rtol = SETTINGS[dtype]
    rtol = tol or rtol
    errors = []
    for _ in range(directions):
        v = {t: rng.standard_normal(x[t].shape) for t in wrt}
        analytic = sum(float(np.sum(got[t].astype(np.float64) * v[t])) for t in wrt)

        def f(sign):
            moved = {**x, **{t: (x[t] + sign * h * v[t]).astype(dtype) for t in wrt}}
            return float(np.sum(s.astype(np.float64) * forward.run([output], moved)[0]))

        numeric = (f(1) - f(-1)) / (2 * h)
        err = abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1e-12)
        errors.append(err)
        assert err < rtol, f"{dtype.__name__}: analytic {analytic} vs numeric {numeric} (rel err {err:.2e})"
    return errors


def with_delta(model, tensor):
    """``model`` where every reader of ``tensor`` reads tensor + delta, delta a new input (for
    central differences at a tap)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        node.input[:] = [tensor + "_moved" if i == tensor else i for i in node.input]
    position = next(k for k, n in enumerate(out.graph.node) if tensor in n.output) + 1
    out.graph.node.insert(position, helper.make_node("Add", [tensor, "delta"], [tensor + "_moved"]))
    out.graph.input.append(helper.make_tensor_value_info("delta", TensorProto.DOUBLE, None))
    return out


def float64_slope(model, output, feeds, seed, moved, v, new_ops=None, h=1e-6):
    """Central difference of Σ seed · output along ``v`` at input ``moved``, computed in float64
    by onnx's reference evaluator (ORT has no float64 Conv; float32 differences through a net
    with thousands of ReLU/max kinks are too noisy)."""
    evaluator = ReferenceEvaluator(model, new_ops=new_ops)

    def f(sign):
        return float(np.sum(seed * evaluator.run([output], {**feeds, moved: feeds[moved] + sign * h * v})[0]))

    return (f(1) - f(-1)) / (2 * h)


def assert_slopes_match(got, reference, output, x, seed, tap, rng, rounds, rtol, new_ops=None, h=1e-6):
    """``got`` (the ORT gradient at ``tap``, or at "image") agrees with float64 central differences
    (step ``h``) of ``reference`` along ``rounds`` random directions, to ``rtol`` of each slope."""
    feeds, moved = {"image": x}, "image"
    if tap != "image":
        reference, feeds, moved = with_delta(reference, tap), {"image": x, "delta": np.zeros(got.shape)}, "delta"
    for _ in range(rounds):
        v = rng.standard_normal(got.shape)
        numeric = float64_slope(reference, output, feeds, seed, moved, v, new_ops=new_ops, h=h)
        assert abs(np.sum(got * v) - numeric) < rtol * abs(numeric), (np.sum(got * v), numeric)


def float64_copy(model):
    """``model`` computing in float64: float32 weights and Constants, graph inputs/outputs and Cast
    targets become double (a reference for :func:`float64_slope` on models that mix in float32 constants)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for vi in (*graph.input, *graph.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
            elif node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float64), attr.t.name))
    del graph.value_info[:]
    return out
