"""Smooth pointwise rules alone against central finite differences through ORT.

Every op is checked in float64 where ORT has a float64 kernel (Elu, Selu, Softplus, Erf, Gelu
have none) and in float32 with gradcheck's step h = 3e-3: inputs stay where the third
derivative is O(1) (Sqrt, Log, Reciprocal, Pow away from 0; Abs away from its kink) so the
truncation error ~h²·f'''/6 ≈ 2e-6 and the rounding error ~eps32/h ≈ 4e-5 of the value stay
far below the 3e-3 tolerance.
"""
import numpy as np
import pytest

from gradcheck import check, node_model

X = ("N", 3, 4, 5)
# float64 (float32 where ORT lacks the float64 kernel), then float32 on its own.
DTYPES = pytest.mark.parametrize("dtypes", [(np.float64, np.float32), (np.float32,)], ids=["f64", "f32"])


def spread(rng, dt):
    """Inputs across both sides of 0 (all pieces of Elu/Selu, Gelu tails)."""
    return {"in0": (rng.standard_normal((2, 3, 4, 5)) * 2).astype(dt)}


def positive(rng, dt):
    """Inputs in [0.5, 2.5]: domain of Log/Sqrt, smooth for Reciprocal/Pow."""
    return {"in0": rng.uniform(0.5, 2.5, (2, 3, 4, 5)).astype(dt)}


def away_from_zero(rng, dt):
    """|x| in [0.3, 2]: Abs is smooth there (h·|v| stays far below 0.3)."""
    x = rng.uniform(0.3, 2, (2, 3, 4, 5)) * rng.choice([-1, 1], (2, 3, 4, 5))
    return {"in0": x.astype(dt)}


@DTYPES
@pytest.mark.parametrize("op,opset,attributes,feeds", [
    ("Elu", 17, {}, spread),
    ("Elu", 17, {"alpha": 0.5}, spread),
    ("Selu", 17, {}, spread),
    ("Selu", 17, {"alpha": 1.2, "gamma": 0.8}, spread),
    ("Softplus", 17, {}, spread),
    ("Softsign", 17, {}, spread),
    ("Mish", 18, {}, spread),
    ("Erf", 17, {}, spread),
    ("Gelu", 20, {}, spread),
    ("Gelu", 20, {"approximate": "tanh"}, spread),
    ("Exp", 17, {}, spread),
    ("Log", 17, {}, positive),
    ("Sqrt", 17, {}, positive),
    ("Reciprocal", 17, {}, positive),
    ("Abs", 17, {}, away_from_zero),
    ("Neg", 17, {}, spread),
])
def test_pointwise(op, opset, attributes, feeds, dtypes):
    check(lambda dt: node_model(op, [X], dt, opset=opset, **attributes), feeds=feeds, dtypes=dtypes)


@DTYPES
@pytest.mark.parametrize("exponent", [np.array(2.0), np.array(3.0), np.array(-1.5), np.array(1.0),
                                      np.array([0.5, 2.0, 3.0, -1.0, 1.5])])  # last: broadcast per column
def test_pow_constant_exponent(exponent, dtypes):
    check(lambda dt: node_model("Pow", [X, exponent], dt), feeds=positive, dtypes=dtypes)


def test_pow_integer_exponent_type():
    check(lambda dt: node_model("Pow", [X, np.array(3, dtype=np.int64)], dt), feeds=spread)


def test_pow_computed_exponent_and_broadcast_base():
    """Both operands differentiated; the base (3, 1, 1) is broadcast, so its gradient is summed."""
    def feeds(rng, dt):
        return {"in0": rng.uniform(0.5, 2.0, (3, 1, 1)).astype(dt),
                "in1": rng.uniform(-1.5, 1.5, (2, 3, 4, 5)).astype(dt)}

    check(lambda dt: node_model("Pow", [(3, 1, 1), ("N", 3, 4, 5)], dt), feeds=feeds)
