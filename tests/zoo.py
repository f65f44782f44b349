"""Torch-free access to the zoo fixtures (`tests/fixtures/zoo/`, made by `models/make_zoo.py`).

Each variant `<arch>_<export>` is an ONNX file plus torch-autograd references for one batch of 3:
the main output, tapped activations, d(sum(seed * output))/d(tap) and d(...)/d(input), and, for
classifiers, Grad-CAM maps as pytorch-grad-cam computes them for the top-1 class.

Example:
    >>> import zoo
    >>> fx = zoo.load("resnet18_ts13")
    >>> fx.taps, fx.gradients["input"].shape
    (['tap_layer3', 'tap_layer4'], (3, 3, 32, 32))
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIR = Path(__file__).resolve().parent / "fixtures" / "zoo"
ARCHS = ("resnet18", "mobilenetv3", "vgg11bn", "densenet", "squeezenet", "efficientnet", "convnext", "googlenet",
         "unet")
EXPORTS = ("ts11", "ts13", "dynamo18")  # TorchScript exporter at opsets 11 and 13, dynamo exporter at 18
EXPECTED = tuple(f"{a}_{e}" for a in ARCHS for e in EXPORTS) + ("resnet18nhwc_ts13",)


@dataclass(frozen=True)
class Fixture:
    """One exported model and its torch references (all float32, batch 3)."""

    name: str
    path: Path  # the .onnx file; its graph input is "input", outputs are [output_name, *taps]
    layout: str  # "NCHW", or "NHWC" (a Transpose at the start of the graph)
    input: np.ndarray
    seed: np.ndarray  # random normal, shaped like the main output
    output_name: str  # "logits" for classifiers, "output" for the dense U-Net map
    taps: list  # ONNX tensor names of the tapped blocks (each also a graph output)
    outputs: dict  # {output_name: main output}
    activations: dict  # {tap: activation}
    gradients: dict  # {tap or "input": d(sum(seed * output))/d(tensor)}
    gradcam: dict  # {tap: raw Grad-CAM map [N, h, w] for the top-1 class}; empty for U-Net
    seed_top1: np.ndarray | None  # one-hot of each image's top-1 class; None for U-Net
    grads_top1: dict  # {tap: d(sum(seed_top1 * output))/d(tap)}

    @property
    def arch(self):
        return self.name.split("_")[0]


def status():
    """{variant: "ok" or "failed: <reason>"} as the generator recorded it."""
    return json.loads((DIR / "index.json").read_text())


def variants():
    """Names of the variants present on disk, sorted; e.g. ['convnext_dynamo18', ...]."""
    return sorted(p.stem for p in DIR.glob("*.onnx") if p.with_suffix(".npz").exists())


def load(name):
    """Read one variant, e.g. `load("unet_dynamo18")`."""
    with np.load(DIR / f"{name}.npz") as z:
        data = {k: z[k] for k in z.files}
    meta = json.loads(str(data.pop("meta")))
    taps, out = meta["taps"], meta["output_name"]
    classifier = "seed_top1" in data
    return Fixture(
        name=name, path=DIR / f"{name}.onnx", layout=meta["layout"], input=data["input"], seed=data["seed"],
        output_name=out, taps=taps, outputs={out: data["output"]},
        activations={t: data[f"act_{t}"] for t in taps},
        gradients={t: data[f"grad_{t}"] for t in taps + ["input"]},
        gradcam={t: data[f"gradcam_{t}"] for t in taps} if classifier else {},
        seed_top1=data.get("seed_top1"),
        grads_top1={t: data[f"grad_top1_{t}"] for t in taps} if classifier else {})
