"""Differentiation rules: one small function per ONNX op type, in one table.

How to add a rule (the contract)
--------------------------------
Write a function in any module of this package (every module here is imported automatically,
e.g. ``extra.py``) and register it for one or more op types::

    from engine.graph.rules import rule

    @rule("Neg")
    def neg(ctx, node, grads):
        (dy,) = grads
        return [ctx.op("Neg", dy)]

* ``node`` is the forward ``onnx.NodeProto`` (read its attributes with ``attrs(node)``).
* ``grads`` holds one entry per node output: the name of the tensor carrying d(loss)/d(output),
  or ``None`` when that output gets no gradient (e.g. an unused second output). At least one
  entry is not ``None``. A gradient always has the shape of its forward tensor.
* Return a list (or tuple) with one entry per node input: the name of the gradient tensor for
  that input, shaped exactly like the input, or ``None`` for inputs that are not differentiable
  (weights, shapes, axes, indices). Inputs for which ``ctx.needs(node.input[i])`` is false
  are ignored anyway, so test it to skip emitting work that nobody uses.
* Emit backward nodes only through ``ctx`` (a :class:`Context`):

  - ``ctx.op(op_type, *inputs, outputs=1, **attributes)``: one standard ONNX node with fresh
    unique names, valid at ``ctx.opset`` (the model's opset: 17+ after normalization);
  - constants: ``ctx.const(array)``, ``ctx.scalar(value, like=tensor)``, ``ctx.ints(values)``;
    ``ctx.value(name)`` is the numpy value of a constant input, ``None`` if it is computed;
  - static facts: ``ctx.shape`` (ints; symbolic dims such as the batch ``"N"`` are strings),
    ``ctx.rank``, ``ctx.dtype``, ``ctx.elem_type``, ``ctx.mode`` (``standard``, ``guided``,
    ``deconvnet``), ``ctx.needs(name)``;
  - chores: ``ctx.unbroadcast`` (sum a broadcast gradient back to an input's shape),
    ``ctx.reduce_sum``, ``ctx.squeeze`` / ``ctx.unsqueeze`` (opset-aware axes), ``ctx.op_with_ints``
    (ints as an input from some opset on, as an attribute before: axes, pads, split sizes),
    ``ctx.reshape_like``, ``ctx.expand_like``, ``ctx.shape_of``, ``ctx.zeros_like``,
    ``ctx.mask`` (grad · [condition]; prefer it to Where, ~6x faster on ORT CPU),
    ``ctx.scale`` (grad · a constant factor, as a Conv that ORT CPU keeps in its NCHWc layout),
    ``ctx.between``, ``ctx.where_positive``, ``ctx.relu_family`` (ReLU-like backward that
    follows the guided / deconvnet modes), ``ctx.extra_output`` (ask a forward node for an
    optional output, e.g. MaxPool's Indices), ``ctx.channel_scale`` (see through a constant
    per-channel Mul on an incoming gradient, to fold it into a weight).
* The result must work for every batch size: never bake a symbolic dim into a constant.
* Add a finite-difference test for the rule in ``tests/test_rules_<module>.py`` using
  ``tests/gradcheck.py``.
"""
import importlib
import pkgutil

from engine.graph.rules.context import Context, attrs

RULES = {}


def rule(*op_types):
    """Register the decorated function as the differentiation rule of ``op_types``.

    Example: ``@rule("Identity", "Dropout")`` above ``def passthrough(ctx, node, grads)``.
    """

    def register(fn):
        for op_type in op_types:
            if op_type in RULES:
                raise ValueError(f"two rules for {op_type}: {RULES[op_type].__module__} and {fn.__module__}")
            RULES[op_type] = fn
        return fn

    return register


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "context":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["RULES", "Context", "attrs", "rule"]
