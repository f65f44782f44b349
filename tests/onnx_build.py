"""Tiny helpers to write ONNX test graphs by hand with onnx.helper (no torch)."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


class Builder:
    """Accumulates nodes and initializers; ``op`` returns the output name(s)."""

    def __init__(self, seed=0):
        self.nodes, self.inits, self.count = [], [], 0
        self.rng = np.random.default_rng(seed)

    def name(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def weight(self, *shape, scale=0.3, positive=False):
        value = self.rng.standard_normal(shape).astype(np.float32) * scale
        return self.const(np.abs(value) + 0.5 if positive else value)

    def const(self, value, name=None):
        name = name or self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def constant_node(self, value):
        return self.op("Constant", [], value=numpy_helper.from_array(np.asarray(value)))

    def op(self, op_type, inputs, outputs=1, name=None, **attrs):
        names = [name] if name else [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def model(self, inputs, outputs, opset, ir_version=None, weights_as_inputs=False):
        """inputs/outputs: list of (name, dims or None)."""
        ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in inputs]
        if weights_as_inputs:
            ins += [helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                    for t in self.inits]
        outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in outputs]
        graph = helper.make_graph(self.nodes, "test", ins, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = ir_version or min(onnx.IR_VERSION, 8)
        return model


def session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def run(model, x):
    sess = session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})
