"""The object a differentiation rule receives: emits nodes, constants, and answers shape questions."""
import numpy as np
import onnx
from onnx import helper, numpy_helper

NCHWC_BLOCK = 16  # channels in one block of ORT CPU's NCHWc layout (AVX-512)
BLOCK_ALIGNMENT = 8  # channel counts that ORT pads up to whole NCHWc blocks
SPREAD_MAX_POSITIONS = 64  # H·W up to which a per-channel value is spread by a padded depthwise Conv
# ops that ORT CPU runs in its NCHWc layout when their (first) input is there; a Concat all of them
_KEPT_BLOCKED = {"Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "MaxPool", "AveragePool", "BatchNormalization",
                 "Concat"}


class Context:
    """Backward-graph builder handed to every rule (see the package docstring for the contract).

    ``shapes`` maps a tensor name to a tuple of dims (int; str or None when symbolic) and
    ``types`` maps it to an ONNX element type; ``constants`` maps a name to a TensorProto.
    """

    def __init__(self, *, opset, mode, shapes, types, constants, used_names, forward=(), requested=()):
        self.opset = opset
        self.mode = mode
        self.nodes = []
        self.initializers = []
        self._shapes = shapes
        self._types = types
        self._constants = constants
        self._values = {}
        self._used = used_names
        self._counter = 0
        self._scalars = {}
        self._shape_nodes = {}
        self._producers = {}
        self._casts = {}  # emitted Cast output → (its input, that input's element type)
        self.node_name = "grad"  # the forward node being differentiated: prefix of emitted names
        self._forward_producers = {o: n for n in forward for o in n.output}
        self._readers = {}  # forward tensor → the forward nodes reading it, once per use
        for n in forward:
            for name in n.input:
                self._readers.setdefault(name, []).append(n)
        self._requested = set(requested)
        self.forward_rewrites = {}  # forward node's first output → the nodes that replace it
        self.interleaved = {}  # a gradient emitted by windows.interleave → (phases, positions, strides)
        self.phase_parts = {}  # a Conv rule's input gradient in phase form → (phases, positions, strides, channels, sizes, dtype)
        # a tiling pool's scatter → (its input, one-hot window per input channel, the channel each
        # input channel feeds, strides, output padding)
        self.scatters = {}

    # -- names and emission -------------------------------------------------------------------
    def fresh(self, hint):
        """A tensor/node name not used anywhere in the model."""
        while True:
            self._counter += 1
            name = f"{hint}__g{self._counter}"
            if name not in self._used:
                self._used.add(name)
                return name

    def op(self, op_type, *inputs, outputs=1, **attributes):
        """Emit one standard ONNX node; returns its output name (a list if ``outputs`` > 1).

        Example: ``ctx.op("Mul", dy, ctx.scalar(0.5, like=dy))``.
        """
        names = [self.fresh(self.node_name) for _ in range(outputs)]
        node = helper.make_node(op_type, list(inputs), names, name=self.fresh(self.node_name + "/" + op_type))
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attributes.items() if v is not None)
        self.nodes.append(node)
        self._producers.update((n, node) for n in names)
        return names[0] if outputs == 1 else names

    def const(self, array, hint="const"):
        """Add ``array`` as an initializer and return its name."""
        name = self.fresh(hint)
        self._values[name] = np.asarray(array)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        self._types[name] = self.initializers[-1].data_type
        self._shapes[name] = tuple(np.shape(array))
        return name

    def scalar(self, value, like):
        """A 0-d constant ``value`` with the element type of ``like``: a forward tensor, or a
        gradient handed to the rule (it has its forward tensor's type); shared when repeated."""
        dtype = self.dtype(like)
        key = (float(value), dtype.str)
        if key not in self._scalars:
            self._scalars[key] = self.const(np.array(value, dtype=dtype), "scalar")
        return self._scalars[key]

    def ints(self, values):
        """A 1-D int64 constant (shapes, axes, pads)."""
        return self.const(np.asarray(list(values), dtype=np.int64), "ints")

    # -- static facts about forward tensors ---------------------------------------------------
    def value(self, name):
        """The numpy value of a constant tensor (initializer, Constant output, or a constant
        emitted with ``ctx.const``), else None."""
        if name not in self._values:
            proto = self._constants.get(name)
            self._values[name] = None if proto is None else numpy_helper.to_array(proto)
        return self._values[name]

    def is_scalar(self, name, equal_to=None):
        """Whether ``name`` is a one-element constant (equal to ``equal_to`` when given)."""
        value = self.value(name) if name else None
        return value is not None and value.size == 1 and (equal_to is None or float(value.reshape(())) == equal_to)

    def shape(self, name):
        """Static shape of a forward tensor: ints, str (or None) for symbolic dims; None if unknown."""
        return self._shapes.get(name)

    def rank(self, name):
        """Number of dims of a forward tensor."""
        shape = self.shape(name)
        if shape is None:
            raise ValueError(f"no shape known for tensor {name!r}: run shape inference first")
        return len(shape)

    def dtype(self, name):
        """Numpy dtype of a forward tensor (or of an emitted constant)."""
        return np.dtype(helper.tensor_dtype_to_np_dtype(self._types.get(name, onnx.TensorProto.FLOAT)))

    def elem_type(self, name):
        """ONNX element type (``TensorProto.FLOAT``, ...) of a forward tensor, e.g. for ``Cast``."""
        return self._types.get(name, onnx.TensorProto.FLOAT)

    def private_producer(self, name):
        """The forward node computing ``name`` when one forward node alone reads it and no
        gradient of it is requested (so a rule may differentiate through both at once), else None."""
        return self._forward_producers.get(name) if self.private_reader(name) is not None else None

    def readers(self, name):
        """The forward nodes that read tensor ``name``, once per use."""
        return self._readers.get(name, [])

    def private_relus(self, names):
        """Whether, in standard mode, each of ``names`` is the output of a Relu that only one
        forward node reads (:meth:`private_producer`): that reader's rule may apply their masks."""
        producers = [self.private_producer(n) for n in names]
        return self.mode == "standard" and all(p is not None and p.op_type == "Relu" for p in producers)

    def private_reader(self, name):
        """The forward node reading ``name`` when it alone reads it and no gradient of it is
        requested (the other side of :meth:`private_producer`), else None."""
        readers = self.readers(name)
        if len(readers) != 1 or name in self._requested:
            return None
        return readers[0]

    # -- helpers for common chores ------------------------------------------------------------
    def shape_of(self, name):
        """A 1-D int64 tensor holding the runtime shape of ``name``: a constant when the shape
        is static, else a Shape node (emitted once per tensor)."""
        shape = self.shape(name)
        if shape is not None and all(isinstance(d, int) for d in shape):
            return self.ints(shape)
        if name not in self._shape_nodes:
            self._shape_nodes[name] = self.op("Shape", name)
        return self._shape_nodes[name]

    def reshape_like(self, grad, like, source=None):
        """Reshape ``grad`` to the shape of forward tensor ``like``. ``source`` is the forward
        tensor ``grad`` is shaped like: a symbolic dim at the same position in both is copied
        (Reshape's 0), so that shape inference keeps its name (ORT's NCHWc layout needs equal
        batch names to keep the backward in its blocked layout); one other unknown dim → -1."""
        shape = self.shape(like)
        before = self.shape(source) if source else None
        if shape is not None and 0 not in shape:
            dims = [d if isinstance(d, int) else
                    0 if before and i < len(before) and d and before[i] == d else -1 for i, d in enumerate(shape)]
            if dims.count(-1) <= 1:
                return self.op("Reshape", grad, self.ints(dims))
        return self.op("Reshape", grad, self.shape_of(like))

    def zeros_like(self, name):
        """Zeros shaped and typed like forward tensor ``name``."""
        zero = numpy_helper.from_array(np.zeros(1, dtype=self.dtype(name)))
        return self.op("ConstantOfShape", self.shape_of(name), value=zero)

    def op_with_ints(self, op_type, x, name, values, since, **attributes):
        """``op_type`` on ``x`` with the int list ``values`` as its second input from opset
        ``since`` on, as attribute ``name`` before (axes, pads, split sizes moved so over time).

        Example: ``ctx.op_with_ints("ReduceMean", x, "axes", [2, 3], 18, keepdims=1)``.
        """
        values = [int(v) for v in values]
        if self.opset >= since:
            return self.op(op_type, x, self.ints(values), **attributes)
        return self.op(op_type, x, **{name: values}, **attributes)

    def reduce_sum(self, x, axes, keepdims=True):
        """ReduceSum over ``axes`` (axes as input from opset 13, attribute before)."""
        return self.op_with_ints("ReduceSum", x, "axes", axes, 13, keepdims=int(keepdims))

    def squeeze(self, x, axes):
        """Squeeze ``axes`` (input from opset 13, attribute before)."""
        return self.op_with_ints("Squeeze", x, "axes", axes, 13)

    def unsqueeze(self, x, axes):
        """Unsqueeze ``axes`` (input from opset 13, attribute before)."""
        return self.op_with_ints("Unsqueeze", x, "axes", axes, 13)

    def unbroadcast(self, grad, input, output):
        """Sum ``grad`` (shaped like ``output``: a tensor name or a shape tuple) back to the
        shape of ``input`` that was broadcast (numpy rules) into it.

        Example: ``ctx.unbroadcast(dy, node.input[1], node.output[0])`` for a bias add.
        """
        shape_in = self.shape(input)
        shape_out = self.shape(output) if isinstance(output, str) else tuple(output)
        if shape_in is None or shape_out is None:
            raise ValueError(f"no shape known for {input!r} or {output!r}: run shape inference first")
        lead = len(shape_out) - len(shape_in)
        axes = list(range(lead))
        for i, d in enumerate(shape_in):
            if d == 1 and shape_out[lead + i] != 1:
                axes.append(lead + i)
        if not axes:
            return grad
        grad = self.reduce_sum(grad, axes, keepdims=True)
        return self.squeeze(grad, list(range(lead))) if lead else grad

    def expand_like(self, grad, like, axes):
        """Broadcast ``grad``, which has size 1 at ``axes``, to the shape of forward tensor ``like``."""
        shape = self.shape(like)
        if all(isinstance(shape[a], int) for a in axes):
            return self.op("Expand", grad, self.ints([d if isinstance(d, int) else 1 for d in shape]))
        return self.op("Expand", grad, self.shape_of(like))

    def extra_output(self, node, index):
        """Name of forward ``node``'s optional output ``index`` (e.g. MaxPool's Indices), adding
        it to the node when the model does not compute it yet."""
        while len(node.output) <= index:
            node.output.append("")
        if not node.output[index]:
            node.output[index] = self.fresh(self.node_name + "_out")
        return node.output[index]

    def replace_forward(self, node, nodes):
        """Replace forward ``node`` by ``nodes`` (``onnx.NodeProto``s computing the same outputs) once
        the backward is built: rules keep seeing the model as it was, and the backward may read the
        new intermediate tensors (a HardSwish's gate)."""
        self.forward_rewrites[node.output[0]] = list(nodes)

    def emitted_node(self, name):
        """Take the node that emitted tensor ``name`` back out of the backward (to go into a
        :meth:`replace_forward`: it must read forward tensors and constants only); returns it."""
        node = self._producers.pop(name)
        self.nodes.remove(node)
        return node

    def cast(self, grad, to, source_type):
        """Cast ``grad`` (of element type ``source_type``) to ``to``, remembering the source so
        that :meth:`uncast` can undo it."""
        result = self.op("Cast", grad, to=to)
        self._casts[result] = (grad, source_type)
        return result

    def uncast(self, grad, to):
        """The tensor ``grad`` was cast from by :meth:`cast` when that tensor has element type
        ``to`` (a round trip such as float32 → float16 → float32 then costs no precision); else None."""
        source, source_type = self._casts.get(grad, (None, None))
        return source if source_type == to else None

    def one_element(self, name):
        """Whether forward tensor ``name`` has a static shape of one element (a scalar or 1×…×1)."""
        shape = self.shape(name)
        return shape is not None and all(d == 1 for d in shape)

    def scalar_factor(self, grad):
        """``(g, k)`` when ``grad`` was emitted as ``Mul(g, k)`` with ``k`` a one-element forward
        tensor (e.g. a run-time quantization scale), so that a rule scaling ``grad`` by another
        one-element tensor multiplies the two scalars first: one pass over the gradient instead of
        two (broadcasting is associative, so the result has the same shape); else ``(grad, None)``."""
        node = self._producers.get(grad)
        if node is not None and node.op_type == "Mul":
            for g, k in (node.input, node.input[::-1]):
                if self.one_element(k):
                    return g, k
        return grad, None

    def channel_scale(self, grad, like):
        """``(g, scale)`` when ``grad`` (the gradient of forward tensor ``like``, rank >= 2) was
        emitted as ``Mul(g, c)`` with ``c`` a constant shaped (C, 1, …, 1) that scales axis 1
        (e.g. by BatchNormalization) or a one-element constant (a HardSigmoid's alpha), so that a
        Conv rule can fold the per-channel ``scale`` (1-D) into its weight; ``(grad, None)`` otherwise."""
        node = self._producers.get(grad)
        if node is None or node.op_type != "Mul":
            return grad, None
        c = self.value(node.input[1])
        if c is None or c.size != 1 and (c.ndim != self.rank(like) - 1 or any(d != 1 for d in c.shape[1:])):
            return grad, None
        return node.input[0], c.reshape(-1)

    def mask(self, grad, condition, like):
        """``grad`` where the bool tensor ``condition`` holds, else 0 (broadcasting); ``like`` is
        a forward tensor of the gradient's type. Cast + Mul: ~6x faster than Where on ORT CPU."""
        return self.op("Mul", grad, self.op("Cast", condition, to=self.elem_type(like)))

    def between(self, x, low=None, high=None):
        """Bool tensor low <= x <= high (tensor names; a missing bound is not checked).
        Built from Less/Greater/Not so that it is valid at every opset."""
        outside = [self.op(op, x, bound) for op, bound in (("Less", low), ("Greater", high)) if bound]
        return self.op("Not", outside[0] if len(outside) == 1 else self.op("Or", *outside))

    def at_least(self, x, low):
        """The float 0/1 step [x >= low] in one op, clip(2^k·x + b, 0, 1): a HardSigmoid for one
        bound (faster than a clipped depthwise Conv on the quantizer inputs measured), a clipped
        depthwise Conv for one bound per channel of an image tensor (``low``: a numpy array of one
        or C values); None where that form is not exact, or for a non-float32 x. A zero bound gets
        b = 1 (exact outside the negative subnormals, as :meth:`where_positive`); another gets
        b = −2^k·p with p the float below it, so x > p (i.e. x >= low) iff 2^k(x − p) >= 1, which
        the products (exact powers of two) and one rounding keep."""
        bound = np.asarray(low, np.float32).reshape(-1)
        per_channel = bound.size > 1
        if self.elem_type(x) != onnx.TensorProto.FLOAT or (per_channel and not self.blocked_layout(x)):
            return None
        below = np.nextafter(bound, np.float32(-np.inf))
        top = float(np.abs(below).max())
        k = 126 - max(0, int(np.ceil(np.log2(top)))) if top > 0 else 126
        if k < 126 and (bound == 0).any():  # a zero bound needs 2^126 to step at the smallest normal
            return None
        weight = np.float32(2.0 ** k)
        bias = np.where(bound == 0, np.float32(1), -below * weight).astype(np.float32)
        if per_channel:
            return self.clipped_affine(x, weight, bias, 0.0, 1.0)
        return self.op("HardSigmoid", x, alpha=float(weight), beta=float(bias[0]))

    def blocked_layout(self, x, multiple=BLOCK_ALIGNMENT, smallest=NCHWC_BLOCK):
        """Whether ``x`` is a float32 image tensor (N, C, H, W) of the kind ORT CPU keeps in its
        blocked NCHWc layout when only Conv-like ops touch it: C a multiple of ``multiple`` and at
        least ``smallest``. With ``multiple`` 8, counts that ORT pads up to whole blocks of 16
        (24, 40, 88) count where ``x`` comes from Convs (:meth:`from_convs`); 8 channels, padded to
        16, double every pass over the tensor (the elementwise ops ran faster there)."""
        shape = self.shape(x)
        if not (self.elem_type(x) == onnx.TensorProto.FLOAT and shape is not None and len(shape) == 4
                and isinstance(shape[1], int) and shape[1] % multiple == 0 and shape[1] >= smallest):
            return False
        return shape[1] % NCHWC_BLOCK == 0 or self.from_convs(x)

    def from_convs(self, x, hops=3):
        """Whether forward tensor ``x`` is a Conv's output, or comes from Convs through at most
        ``hops`` ops that ORT CPU runs in its NCHWc layout (activations, pools, BatchNormalization,
        a Concat of such, x · σ(x) or x · HardSigmoid(x)): only there are channel counts such as 24
        padded to whole blocks. After a Cast (a float16 model's) or a Concat of 12-channel pieces
        (a DenseNet's), the depthwise forms of the rules cost reorders (3–7 % slower)."""
        producer = self._forward_producers.get(x)
        if producer is None or hops < 0:
            return False
        if producer.op_type == "Conv":
            return True
        if producer.op_type == "Mul":  # a Swish or HardSwish: x · σ(x), x · HardSigmoid(x)
            gates = [self._forward_producers.get(t) for t in producer.input]
            return any(g is not None and g.op_type in ("Sigmoid", "HardSigmoid") and list(g.input) == [x_in]
                       and self.from_convs(x_in, hops - 1) for g, x_in in zip(gates, reversed(producer.input)))
        data = producer.input if producer.op_type == "Concat" else producer.input[:1]
        return producer.op_type in _KEPT_BLOCKED and all(self.from_convs(t, hops - 1) for t in data)

    def _depthwise(self, x, factor, like, bias=None):
        """x · factor (+ bias) as a depthwise 1×1 Conv; ``like`` (x's forward tensor) passes ``blocked_layout``."""
        channels = self.shape(like)[1]
        weight = self.const(np.full((channels, 1, 1, 1), factor, np.float32), "depthwise_weight")
        biases = [] if bias is None else [self.const(np.full(channels, bias, np.float32), "depthwise_bias")]
        return self.op("Conv", x, weight, *biases, group=channels, kernel_shape=[1, 1])

    def scale(self, grad, factor, like, multiple=NCHWC_BLOCK):
        """``grad`` · ``factor`` (a Python float); ``like`` is its forward tensor. A depthwise
        1×1 Conv where :meth:`blocked_layout` finds ``like`` blocked (C a multiple of ``multiple``,
        from ``multiple`` channels on), so that ORT CPU keeps the backward in its NCHWc layout
        (with ``factor`` 1 it only moves the gradient into that layout)."""
        if self.blocked_layout(like, multiple, smallest=multiple):
            return self._depthwise(grad, factor, like)
        return grad if factor == 1 else self.op("Mul", grad, self.scalar(factor, like=like))

    def spread(self, t, like, factor=1.0):
        """``t`` (N×C×1×1, one value a channel) · ``factor`` at every position of forward tensor
        ``like`` (N×C×H×W), as one depthwise Conv of an H×W kernel over ``t`` padded by H − 1 and
        W − 1, which stays in ORT CPU's NCHWc layout (an Expand or a broadcasting Mul leave it,
        with reorders around them); None unless ``like`` is blocked (:meth:`blocked_layout`) with
        a static H·W of at most ``SPREAD_MAX_POSITIONS`` ((H·W)² multiply-adds a channel)."""
        shape = self._blocked_image(like)
        if shape is None or np.prod(shape[2:]) > SPREAD_MAX_POSITIONS:
            return None
        weight = self.const(np.full((shape[1], 1, *shape[2:]), factor, np.float32), "spread")
        return self.op("Conv", t, weight, group=shape[1], kernel_shape=list(shape[2:]),
                       pads=[d - 1 for d in shape[2:]] * 2)

    def spatial_sum(self, t, like):
        """``t`` (N×C×H×W, laid out as forward tensor ``like``) summed over the image into N×C×1×1,
        as a depthwise Conv of ones, which stays in ORT CPU's NCHWc layout (a ReduceSum leaves it);
        None unless ``like`` is blocked (:meth:`blocked_layout`) with a static H×W."""
        shape = self._blocked_image(like)
        if shape is None:
            return None
        ones = self.const(np.ones((shape[1], 1, *shape[2:]), np.float32), "spatial_sum")
        return self.op("Conv", t, ones, group=shape[1], kernel_shape=list(shape[2:]))

    def _blocked_image(self, like):
        """The shape of forward tensor ``like`` where :meth:`blocked_layout` finds it blocked and
        its H×W is static, else None."""
        shape = self.shape(like)
        return shape if self.blocked_layout(like) and all(isinstance(d, int) for d in shape[2:]) else None

    def one_minus(self, x, like):
        """1 − ``x`` (shaped as forward tensor ``like``): a depthwise 1×1 Conv (weight −1, bias 1)
        for image tensors, so that ORT CPU keeps it in its NCHWc layout (one rounding, as a Sub's);
        else a Sub."""
        if self.blocked_layout(like):
            return self._depthwise(x, -1.0, like, bias=1.0)
        return self.op("Sub", self.scalar(1, like=like), x)

    def folded_scale(self, grad, factor, like, readers=1):
        """``grad`` · ``factor`` (a Python float), ``grad`` being the whole gradient of forward
        tensor ``like``, which ``readers`` forward nodes read: a Mul by a scalar where the rule of
        ``like``'s producer folds it into its constant weight (a Conv or a BatchNormalization:
        :meth:`channel_scale`), so that the factor costs no pass; else :meth:`scale`."""
        producer = self._forward_producers.get(like)
        if (len(self.readers(like)) == readers and like not in self._requested and producer is not None
                and producer.op_type in ("Conv", "BatchNormalization")
                and all(self.value(w) is not None for w in producer.input[1:] if w)):
            return self.op("Mul", grad, self.scalar(factor, like=like))
        return self.scale(grad, factor, like)

    def clipped_affine(self, x, weight, bias, low, high):
        """clip(weight · x + bias, low, high) (Python floats) as a depthwise 1×1 Conv with the Clip
        fused in, so that ORT CPU keeps it in its NCHWc layout; None unless ``x`` passes
        ``blocked_layout`` (rules then build the same from elementwise ops). With a power-of-two
        ``weight`` the product is exact, so steps such as [x > 3] come out exact too."""
        if not self.blocked_layout(x):
            return None
        return self._clip(self._depthwise(x, weight, x, bias), low, high, like=x)

    def _clip(self, t, low, high, like):
        """clip(``t``, low, high) (Python floats), its bounds inputs from opset 11 on, attributes before."""
        if self.opset < 11:
            return self.op("Clip", t, min=float(low), max=float(high))
        return self.op("Clip", t, self.scalar(low, like=like), self.scalar(high, like=like))

    def where_positive(self, x, grad):
        """``grad`` where ``x`` > 0, else 0 (the ReLU mask). For image tensors the mask is
        clip(x · 2¹²⁶, 0, 1) from a depthwise 1×1 Conv with the Clip fused in: ORT CPU then keeps
        the forward x and the whole backward in its NCHWc layout instead of converting around
        each Greater/Cast/Mul; other float32 tensors get the same step from one HardSigmoid
        (one op fewer than Greater/Cast/Mul per ReLU, which counts on small models). Equal to
        [x > 0] for every x outside the float32 subnormals."""
        if self.blocked_layout(x):
            step = self._clip(self._depthwise(x, 1 / np.finfo(np.float32).tiny, x), 0, 1, like=x)
            return self.op("Mul", grad, step)
        if self.elem_type(x) == onnx.TensorProto.FLOAT:  # the same step in one op: HardSigmoid = clip(αx, 0, 1)
            return self.op("Mul", grad, self.op("HardSigmoid", x, alpha=1 / float(np.finfo(np.float32).tiny), beta=0.0))
        return self.mask(grad, self.op("Greater", x, self.scalar(0, like=x)), like=x)

    def relu_family(self, x, dy, standard):
        """Backward of a ReLU-like op under ``ctx.mode``: ``standard()`` builds the ordinary
        gradient; ``guided`` passes dy where x > 0 and dy > 0; ``deconvnet`` passes relu(dy)."""
        if self.mode == "guided":
            return self.where_positive(x, self.op("Relu", dy))
        if self.mode == "deconvnet":
            return self.op("Relu", dy)
        return standard()
