"""Gradients of the rewritten zoo models (normalized) against torch autograd references.

Needs the zoo fixtures (tests/zoo.py) and engine.graph.normalize; variants whose path holds an
op of the second rule set (engine/graph/rules/extra.py) are skipped until that module provides it.
"""
import numpy as np
import onnx
import pytest

from engine.errors import UnsupportedOpError
from engine.graph.autodiff import SEED, differentiate, grad_name
from gradcheck import session

zoo = pytest.importorskip("zoo")
normalize = pytest.importorskip("engine.graph.normalize").normalize

EXTRA_OPS = {"InstanceNormalization", "LayerNormalization", "GroupNormalization", "Elu", "Selu", "Softplus", "Mish",
             "Erf", "Gelu", "Exp", "Log", "Sqrt", "Pow", "Reciprocal", "Abs", "Neg", "LRN", "Split", "Slice", "Pad",
             "Expand", "Gather", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth"}


@pytest.mark.parametrize("name", zoo.variants())
def test_zoo_gradients_match_torch_autograd(name):
    fx = zoo.load(name)
    wrt = fx.taps + ["input"]
    model = normalize(onnx.load(fx.path))
    try:
        rewritten = differentiate(model, fx.output_name, wrt)
    except UnsupportedOpError as e:
        op = str(e).split("op ", 1)[1].split(" ", 1)[0]
        if op in EXTRA_OPS:
            pytest.skip(f"needs the {op} rule from rules/extra.py")
        raise
    got = session(rewritten).run([grad_name(t) for t in wrt], {"input": fx.input, SEED: fx.seed})
    for t, g in zip(wrt, got):
        want = fx.gradients[t]
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=t)
