"""Small hand-built models for structured targets (onnx.helper, random weights, no torch; smooth
activations, so that central differences have no ReLU kinks to cross).

``yolov8(path)``: N×(4+C)×A with a DFL box branch over two strides sharing a neck;
``yolov5(path)``: N×A×(5+C); ``pair(path)``: boxes N×A×4 (xyxy) + scores N×C×A;
``ctc(path, time_major)``: N×T×C (Softmax) or T×N×C (LogSoftmax); ``dense(path)``: N×C×H×W;
``crnn(path)``: T×N×C frames cut from a W×N×C×H transpose, of a variable-width line;
``conv_head(path, layout)``: classifier output N×C×1×1 or N×1×C; ``picodet(path)``: per-stride
class scores N×A×C beside box distributions N×A×4·bins (no decoding).
"""
import numpy as np
import onnx

from tests.onnx_build import Builder

SIZE = 16


def _save(b, path, inputs, outputs):
    model = b.model(inputs, outputs, opset=17)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _conv(b, x, cin, cout, k=3, stride=1, act="Tanh", name=None):
    y = b.op("Conv", [x, b.weight(cout, cin, k, k, scale=float(1 / np.sqrt(cin * k * k))), b.weight(cout, scale=0.1)],
             pads=[k // 2] * 4, strides=[stride, stride], kernel_shape=[k, k])
    return b.op(act, [y], name=name) if act else y


def _neck(b):
    """image (N,3,16,16) → n3 (N,8,8,8, stride 2) and n4 (N,8,4,4, stride 4); n4 is computed from n3."""
    c1 = _conv(b, "image", 3, 8, stride=2)
    c2 = _conv(b, c1, 8, 8, stride=2)
    up = b.op("Resize", [c2, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    n3 = _conv(b, b.op("Concat", [up, c1], axis=1), 16, 8, act="Tanh", name="n3")
    n4 = b.op("Add", [_conv(b, n3, 8, 8, stride=2), c2])
    return n3, n4


def _flat(b, x, channels):
    return b.op("Reshape", [x, b.const(np.array([0, channels, -1], np.int64))])


def yolov8(path, classes=3, bins=5):
    b = Builder(seed=1)
    n3, n4 = _neck(b)
    cls = [_flat(b, _conv(b, n, 8, classes, k=1, act="Sigmoid"), classes) for n in (n3, n4)]
    reg = [_flat(b, _conv(b, n, 8, 4 * bins, k=1, act=None), 4 * bins) for n in (n3, n4)]
    dist = b.op("Reshape", [b.op("Concat", reg, axis=2), b.const(np.array([0, 4, bins, -1], np.int64))])
    soft = b.op("Softmax", [b.op("Transpose", [dist], perm=[0, 2, 1, 3])], axis=1)
    dfl = b.op("Conv", [soft, b.const(np.arange(bins, dtype=np.float32).reshape(1, bins, 1, 1))])
    boxes = b.op("Mul", [b.op("Reshape", [dfl, b.const(np.array([0, 4, -1], np.int64))]),
                         b.const(np.float32(SIZE / (bins - 1)))])
    b.op("Concat", [boxes, b.op("Concat", cls, axis=2)], axis=1, name="out")
    return _save(b, path, [("image", ["N", 3, SIZE, SIZE])], [("out", ["N", 4 + classes, 80])])


def yolov5(path, classes=3):
    b = Builder(seed=2)
    n3, n4 = _neck(b)
    heads = [_flat(b, _conv(b, n, 8, 5 + classes, k=1, act="Sigmoid"), 5 + classes) for n in (n3, n4)]
    rows = b.op("Transpose", [b.op("Concat", heads, axis=2)], perm=[0, 2, 1])
    scale = np.array([SIZE] * 4 + [1] * (1 + classes), np.float32)
    b.op("Mul", [rows, b.const(scale)], name="out")
    return _save(b, path, [("image", ["N", 3, SIZE, SIZE])], [("out", ["N", 80, 5 + classes])])


def pair(path, classes=3):
    b = Builder(seed=3)
    n3, n4 = _neck(b)
    scores = [_flat(b, _conv(b, n, 8, classes, k=1, act="Sigmoid"), classes) for n in (n3, n4)]
    b.op("Concat", scores, axis=2, name="scores")
    centre = [_flat(b, _conv(b, n, 8, 4, k=1, act="Sigmoid"), 4) for n in (n3, n4)]
    cxcywh = b.op("Transpose", [b.op("Concat", centre, axis=2)], perm=[0, 2, 1])
    to_xyxy = SIZE * np.array([[1, 0, 1, 0], [0, 1, 0, 1], [-.25, 0, .25, 0], [0, -.25, 0, .25]], np.float32)
    b.op("MatMul", [cxcywh, b.const(to_xyxy)], name="boxes")
    return _save(b, path, [("image", ["N", 3, SIZE, SIZE])],
                 [("boxes", ["N", 80, 4]), ("scores", ["N", classes, 80])])


def ctc(path, time_major=False, classes=6, declared=None):
    """Input N×3×8×32; 16 frames. time_major: T×N×C after a LogSoftmax, else N×T×C after a Softmax.
    ``declared``: the output shape to declare instead (e.g. a wrong rank, as older exporters wrote)."""
    b = Builder(seed=4)
    x = _conv(b, "image", 3, 8, stride=2)                       # N×8×4×16
    col = b.op("Conv", [x, b.weight(classes, 8, 4, 1, scale=0.6), b.weight(classes, scale=0.1)])  # N×C×1×16
    seq = b.op("Squeeze", [col, b.const(np.array([2], np.int64))])  # N×C×T
    if time_major:
        b.op("LogSoftmax", [b.op("Transpose", [seq], perm=[2, 0, 1])], axis=2, name="out")
        shape = [16, "N", classes]
    else:
        b.op("Softmax", [b.op("Transpose", [seq], perm=[0, 2, 1])], axis=2, name="out")
        shape = ["N", 16, classes]
    return _save(b, path, [("image", ["N", 3, 8, 32])], [("out", declared or shape)])


def crnn(path, classes=6):
    """Input N×1×8×W (W symbolic); feat N×8×4×W/2 → Transpose to T×N×8×4 (4-D, not an image map)
    → T×N×32 → MatMul → LogSoftmax: T×N×C, declared [1, seqlen] as older exporters wrote it."""
    b = Builder(seed=5)
    feat = _conv(b, "image", 1, 8, stride=2, name="feat")
    frames = b.op("Reshape", [b.op("Transpose", [feat], perm=[3, 0, 1, 2]), b.const(np.array([0, 0, 32], np.int64))])
    b.op("LogSoftmax", [b.op("MatMul", [frames, b.weight(32, classes)])], axis=2, name="out")
    return _save(b, path, [("image", ["N", 1, 8, "w"])], [("out", [1, "seqlen"])])


def dense(path, classes=3):
    b = Builder(seed=5)
    x = _conv(b, "image", 3, 8)
    x = _conv(b, x, 8, 8, stride=2)
    logits = _conv(b, x, 8, classes, k=1, act=None)
    b.op("Resize", [logits, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="linear", name="out")
    return _save(b, path, [("image", ["N", 3, SIZE, SIZE])], [("out", ["N", classes, SIZE, SIZE])])


def conv_head(path, layout="NC11", classes=5, softmax=False):
    """A classifier whose output is N×C×1×1 (a 1×1 conv after global pooling) or N×1×C."""
    b = Builder(seed=6)
    x = _conv(b, _conv(b, "image", 3, 8, stride=2), 8, 8)
    gap = b.op("GlobalAveragePool", [x])
    if layout == "NC11":
        out, shape = _conv(b, gap, 8, classes, k=1, act=None), ["N", classes, 1, 1]
    else:
        flat = b.op("Flatten", [gap])
        logits = b.op("Gemm", [flat, b.weight(classes, 8), b.weight(classes)], transB=1)
        out, shape = b.op("Unsqueeze", [logits, b.const(np.array([1], np.int64))]), ["N", 1, classes]
    if softmax:
        out = b.op("Softmax", [out], axis=1 if layout == "NC11" else 2)
    b.op("Identity", [out], name="out")
    return _save(b, path, [("image", ["N", 3, SIZE, SIZE])], [("out", shape)])


def picodet(path, classes=3, bins=8):
    """Per-stride heads without decoding: scores N×A×C (stride 2, then 4) and box distributions N×A×4·bins."""
    b = Builder(seed=7)
    n3, n4 = _neck(b)
    outputs = []
    for stride, n, anchors in (("s2", n3, 64), ("s4", n4, 16)):
        for what, channels, act in (("cls", classes, "Sigmoid"), ("reg", 4 * bins, None)):
            flat = _flat(b, _conv(b, _conv(b, n, 8, 8), 8, channels, k=1, act=act), channels)
            b.op("Transpose", [flat], perm=[0, 2, 1], name=f"{what}_{stride}")
            outputs.append((f"{what}_{stride}", ["N", anchors, channels]))
    return _save(b, path, [("image", ["N", 3, SIZE, SIZE])], outputs)
