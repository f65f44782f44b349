"""Generate the structured-target fixtures: tiny torch detectors, a CTC recognizer and a
segmenter exported to ONNX, with torch-autograd references of each explained score.

Dev-only (needs torch; never imported by the test suite). Deterministic. Writes into
tests/fixtures/targets/. Run from the repo root:

    python models/make_target_fixtures.py

For every model, ``<name>.onnx`` and ``<name>.npz``: ``images`` (uint8 N×H×W×3), ``input`` (the
imagenet-normalized NCHW batch), ``output``, and for each target of ``TARGETS`` the score's
definition decided in torch (``<t>/anchor``, ``<t>/class``, ``<t>/frames``...), its input gradient
``<t>/grad_input`` and, at the tapped layer, ``<t>/act`` and ``<t>/grad`` (Grad-CAM's inputs).
The scores are written here from their definitions (the box's class score, objectness × class,
the frames of the K-th greedy-decoded character, a class summed over a region), independently of
onnxlens' seeds.
"""
import itertools
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

HERE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "targets"
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def conv(cin, cout, k=3, s=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2), nn.BatchNorm2d(cout), nn.SiLU())


class Neck(nn.Module):
    """Two strides (8 and 16 on a 64×64 input) joined top-down and bottom-up, as a YOLO PAN."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv(3, 8, s=2), conv(8, 16, s=2), conv(16, 16, s=2))   # stride 8
        self.down = conv(16, 24, s=2)                                                  # stride 16
        self.p3 = conv(40, 16)
        self.p4 = conv(16, 24, s=2)

    def forward(self, x):
        s8 = self.stem(x)
        s16 = self.down(s8)
        p3 = self.p3(torch.cat([nn.functional.interpolate(s16, scale_factor=2.0), s8], 1))
        return p3, self.p4(p3) + s16


class YoloV8(nn.Module):
    """N×(4+C)×A: DFL-decoded cx, cy, w, h in pixels, then sigmoid class scores."""

    def __init__(self, classes=3, bins=8):
        super().__init__()
        self.neck, self.bins, self.classes = Neck(), bins, classes
        self.cls = nn.ModuleList([nn.Sequential(conv(c, 16), nn.Conv2d(16, classes, 1)) for c in (16, 24)])
        self.reg = nn.ModuleList([nn.Sequential(conv(c, 16), nn.Conv2d(16, 4 * bins, 1)) for c in (16, 24)])
        self.dfl = nn.Conv2d(bins, 1, 1, bias=False)
        self.dfl.weight.data[:] = torch.arange(bins, dtype=torch.float32).view(1, bins, 1, 1)
        self.dfl.requires_grad_(False)

    def forward(self, x):
        feats = self.neck(x)
        n = x.shape[0]
        # constant anchor counts (64 + 16 on 64×64): with view(n, C, -1) the Reshapes' shapes come
        # from Shape ops on the dynamic batch, the anchor axis stays symbolic after normalization,
        # and the engine refuses the Concat (and the DFL Conv) on it (noted in the targets report)
        cls = torch.cat([h(f).view(-1, self.classes, a) for h, f, a in zip(self.cls, feats, (64, 16))], 2).sigmoid()
        dist = torch.cat([h(f).view(-1, 4 * self.bins, a) for h, f, a in zip(self.reg, feats, (64, 16))], 2)
        dist = dist.view(-1, 4, self.bins, 80).transpose(2, 1).softmax(1)
        boxes = self.dfl(dist).view(-1, 4, 80) * (64 / self.bins)
        return torch.cat([boxes, cls], 1)


class YoloV5(nn.Module):
    """N×A×(5+C): sigmoid cx, cy, w, h (× 64), objectness, class scores."""

    def __init__(self, classes=3):
        super().__init__()
        self.neck, self.width = Neck(), 5 + classes
        self.heads = nn.ModuleList([nn.Conv2d(c, self.width, 1) for c in (16, 24)])
        self.register_buffer("scale", torch.tensor([64.0] * 4 + [1.0] * (1 + classes)))

    def forward(self, x):
        feats = self.neck(x)
        rows = torch.cat([h(f).flatten(2) for h, f in zip(self.heads, feats)], 2).transpose(1, 2).sigmoid()
        return rows * self.scale


class Crnn(nn.Module):
    """A conv-only CTC recognizer (32×128 input, 32 frames) returning T×N×C log-probabilities."""

    def __init__(self, classes=8):
        super().__init__()
        self.cnn = nn.Sequential(conv(3, 16, s=2), conv(16, 24, s=2), nn.Conv2d(24, 32, (8, 1)), nn.SiLU())
        self.fc = nn.Conv1d(32, classes, 1)

    def forward(self, x):
        seq = self.fc(self.cnn(x).squeeze(2))           # N×C×T
        return seq.permute(2, 0, 1).log_softmax(2)       # T×N×C


class Segmenter(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.body = nn.Sequential(conv(3, 16, s=2), conv(16, 16), conv(16, 24, s=2))
        self.head = nn.Conv2d(24, classes, 1)

    def forward(self, x):
        return nn.functional.interpolate(self.head(self.body(x)), scale_factor=4.0, mode="bilinear",
                                         align_corners=False)


def greedy(row, blank=0):
    """[(class, frames)] of greedy CTC decoding, written with itertools.groupby."""
    best = row.argmax(1).tolist()
    runs = [(c, [t for t, _ in grp]) for c, grp in itertools.groupby(enumerate(best), key=lambda p: p[1])]
    return [(c, frames) for c, frames in runs if c != blank]


def scores(name, out, i, target):
    """(score tensor of image i, definition dict) for one target, decided from the output."""
    if name == "yolov8":
        cls = out[i, 4:]
        best, classes = cls.max(0)
        anchor = int(torch.argsort(-best, stable=True)[int(target.split(":")[1])])
        c = int(classes[anchor])
        return out[i, 4 + c, anchor], {"anchor": anchor, "class": c}
    if name == "yolov5":
        conf = out[i, :, 4:5] * out[i, :, 5:]
        best, classes = conf.max(1)
        anchor = int(torch.argsort(-best, stable=True)[int(target.split(":")[1])])
        c = int(classes[anchor])
        return out[i, anchor, 4] * out[i, anchor, 5 + c], {"anchor": anchor, "class": c}
    if name == "crnn":
        chars = greedy(out[:, i].detach().numpy())
        picked = chars if target == "text" else [chars[int(target.split(":")[1])]]
        total = sum(out[t, i, c] for c, frames in picked for t in frames)
        return total, {"frames": np.array([t for _, frames in picked for t in frames])}
    c, (x1, y1, x2, y2) = 2, (8, 16, 40, 48)                 # class:2@region:8,16,40,48 on a 64×64 map
    return out[i, c, y1:y2, x1:x2].sum(), {"class": c}


MODELS = {  # name: (module, input H×W, tapped layer (module path), targets, opset)
    "yolov8": (YoloV8, (64, 64), "neck.p3", ["box:0", "box:5"], 13),
    "yolov5": (YoloV5, (64, 64), "neck.p3", ["box:0", "box:3"], 13),
    "crnn": (Crnn, (32, 128), "cnn.1", ["char:1", "text"], 13),
    "segmenter": (Segmenter, (64, 64), "body.2", ["class:2@region:8,16,40,48"], 13),
}


def build(name):
    make, (h, w), tap, targets, opset = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    for m in model.modules():                       # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    images = np.random.default_rng(1).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    x = ((images / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)
    path = HERE / f"{name}.onnx"
    torch.onnx.export(model, torch.from_numpy(x), str(path), opset_version=opset, dynamo=False,
                      input_names=["image"], output_names=["output"],
                      dynamic_axes={"image": {0: "batch"}, "output": {1 if name == "crnn" else 0: "batch"}})
    arrays = {"images": images, "input": x}
    layer = dict(model.named_modules())[tap]
    store = {}
    layer.register_forward_hook(lambda _m, _i, out: store.update(act=out))
    out = model(torch.from_numpy(x))
    arrays["output"] = out.detach().numpy()
    onnx_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    np.testing.assert_allclose(onnx_out, arrays["output"], rtol=1e-4, atol=1e-5)
    for target in targets:
        for i in range(2):
            xi = torch.from_numpy(x[i:i + 1]).requires_grad_()
            out = model(xi)
            score, definition = scores(name, out, 0, target)
            grad_input, grad = torch.autograd.grad(score, [xi, store["act"]])
            row = {"grad_input": grad_input.numpy()[0], "act": store["act"].detach().numpy()[0],
                   "grad": grad.numpy()[0], "score": score.detach().numpy(), **definition}
            for key, value in row.items():
                arrays.setdefault(f"{target}/{key}", []).append(np.asarray(value))
    arrays = {k: np.stack(v) if isinstance(v, list) and k.split("/")[-1] != "frames" else v
              for k, v in arrays.items()}
    for key in [k for k in arrays if k.endswith("/frames")]:       # ragged: one array per image
        frames = arrays.pop(key)
        for i, f in enumerate(frames):
            arrays[f"{key}/{i}"] = f
    np.savez_compressed(HERE / f"{name}.npz", **arrays, tap=np.array(_tap_tensor(path, tap)))
    print(f"{name}: {path.stat().st_size // 1024} KB, tap {tap}")


def _tap_tensor(path, tap):
    """The ONNX tensor of a module's output: the last node output whose name carries its path."""
    import onnx

    parts = tap.split(".")   # TorchScript scopes: /neck/p3/ for neck.p3, /cnn/cnn.1/ for a Sequential's cnn.1
    scopes = [".".join(parts[:k]) if parts[k - 1].isdigit() else parts[k - 1] for k in range(1, len(parts) + 1)]
    prefix = "/" + "/".join(scopes) + "/"
    outputs = [o for node in onnx.load(str(path)).graph.node if node.name.startswith(prefix) for o in node.output]
    return outputs[-1]


if __name__ == "__main__":
    HERE.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        build(name)
