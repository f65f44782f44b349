"""Differentiation rules: small functions per ONNX op type (one per differentiable input), in one table.

How to add a rule (the contract)
--------------------------------
Write a function in any module of this package (every module here is imported automatically,
e.g. ``extra.py``) and register it for one or more op types. An elementwise unary op needs its
derivative only, written with arithmetic that emits ONNX nodes (:mod:`.expression`)::

    from engine.graph.rules import derivative, rule

    @derivative("Tanh")
    def tanh(x, y):
        return 1 - y * y

Any other op registers one function per differentiable input (:func:`~.registry.rule`)::

    @rule("Sub")                # input 0
    def sub_a(ctx, node, dy):
        return ctx.unbroadcast(dy, node.input[0], node.output[0])

    @rule("Sub", wrt=1)
    def sub_b(ctx, node, dy):
        return ctx.unbroadcast(ctx.op("Neg", dy), node.input[1], node.output[0])

* Autodiff calls a rule only for an input on the cone (between the requested tensors and the
  seeded output); inputs without a rule (weights, shapes, axes, indices) get no gradient.
  ``wrt=EACH`` registers one function ``fn(ctx, node, dy, i)`` for every input (variadic ops);
  ``wrt=ALL`` one that returns a list with a gradient (or None) per input, for ops whose input
  gradients share their work (Concat's one Split, the LSTM recurrence).
* ``node`` is the forward ``onnx.NodeProto`` (read its attributes with ``attrs(node)``);
  ``ctx.private_producer(name)`` gives the forward node computing an input that only ``node``
  reads (and whose gradient nobody asked for), so that a rule may differentiate both at once
  (the Mul rule does for x · sigmoid(x)).
* ``dy`` names the tensor carrying d(loss)/d(output 0), shaped like that output. A rule
  registered with ``all_outputs=True`` gets ``grads`` instead: one entry per node output,
  ``None`` where no gradient arrives (at least one is not). For other rules, a gradient arriving
  at another output is an UnsupportedOpError.
* A rule returns the name of the gradient tensor of its input, shaped exactly like the input, or
  ``None``; anything else (a list from a per-input rule, a list of the wrong length from an
  ``ALL`` rule) raises :class:`~.registry.RuleContractError` naming the op.
* ``since=N`` registers a version of the rule for models of opset N and later (the newest
  version not after the model's opset is used): an op whose semantics changed keeps one rule
  per semantics, the older usually a short adapter onto the newer. Models normally reach the
  rules at opset 17+ (engine.graph.normalize); one the version converter refuses keeps its own.
* Emit backward nodes only through ``ctx`` (a :class:`Context`):

  - ``ctx.op(op_type, *inputs, outputs=1, **attributes)``: one standard ONNX node with fresh
    unique names, valid at ``ctx.opset`` (the model's opset);
  - constants: ``ctx.const(array)``, ``ctx.scalar(value, like=tensor)``, ``ctx.ints(values)``;
    ``ctx.value(name)`` is the numpy value of a constant input, ``None`` if it is computed;
  - static facts: ``ctx.shape`` (ints; symbolic dims such as the batch ``"N"`` are strings),
    ``ctx.rank``, ``ctx.dtype``, ``ctx.elem_type``, ``ctx.mode`` (``standard``, ``guided``,
    ``deconvnet``);
  - chores: ``ctx.unbroadcast`` (sum a broadcast gradient back to an input's shape),
    ``ctx.reduce_sum``, ``ctx.squeeze`` / ``ctx.unsqueeze`` (opset-aware axes), ``ctx.op_with_ints``
    (ints as an input from some opset on, as an attribute before: axes, pads, split sizes),
    ``ctx.reshape_like``, ``ctx.expand_like``, ``ctx.shape_of``, ``ctx.zeros_like``,
    ``ctx.mask`` (grad · [condition]; prefer it to Where, ~6x faster on ORT CPU),
    ``ctx.scale`` (grad · a constant factor, as a Conv that ORT CPU keeps in its NCHWc layout),
    ``ctx.between``, ``ctx.where_positive``, ``ctx.relu_family`` (ReLU-like backward that
    follows the guided / deconvnet modes), ``ctx.extra_output`` (ask a forward node for an
    optional output, e.g. MaxPool's Indices), ``ctx.replace_forward`` (split a forward node so
    that the backward reads an intermediate, e.g. a HardSwish's gate), ``ctx.channel_scale`` (see
    through a constant per-channel Mul on an incoming gradient, to fold it into a weight) and
    ``ctx.folded_scale`` (emit such a Mul where the rule before will fold it).
* The result must work for every batch size: never bake a symbolic dim into a constant.
* Add a finite-difference test for the rule in ``tests/test_rules_<module>.py`` using
  ``tests/gradcheck.py`` (for an elementwise op, one entry in a parametrized list).
"""
import importlib
import pkgutil

from engine.graph.nodes import attrs
from engine.graph.rules.context import Context
from engine.graph.rules.expression import Expr, derivative, where
from engine.graph.rules.registry import (ALL, EACH, RULES, RuleContractError, first_opset, input_gradients, rule,
                                         rules_for)

_INFRASTRUCTURE = {"context", "expression", "registry"}

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ALL", "EACH", "RULES", "Context", "Expr", "RuleContractError", "attrs", "derivative", "first_opset",
           "input_gradients", "rule", "rules_for", "where"]
