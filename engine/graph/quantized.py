"""Integer int8 models (QOperator and dynamic) rewritten into their QDQ form.

``onnxruntime.quantization`` writes two kinds of integer models besides QDQ:

* **QOperator** (``QuantFormat.QOperator``): QLinearConv, QLinearMatMul and, in the
  ``com.microsoft`` domain, QLinearAdd/Mul, QLinearGlobalAveragePool, QLinearAveragePool,
  QLinearConcat, QLinearSigmoid, QLinearLeakyRelu, QLinearSoftmax, QGemm; shape ops (MaxPool,
  Flatten, Reshape, Resize, ...) then run directly on the uint8/int8 tensors between them;
* **dynamic** (``quantize_dynamic``): DynamicQuantizeLinear → ConvInteger / MatMulInteger →
  Cast → Mul(scales), with integer weights; com.microsoft DynamicQuantizeLSTM for an LSTM.

:func:`dequantize_operators` rewrites each such node into DequantizeLinear → the float op →
QuantizeLinear, so the existing QDQ rules differentiate it: gradients pass straight through
every quantization (:func:`engine.graph.rules.elementwise.quantize`) and weights stay
constants. Why a rewrite rather than a rule per integer op: one float op per integer op reuses
the tested float rules (Conv, Gemm, pools, ...), and the rewritten model still requantizes
every tensor with the model's own scales, so its forward values are those of the deployed
integer arithmetic up to float32 rounding of the accumulators (a rounding tie can move one
quantization step; see tests/test_quantized_models.py for the measured difference).

Details: integer weights and int32 biases are read through DequantizeLinear (ONNX Runtime then
fuses the float op back into the integer one, with the model's own weights: given float weights,
it quantizes them again with scales of its own); the int32 bias has scale ``x_scale · w_scale``.
DynamicQuantizeLinear stays (it computes the scale and zero point at run time) and its
quantized output is recomputed by a QuantizeLinear with those, which is the same formula.
ConvInteger/MatMulInteger compute in integer units, so the float op reads the dequantized input
and divides by its scale: ``Conv(DQ(x_q), W − w_zp) / x_scale``. A node whose weights are not
constant, whose scales cannot be traced, or whose variant is not listed, stays as it is (then
:func:`engine.graph.coverage.gradient_blockers` names it). Example:
``dequantize_operators(onnx.load("resnet18-int8.onnx"))``.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from engine.graph.editing import DEFAULT_DOMAINS, prune, subgraph_reads, unique_name
from engine.graph.nodes import attrs
from engine.graph.shapes import constant_tensors

_MS = "com.microsoft"
# Ops that move or select elements; run on a quantized tensor they keep its scale and zero point.
_KEEP_SCALE = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "MaxPool", "GlobalMaxPool",
               "Identity", "Slice", "Split", "Resize", "DepthToSpace", "SpaceToDepth", "Expand", "Tile", "Pad"}


def dequantize_operators(model: onnx.ModelProto, inplace=False) -> onnx.ModelProto:
    """Rewrite QOperator and dynamic int8 nodes of ``model`` into DequantizeLinear → float op →
    QuantizeLinear (see the module docstring); a model without them is returned as it is: a
    QLinearConv becomes DequantizeLinear (of x) → Conv (dequantized constant weight) →
    QuantizeLinear → DequantizeLinear.

    >>> dequantize_operators(model.proto).graph.node == model.proto.graph.node
    True
    """
    out = model if inplace else copy.deepcopy(model)
    graph = out.graph
    if not any(_rewriter_of(n) for n in graph.node):
        return out
    rewriter = _Rewriter(out)
    nodes = []
    for node in graph.node:
        nodes.extend(rewriter.rewrite(node))
    if not rewriter.changed:
        return out
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(rewriter.initializers)
    del graph.value_info[:]  # integer outputs became float: shapes and types are inferred again
    used = {n.domain for n in graph.node}
    kept = [o for o in out.opset_import if o.domain in DEFAULT_DOMAINS or o.domain in used]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    return out


def dequantized_constants(graph, constants):
    """name → TensorProto holding the float value of each DequantizeLinear output computed from
    constants only (quantized weights and biases), so that differentiation rules can use them as
    the constants they are (e.g. the Conv rule's constant-weight backward). ``constants``: the
    graph's constant tensors (:func:`engine.graph.shapes.constant_tensors`).

    >>> q, s = onnx.numpy_helper.from_array(np.int8([2, -4]), "q"), onnx.numpy_helper.from_array(np.float32(0.5), "s")
    >>> g = onnx.helper.make_graph([onnx.helper.make_node("DequantizeLinear", ["q", "s"], ["w"])], "g", [], [])
    >>> onnx.numpy_helper.to_array(dequantized_constants(g, {"q": q, "s": s})["w"])
    array([ 1., -2.], dtype=float32)
    """
    out = {}
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type != "DequantizeLinear" or node.domain not in DEFAULT_DOMAINS or \
                not all(i in constants for i in inputs):
            continue
        a = attrs(node)
        q, scale, *zp = (numpy_helper.to_array(constants[i]) for i in inputs)
        if "block_size" in a or q.dtype.kind not in "iu":
            continue
        zp = zp[0] if zp else np.zeros((), q.dtype)
        if scale.ndim == 1 and q.ndim > 1:
            shape = [-1 if i == a.get("axis", 1) % q.ndim else 1 for i in range(q.ndim)]
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        value = (q.astype(np.int32) - zp.astype(np.int32)).astype(np.float32) * scale
        out[node.output[0]] = numpy_helper.from_array(value.astype(scale.dtype), node.output[0])
    return out


def _rewriter_of(node):
    return _REWRITES.get(node.op_type) if node.domain in (*DEFAULT_DOMAINS, _MS) else None


class _Rewriter:
    """Rewrites nodes one at a time, in graph order, tracking each quantized tensor's scale."""

    def __init__(self, model):
        graph = model.graph
        self.constants = constant_tensors(graph)
        self.used = set(self.constants) | {n.name for n in graph.node}
        self.used.update(t for n in graph.node for t in [*n.input, *n.output])
        self.used.update(vi.name for vi in graph.input)
        self.qparams = {}  # quantized tensor → (scale, zero point) names
        self.integer_units = set()  # float outputs of rewritten ConvInteger/MatMulInteger (int32 before)
        self.dequantized = {}
        self.initializers = []
        self.nodes = []
        self.changed = False

    # -- emission ---------------------------------------------------------------------------
    def fresh(self, hint):
        name, k = hint, 0
        while name in self.used:
            k += 1
            name = f"{hint}_{k}"
        self.used.add(name)
        return name

    def emit(self, op_type, inputs, output=None, hint="q", **attributes):
        output = output or self.fresh(hint)
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=self.fresh(output + "_node"),
                                           **attributes))
        return output

    def const(self, array, hint):
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        self.constants[name] = self.initializers[-1]
        return name

    def value(self, name):
        return numpy_helper.to_array(self.constants[name]) if name in self.constants else None

    def dq(self, q, scale, zero_point):
        """Float value of quantized activation ``q`` (one DequantizeLinear per tensor)."""
        key = (q, scale, zero_point)
        if key not in self.dequantized:
            base = q[:-len("_quantized")] if q.endswith("_quantized") else q
            self.dequantized[key] = self.emit("DequantizeLinear", [q, scale, zero_point] if zero_point else [q, scale],
                                              hint=base + "_dequantized")
        return self.dequantized[key]

    def quantize(self, x, scale, zero_point, output):
        """QuantizeLinear(x) into the original integer tensor ``output``; records its scale."""
        self.emit("QuantizeLinear", [x, scale, zero_point] if zero_point else [x, scale], output)
        self.qparams[output] = (scale, zero_point)

    def float_name(self, output):
        """Name of the float tensor computed before requantizing ``output``: the quantizer's
        original float name when ``output`` ends in ``_quantized`` and that name is free."""
        base = output[:-len("_quantized")] if output.endswith("_quantized") else ""
        return self.fresh(base if base and base not in self.used else output + "_float")

    def weight(self, q, scale, zero_point, axis):
        """Float value of weight ``q``: a DequantizeLinear (per ``axis`` when its scale is 1-D), so
        that ONNX Runtime fuses DequantizeLinear → op → QuantizeLinear back into the integer op
        with the model's own integer weights (with float weights it requantizes them itself)."""
        s = self.value(scale)
        per_axis = {"axis": axis} if s is not None and s.size > 1 else {}
        return self.emit("DequantizeLinear", [q, scale, zero_point] if zero_point else [q, scale],
                         hint=q + "_dequantized", **per_axis)

    def integer_weight(self, q, zero_point, axis):
        """Float constant ``q − zero_point`` (integer units); None when ``q`` is not a constant.
        ``axis``: the axis a 1-D zero point runs along."""
        value = self.value(q)
        zp = self.value(zero_point) if zero_point else np.zeros((), np.int32)
        if value is None or zp is None:
            return None
        if zp.size > 1:
            zp = zp.reshape([-1 if i == axis % value.ndim else 1 for i in range(value.ndim)])
        return self.const((value.astype(np.int32) - zp.astype(np.int32)).astype(np.float32), q + "_float")

    # -- the pass ---------------------------------------------------------------------------
    def rewrite(self, node):
        self.nodes = []
        fn = _rewriter_of(node)
        if fn is None and node.domain in DEFAULT_DOMAINS and node.op_type in _KEEP_SCALE:
            fn = _keep_scale
        if node.op_type == "Add" and node.domain in DEFAULT_DOMAINS and self.integer_units.intersection(node.input):
            fn = _integer_bias
        if fn is not None and fn(self, node) is not False:
            self.changed = True
            return self.nodes
        if node.op_type == "QuantizeLinear" and node.domain in DEFAULT_DOMAINS:
            self.qparams[node.output[0]] = (node.input[1], node.input[2] if len(node.input) > 2 else "")
        return [node]


def _optional(node, index):
    return node.input[index] if len(node.input) > index and node.input[index] else ""


def _keep_scale(rw, node):
    """A shape op on a quantized tensor: DequantizeLinear → the op in float → QuantizeLinear."""
    x = node.input[0]
    if x not in rw.qparams:
        return False
    scale, zp = rw.qparams[x]
    rest = list(node.input[1:])
    if node.op_type == "Pad" and attrs(node).get("mode", "constant") == "constant":
        # The pad value is an integer (0 when absent): in float it is (value − zero point) · scale.
        s, z = rw.value(scale), rw.value(zp) if zp else np.zeros((), np.uint8)
        value = rw.value(rest[1]) if len(rest) > 1 and rest[1] else np.zeros((), np.int32)
        if s is None or z is None or value is None:
            return False
        rest += [""] * (2 - len(rest))
        rest[1] = rw.const(((value.astype(np.int32) - z.astype(np.int32)) * s).astype(np.float32).reshape(()), x + "_pad")
    outputs = [rw.float_name(o) for o in node.output]
    rw.nodes.append(helper.make_node(node.op_type, [rw.dq(x, scale, zp), *rest], outputs,
                                     name=node.name, **attrs(node)))
    for f, o in zip(outputs, node.output):
        rw.quantize(f, scale, zp, o)


def _requantized(rw, node, op_type, inputs, scale, zero_point, **attributes):
    """Emit ``op_type`` in float and requantize its result into the node's output."""
    out = node.output[0]
    result = rw.emit(op_type, inputs, rw.float_name(out), **attributes)
    rw.quantize(result, scale, zero_point, out)


def _qlinear_conv(rw, node):
    x, xs, xz, w, ws, wz, ys, yz = node.input[:8]
    bias = _optional(node, 8)
    sx, sw = rw.value(xs), rw.value(ws)
    if bias and (sx is None or sw is None):
        return False  # checked before emitting anything: a refused node stays whole
    inputs = [rw.dq(x, xs, xz), rw.weight(w, ws, wz, axis=0)]
    if bias:  # int32 with scale x_scale · w_scale, zero point 0
        inputs.append(rw.emit("DequantizeLinear", [bias, rw.const((sx * sw).astype(np.float32), bias + "_scale")],
                              hint=bias + "_dequantized", **({"axis": 0} if sw.size > 1 else {})))
    _requantized(rw, node, "Conv", inputs, ys, yz, **attrs(node))


def _qlinear_matmul(rw, node):
    a, as_, az, b, bs, bz, ys, yz = node.input[:8]
    weight = rw.weight(b, bs, bz, axis=-1)
    _requantized(rw, node, "MatMul", [rw.dq(a, as_, az), weight], ys, yz)


def _qgemm(rw, node):
    a, as_, az, b, bs, bz = node.input[:6]
    a_ = attrs(node)
    c = _optional(node, 6)
    sa, sb = rw.value(as_), rw.value(bs)
    if c and (sa is None or sb is None):
        return False
    inputs = [rw.dq(a, as_, az), rw.weight(b, bs, bz, axis=0 if a_.get("transB", 0) else 1)]
    if c:  # int32 with scale alpha · a_scale · b_scale, zero point 0
        scale = (sa * sb * a_.get("alpha", 1.0)).astype(np.float32)
        inputs.append(rw.emit("DequantizeLinear", [c, rw.const(scale, c + "_scale")], hint=c + "_dequantized",
                              **({"axis": 0} if scale.size > 1 else {})))
    ys, yz = _optional(node, 7), _optional(node, 8)
    attributes = {k: v for k, v in a_.items() if k in ("alpha", "transA", "transB")}
    if not ys:  # float output
        rw.emit("Gemm", inputs, node.output[0], **attributes)
        return
    _requantized(rw, node, "Gemm", inputs, ys, yz, **attributes)


def _integer_product(op_type):
    """ConvInteger / MatMulInteger: the float op on dequantized inputs, back in integer units."""

    def rewrite(rw, node):
        a, b = node.input[:2]
        az, bz = _optional(node, 2), _optional(node, 3)
        weight = rw.integer_weight(b, bz, axis=0 if op_type == "Conv" else -1)
        if weight is None or a not in rw.qparams:
            return False
        scale = rw.qparams[a][0]
        product = rw.emit(op_type, [rw.dq(a, scale, az), weight], hint=node.output[0] + "_float",
                          **attrs(node))
        rw.emit("Div", [product, scale], node.output[0])
        rw.integer_units.add(node.output[0])

    return rewrite


def _integer_bias(rw, node):
    """An int32 bias added to a rewritten ConvInteger (onnx.quantize 0.1.0 quantizes the bias
    at run time): the same Add in float."""
    inputs = [i if i in rw.integer_units else rw.emit("Cast", [i], hint=i + "_float", to=onnx.TensorProto.FLOAT)
              for i in node.input]
    rw.emit("Add", inputs, node.output[0])
    rw.integer_units.add(node.output[0])


def _dynamic_quantize(rw, node):
    """Keep the node for its scale and zero point; its quantized output comes from QuantizeLinear."""
    x, (q, scale, zp) = node.input[0], node.output
    rw.nodes.append(helper.make_node(node.op_type, [x], [rw.fresh(q + "_unused"), scale, zp], name=node.name))
    rw.quantize(x, scale, zp, q)


def _binary(op_type):
    def rewrite(rw, node):
        a, as_, az, b, bs, bz, ys, yz = node.input[:8]
        _requantized(rw, node, op_type, [rw.dq(a, as_, az), rw.dq(b, bs, bz)], ys, yz)

    return rewrite


def _unary(op_type, attributes=()):
    def rewrite(rw, node):
        x, xs, xz, ys, yz = node.input[:5]
        keep = {k: v for k, v in attrs(node).items() if k in attributes}
        _requantized(rw, node, op_type, [rw.dq(x, xs, xz)], ys, yz, **keep)

    return rewrite


def _softmax(rw, node):
    """QLinearSoftmax; its ``opset`` attribute says which Softmax semantics it follows (13+: one axis)."""
    a = attrs(node)
    if a.get("opset", 13) < 13:
        return False
    x, xs, xz, ys, yz = node.input[:5]
    _requantized(rw, node, "Softmax", [rw.dq(x, xs, xz)], ys, yz, axis=a.get("axis", -1))


def _pool(op_type):
    def rewrite(rw, node):
        x, xs, xz, ys, yz = node.input[:5]
        a = attrs(node)
        if a.pop("channels_last", 0):
            return False
        _requantized(rw, node, op_type, [rw.dq(x, xs, xz)], ys, yz, **a)

    return rewrite


def _qlinear_concat(rw, node):
    ys, yz, *triples = node.input
    parts = [rw.dq(*triples[i:i + 3]) for i in range(0, len(triples), 3)]
    _requantized(rw, node, "Concat", parts, ys, yz, axis=attrs(node)["axis"])


def _dynamic_quantize_lstm(rw, node):
    """com.microsoft DynamicQuantizeLSTM → the standard LSTM with the dequantized weights. Its
    weights are stored transposed (directions × input × 4·hidden) with a scale and zero point per
    direction (or per direction and column). The deployed op also quantizes X and H at each
    step; the float LSTM does not, so its outputs differ from the deployed ones by that rounding."""
    x, w, r, *rest = node.input[:8]
    weights = []
    for q, scale, zp in ((w, node.input[8], node.input[9]), (r, node.input[10], node.input[11])):
        value, s, z = rw.value(q), rw.value(scale), rw.value(zp)
        if value is None or s is None or z is None:
            return False
        shape = (-1, 1, value.shape[2]) if s.ndim == 2 else (-1, 1, 1)
        dequantized = (value.astype(np.int32) - z.reshape(shape).astype(np.int32)) * s.reshape(shape).astype(np.float32)
        weights.append(rw.const(dequantized.astype(np.float32).transpose(0, 2, 1), q + "_float"))
    rw.nodes.append(helper.make_node("LSTM", [x, *weights, *rest], node.output, name=node.name, **attrs(node)))


def _to_default_domain(rw, node):
    """com.microsoft Quantize/DequantizeLinear: the standard op (same inputs and meaning)."""
    if node.domain in DEFAULT_DOMAINS:
        return False
    rw.nodes.append(helper.make_node(node.op_type, node.input, node.output, name=node.name, **attrs(node)))
    if node.op_type == "QuantizeLinear":
        rw.qparams[node.output[0]] = (node.input[1], _optional(node, 2))


_REWRITES = {
    "QLinearConv": _qlinear_conv, "QLinearMatMul": _qlinear_matmul, "QGemm": _qgemm,
    "ConvInteger": _integer_product("Conv"), "MatMulInteger": _integer_product("MatMul"),
    "DynamicQuantizeLinear": _dynamic_quantize,
    "QLinearAdd": _binary("Add"), "QLinearMul": _binary("Mul"),
    "QLinearSigmoid": _unary("Sigmoid"), "QLinearLeakyRelu": _unary("LeakyRelu", ("alpha",)), "QLinearSoftmax": _softmax,
    "QLinearGlobalAveragePool": _pool("GlobalAveragePool"), "QLinearAveragePool": _pool("AveragePool"),
    "QLinearConcat": _qlinear_concat, "DynamicQuantizeLSTM": _dynamic_quantize_lstm,
    "QuantizeLinear": _to_default_domain, "DequantizeLinear": _to_default_domain,
}


def integer_forward(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run, in place, the forward pass of a rewritten and differentiated dynamic int8 model in
    integers again where its backward does not read the float form, so that it costs what the
    deployed model costs (the backward keeps the float weights). Returns ``model``.

    * ``Conv(DQ(x_q), W) / x_scale`` (a rewritten ConvInteger, likewise MatMulInteger) whose
      product only that ``Div`` reads (the backward of a product by constant weights reads only
      the weights) → ``Cast(ConvInteger(x_q, W + w_zp, x_zp, w_zp))``, uint8 weights with one zero
      point; a weight that is not integer-valued or spans more than 255 steps stays float. A
      run-time int32 bias added next (onnx.quantize 0.1.0) is added in int32 again.
    * ``QuantizeLinear(x, scale, zero point)`` of a ``DynamicQuantizeLinear(x)``'s scale and zero
      point → that node's own quantized output (the same formula; the backward reads x only).
    * A DynamicQuantizeLSTM stays a float LSTM (measured on ddddocr: 7.1 ms against 1.4 ms): its
      backward recomputes the gates from X and Y, and with the deployed Y (X and H quantized at
      each step) they are not the float LSTM's (input-gradient slopes 2.6 % off).

    >>> integer_forward(model.proto).graph.node == model.proto.graph.node
    True
    """
    graph = model.graph
    constants = constant_tensors(graph)
    readers, producer = {}, {}
    for node in graph.node:
        for name in {*node.input, *subgraph_reads(node)}:
            readers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node
    outputs = {o.name for o in graph.output}
    taken = {*constants, *readers, *producer, *(i.name for i in graph.input)}
    int32 = {v.name for v in (*graph.value_info, *graph.input) if v.type.tensor_type.elem_type == onnx.TensorProto.INT32}
    replaced, weights = {}, []

    def add_constant(value, hint):
        name = unique_name(hint, taken)
        taken.add(name)
        weights.append(numpy_helper.from_array(value, name))
        return name

    for node in graph.node:
        quantizer = _dynamic_quantizer_of(node, readers, producer)
        if quantizer is not None and id(quantizer) not in replaced:  # its own output again: one pass fewer
            replaced[id(quantizer)] = [helper.make_node(quantizer.op_type, quantizer.input,
                                                        [node.output[0], *quantizer.output[1:]], name=quantizer.name)]
            replaced[id(node)] = []
            continue
        fused = _integer_product_of(node, constants, readers, producer, outputs)
        if fused is None:
            continue
        dq, div, weight, zero_point = fused
        w_name = add_constant(weight, f"{node.input[1]}_uint8")
        z_name = add_constant(zero_point, f"{node.input[1]}_zero_point")
        integer = unique_name(f"{node.output[0]}_int32", taken)
        taken.add(integer)
        product = helper.make_node(node.op_type + "Integer", [dq.input[0], w_name, dq.input[2], z_name], [integer],
                                   name=node.name, **attrs(node))
        bias = _integer_bias_of(div, int32, readers, producer, outputs)
        if bias is None:
            replaced[id(node)] = [product, helper.make_node("Cast", [integer], [div.output[0]], name=div.name,
                                                            to=onnx.TensorProto.FLOAT)]
        else:  # ConvInteger → Add(int32 bias) → Cast, as deployed (two float passes fewer)
            add, bias_int32, cast = bias
            total = unique_name(f"{add.output[0]}_int32", taken)
            taken.add(total)
            replaced[id(node)] = [product]
            replaced[id(add)] = [helper.make_node("Add", [integer, bias_int32], [total], name=add.name)]
            replaced[id(cast)] = [helper.make_node("Cast", [total], [cast.output[0]], name=cast.name,
                                                   to=onnx.TensorProto.FLOAT)]
        replaced[id(div)] = []
    if not replaced:
        return model
    nodes = [new for node in graph.node for new in replaced.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(weights)
    return prune(model)


def _dynamic_quantizer_of(node, readers, producer):
    """The DynamicQuantizeLinear(x) whose scale and zero point the QuantizeLinear(x) ``node`` uses
    (:func:`_dynamic_quantize` wrote it so that the QuantizeLinear rule carries the gradient),
    when that DynamicQuantizeLinear's own quantized output is read by nothing; else None."""
    if node.op_type != "QuantizeLinear" or node.domain not in DEFAULT_DOMAINS or len(node.input) != 3 or attrs(node):
        return None
    quantizer = producer.get(node.input[1])
    if quantizer is None or quantizer.op_type != "DynamicQuantizeLinear" or list(quantizer.input) != [node.input[0]] \
            or list(quantizer.output[1:]) != list(node.input[1:]) or readers.get(quantizer.output[0]):
        return None
    return quantizer


def _integer_bias_of(div, int32, readers, producer, outputs):
    """``(add, int32 bias, cast)`` when the integer-unit product ``div`` computes only feeds
    ``Add(·, Cast(int32 bias))`` (:func:`_integer_bias`) whose sum only a float32 ``Cast`` reads,
    so that the bias can be added in int32 again (``int32``: the names of int32 tensors); else None."""
    add = readers.get(div.output[0], [])
    if len(add) != 1 or add[0].op_type != "Add" or add[0].domain not in DEFAULT_DOMAINS or \
            div.output[0] in outputs or add[0].output[0] in outputs:
        return None
    add = add[0]
    other = add.input[1] if add.input[0] == div.output[0] else add.input[0]
    widen, cast = producer.get(other), readers.get(add.output[0], [])
    if other == div.output[0] or widen is None or widen.op_type != "Cast" or widen.input[0] not in int32 or \
            len(cast) != 1 or cast[0].op_type != "Cast" or attrs(cast[0]).get("to") != onnx.TensorProto.FLOAT:
        return None
    return add, widen.input[0], cast[0]


def _integer_product_of(node, constants, readers, producer, outputs):
    """``(dequantize, div, uint8 weight, its zero point)`` when ``node`` is a rewritten integer
    product that :func:`integer_forward` can run in integers; else None."""
    if node.op_type not in ("Conv", "MatMul") or node.domain not in DEFAULT_DOMAINS or len(node.input) != 2 or \
            node.input[1] not in constants or node.output[0] in outputs:
        return None
    dq = producer.get(node.input[0])
    div = readers.get(node.output[0], [])
    if dq is None or dq.op_type != "DequantizeLinear" or dq.domain not in DEFAULT_DOMAINS or len(dq.input) != 3 or \
            attrs(dq) or len(div) != 1 or div[0].op_type != "Div" or list(div[0].input) != [node.output[0], dq.input[1]]:
        return None
    zero_point, quantizer = constants.get(dq.input[2]), producer.get(dq.input[2])
    dynamic = quantizer is not None and quantizer.op_type == "DynamicQuantizeLinear" and \
        list(quantizer.output[1:]) == list(dq.input[1:])  # a uint8 scalar
    if not dynamic and (zero_point is None or zero_point.data_type != onnx.TensorProto.UINT8 or zero_point.dims):
        return None
    weight = numpy_helper.to_array(constants[node.input[1]])
    if weight.dtype != np.float32 or weight.size == 0 or not np.array_equal(weight, np.round(weight)):
        return None
    low, high = weight.min(), weight.max()
    if high - low > 255 or (weight.ndim < 3 if node.op_type == "Conv" else weight.ndim != 2):
        return None
    shift = np.uint8(-low if low < 0 else 0)
    if high + shift > 255:
        return None
    return dq, div[0], (weight + shift).astype(np.uint8), np.array(shift, np.uint8)
