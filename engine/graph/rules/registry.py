"""The rule table: registration (per input, per opset version) and the checked call autodiff makes.

>>> sorted(r.wrt for r in rules_for(onnx.helper.make_node("Sub", ["a", "b"], ["y"]), opset=17))
[0, 1]
"""
from dataclasses import dataclass
from typing import Callable

from engine.errors import UnsupportedOpError
from engine.graph.editing import DEFAULT_DOMAINS

EACH, ALL = "each", "all"


class RuleContractError(RuntimeError):
    """A rule returned something other than one gradient (a tensor name or None) per input it was
    asked for: a bug in the rule, not a user error."""


@dataclass(frozen=True)
class Rule:
    """One registered rule: ``fn`` computes the gradient of input ``wrt`` (an index, ``EACH``
    input in turn, or ``ALL`` inputs at once) for models of opset ``since`` and later; it gets
    the list of output gradients when ``all_outputs``, else the gradient of output 0."""

    fn: Callable
    wrt: object
    since: int
    all_outputs: bool


RULES = {}  # op type → [Rule]


def rule(*op_types, wrt=0, since=1, all_outputs=False):
    """Register the decorated function as the rule of ``op_types`` for input ``wrt``.

    ``wrt``: an input index — ``fn(ctx, node, dy)`` returns that input's gradient (or None);
    ``EACH`` — ``fn(ctx, node, dy, i)`` returns the gradient of input ``i``, asked for every
    input on the cone; ``ALL`` — ``fn(ctx, node, dy)`` returns one gradient (or None) per input.
    Inputs without a rule get none (weights, shapes, axes). ``since``: the first opset this
    version of the rule applies to (the newest version not after the model's opset is used).
    ``all_outputs``: ``fn`` gets ``grads`` (one entry per node output, None where no gradient
    arrives) instead of ``dy``.

    Example: ``@rule("Sub", wrt=1)`` above ``def sub_b(ctx, node, dy)``.
    """

    def register(fn):
        for op_type in op_types:
            taken = RULES.setdefault(op_type, [])
            if any(r.wrt == wrt and r.since == since for r in taken):
                raise ValueError(f"two rules for input {wrt} of {op_type} at opset {since}: {fn.__module__}")
            taken.append(Rule(fn, wrt, since, all_outputs))
        return fn

    return register


def rules_for(node, opset):
    """The rules of ``node`` in a model of ``opset``: those of the newest version not after it;
    [] for an op without one or outside the default domain."""
    registered = RULES.get(node.op_type, []) if node.domain in DEFAULT_DOMAINS else []
    versions = [r.since for r in registered if r.since <= opset]
    return [r for r in registered if r.since == max(versions)] if versions else []


def first_opset(node):
    """The first opset any rule of ``node``'s op type applies to, or None without rules."""
    registered = RULES.get(node.op_type, []) if node.domain in DEFAULT_DOMAINS else []
    return min((r.since for r in registered), default=None)


def input_gradients(ctx, node, grads, wanted, rules):
    """{input index: gradient name} for the ``wanted`` input indices (those on the cone) from
    ``rules`` (of :func:`rules_for`); ``grads`` has one entry per node output (None where no
    gradient arrives). Raises RuleContractError for a rule that breaks the arity contract."""
    result = {}
    for r in rules:
        dy = grads if r.all_outputs else _first_output(node, grads)
        if r.wrt == ALL:
            got = r.fn(ctx, node, dy)
            if not isinstance(got, (list, tuple)) or len(got) != len(node.input):
                raise RuleContractError(
                    f"the {node.op_type} rule {r.fn.__name__} returned {got!r}: one gradient (or None) per input "
                    f"is due, {len(node.input)} here")
            result.update((i, _one(node, r, got[i])) for i in wanted)
        elif r.wrt == EACH:
            result.update((i, _one(node, r, r.fn(ctx, node, dy, i))) for i in wanted)
        elif r.wrt in wanted:
            result[r.wrt] = _one(node, r, r.fn(ctx, node, dy))
    return {i: g for i, g in result.items() if g is not None}


def _one(node, r, gradient):
    if gradient is not None and not isinstance(gradient, str):
        raise RuleContractError(f"the {node.op_type} rule {r.fn.__name__} returned {gradient!r}: one gradient "
                                "(a tensor name) or None is due")
    return gradient


def _first_output(node, grads):
    """The gradient of output 0, for rules that differentiate that output only."""
    other = next((k for k, g in enumerate(grads) if g is not None and k > 0), None)
    if other is not None or grads[0] is None:
        k = other if other is not None else next(k for k, g in enumerate(grads) if g is not None)
        raise UnsupportedOpError(
            f"{node.op_type} node {node.name or node.output[0]!r}: its output {node.output[k]!r} has no gradient "
            "rule; pick a layer after it")
    return grads[0]


__all__ = ["ALL", "EACH", "RULES", "Rule", "RuleContractError", "first_opset", "input_gradients", "rule",
           "rules_for"]
