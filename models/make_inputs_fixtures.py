"""Generate tests/fixtures/inputs/: tiny torch exports for module names and uint8 inputs, with
torch references (dev-only: needs torch; the tests only read the files). Run from the repo root:

    python models/make_inputs_fixtures.py

- ``modules_ts.onnx`` (TorchScript exporter, opset 17, dynamic batch) and ``modules_dynamo.onnx``
  (dynamo exporter, opset 18, batch 2) of one ``Net``: nested Sequential blocks, a ReLU module
  called twice per block (TorchScript names the second call ``relu_1``), BN folded by both;
  ``modules.npz``: ``input`` and, per module of ``MODULES``, ``act_<module>`` = the output of its
  last call (forward hooks), plus ``logits``.
- ``uint8_nhwc.onnx`` (TorchScript, dynamic batch): uint8 N×16×16×3 pixels → permute → float →
  (v/255 − mean)/std in the graph → the same ``Net``; ``uint8.npz``: ``input`` (uint8), ``logits``,
  ``seed`` and ``grad_pixels`` = d Σ(seed·logits) / d float(pixels) by torch autograd (NHWC).
"""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "inputs"
MODULES = ["conv1", "layer1", "layer1.0", "layer1.1.relu", "layer2", "layer2.1.conv2"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.bn1(self.conv1(x)))) + x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.relu = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()
        self.layer1 = nn.Sequential(Block(6), Block(6))
        self.layer2 = nn.Sequential(nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU()), Block(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.layer2(self.layer1(self.relu(self.conv1(x)))).mean((2, 3)))


class Uint8Net(nn.Module):
    """Raw NHWC uint8 pixels in; the permute, the cast and the normalization happen in the graph."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, pixels):
        x = pixels.permute(0, 3, 1, 2).float()
        return self.net((x / 255 - self.mean) / self.std)


def make_net():
    torch.manual_seed(0)
    net = Net()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def inline(path):
    """Re-save ``path`` with its weights inside (the dynamo exporter writes a .data file)."""
    model = onnx.load(str(path))
    for data in path.parent.glob(path.name + ".data"):
        data.unlink()
    onnx.save(model, str(path))


def check(path, feeds, want):
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def modules_fixture(net):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    acts = {}
    def keep(name):
        return lambda module, inputs, output: acts.__setitem__(name, output.detach())

    hooks = [net.get_submodule(name).register_forward_hook(keep(name)) for name in MODULES]
    with torch.no_grad():
        logits = net(x)
    for hook in hooks:
        hook.remove()
    ts, dyn = OUT / "modules_ts.onnx", OUT / "modules_dynamo.onnx"
    torch.onnx.export(net, (x,), str(ts), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    torch.onnx.export(net, (x,), str(dyn), input_names=["image"], output_names=["logits"], opset_version=18,
                      dynamo=True)
    inline(dyn)
    for path in (ts, dyn):
        check(path, {"image": x.numpy()}, logits.numpy())
    np.savez_compressed(OUT / "modules.npz", input=x.numpy(), logits=logits.numpy(),
                        **{f"act_{name}": a.numpy() for name, a in acts.items()})


def uint8_fixture(net):
    model = Uint8Net(net).eval()
    pixels = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    path = OUT / "uint8_nhwc.onnx"
    torch.onnx.export(model, (pixels,), str(path), input_names=["pixels"], output_names=["logits"],
                      dynamic_axes={"pixels": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    as_float = pixels.float().requires_grad_()
    logits = model.net(((as_float.permute(0, 3, 1, 2)) / 255 - model.mean) / model.std)
    seed = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3))
    (grad,) = torch.autograd.grad((seed * logits).sum(), as_float)
    check(path, {"pixels": pixels.numpy()}, logits.detach().numpy())
    np.savez_compressed(OUT / "uint8.npz", input=pixels.numpy(), logits=logits.detach().numpy(), seed=seed.numpy(),
                        grad_pixels=grad.numpy())


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    net = make_net()
    uint8_fixture(net)
    modules_fixture(net)
    sizes = {p.name: p.stat().st_size for p in sorted(OUT.iterdir())}
    print(json.dumps(sizes, indent=1), f"total {sum(sizes.values())} bytes")


if __name__ == "__main__":
    main()
