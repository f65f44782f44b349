"""A tiny CNN in plain numpy with hand-derived gradients, exposing ``engine.Model``'s interface
(``run`` with activations, gradients, seeds and modes; layers; preprocess) so explanation code can
be tested without the ONNX gradient engine. Its gradients are checked against central finite
differences in tests/test_explain_model.py. ``proto`` is the same network in ONNX (for the parts
of the engine that read the graph: CAM heads, Ablation-CAM, the top-1 head gradient).

Network: x (N×3×8×8, unit preset) → ``feat`` = ReLU(1×1 conv) (N×K×8×8) → ``pool`` = 2×2 average
pool (N×K×4×4) → global average → FC → ``logits`` (N×C).
"""
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from engine.data.preprocess import Preprocess
from engine.errors import LayerError


@dataclass
class Result:
    outputs: list
    activations: dict = field(default_factory=dict)
    gradients: dict = field(default_factory=dict)


class NumpyModel:
    def __init__(self, k=6, classes=4, seed=0, size=8):
        rng = np.random.default_rng(seed)
        self.w1 = rng.normal(size=(k, 3)).astype(np.float64)
        self.b1 = rng.normal(size=k) * 0.3
        self.fc = rng.normal(size=(classes, k))
        self.fcb = rng.normal(size=classes) * 0.1
        self.size = size
        self.input = SimpleNamespace(name="image", layout="NCHW", channels=3)
        self.input_size = (size, size)
        self.preprocessing = Preprocess("unit")
        self.labels = [f"c{i}" for i in range(classes)]
        self.outputs = [SimpleNamespace(name="logits", shape=("N", classes))]
        self.layers = [SimpleNamespace(name="feat", shape=("N", k, size, size)),
                       SimpleNamespace(name="pool", shape=("N", k, size // 2, size // 2))]
        self.default_layer = "pool"
        self.default_layer_for = lambda output: "pool"
        self.calls = 0
        self.path, self.provider, self.threads = Path("numpy-model.onnx"), "CPUExecutionProvider", 1
        self.proto = self._onnx(k, classes, size)

    def _onnx(self, k, classes, size):
        f32 = lambda a, name: numpy_helper.from_array(np.asarray(a, np.float32), name)  # noqa: E731
        nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["pre"]),
                 helper.make_node("Relu", ["pre"], ["feat"]),
                 helper.make_node("AveragePool", ["feat"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
                 helper.make_node("GlobalAveragePool", ["pool"], ["gap"]),
                 helper.make_node("Flatten", ["gap"], ["flat"]),
                 helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1)]
        graph = helper.make_graph(
            nodes, "numpy-model", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
            [f32(self.w1[:, :, None, None], "w1"), f32(self.b1, "b1"), f32(self.fc, "fc"), f32(self.fcb, "fcb")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model

    def layer(self, name):
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise LayerError(f"no layer named '{name}'")

    def preprocess(self, images):
        rgbs = [cv2.resize(np.asarray(im), (self.size, self.size), interpolation=cv2.INTER_AREA)
                if np.asarray(im).shape[:2] != (self.size, self.size) else np.asarray(im) for im in images]
        return self.preprocessing(np.stack(rgbs)).transpose(0, 3, 1, 2).copy()

    def forward(self, x):
        x = np.asarray(x, np.float64)
        pre = np.einsum("kc,nchw->nkhw", self.w1, x) + self.b1[None, :, None, None]
        feat = np.maximum(pre, 0)
        n, k, h, w = feat.shape
        pool = feat.reshape(n, k, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
        logits = pool.mean(axis=(2, 3)) @ self.fc.T + self.fcb
        return pre, {"feat": feat, "pool": pool, "logits": logits}

    def run(self, x, activations=(), gradients=(), seed=None, mode="standard"):
        self.calls += 1
        pre, t = self.forward(x)
        result = Result([t["logits"].astype(np.float32)], {a: t[a].astype(np.float32) for a in activations})
        if not gradients:
            return result
        (where, s), = seed.items()
        s = np.asarray(s, np.float64)
        n, k, h, w = t["feat"].shape
        g = {}
        if where == "logits":
            g["pool"] = np.broadcast_to((s @ self.fc)[:, :, None, None] / (h * w / 4), t["pool"].shape)
        if where in ("logits", "pool"):
            gp = g["pool"] if where == "logits" else s
            g["feat"] = np.repeat(np.repeat(gp, 2, axis=2), 2, axis=3) / 4
        else:
            g["feat"] = s
        gf = g["feat"]
        if mode == "standard":
            gpre = gf * (pre > 0)
        elif mode == "guided":
            gpre = gf * (pre > 0) * (gf > 0)
        else:
            gpre = np.maximum(gf, 0)
        g["input"] = np.einsum("kc,nkhw->nchw", self.w1, gpre)
        result.gradients = {name: np.asarray(g[name], np.float32) for name in gradients}
        return result
