"""The short form of an elementwise unary rule: its derivative written as arithmetic.

``@derivative("Tanh")`` above ``def tanh(x, y): return 1 - y * y`` registers the rule
dx = dy · (1 − y²): ``x`` (the input) and ``y`` (the output) are :class:`Expr` objects whose
arithmetic emits ONNX nodes, and the node's attributes the function names as keyword
parameters (with the ONNX defaults as their defaults) are passed in.
"""
import inspect

from engine.graph.nodes import attrs
from engine.graph.rules.registry import rule


class Expr:
    """A tensor in a derivative. ``+ - * /``, unary ``-``, ``> <`` and ``&`` emit one node each
    (Python numbers become scalars of the forward tensor's type); a comparison is a bool tensor
    that multiplies as 0/1 (Cast, then Mul); :meth:`apply` emits any other unary op."""

    def __init__(self, ctx, name, like, boolean=False):
        self.ctx, self.name, self.like, self.boolean = ctx, name, like, boolean

    def apply(self, op_type, *others, boolean=False, **attributes):
        """``op_type`` on this tensor (and ``others``): e.g. ``x.apply("Erf")``."""
        inputs = [self.name, *(self._operand(o) for o in others)]
        return Expr(self.ctx, self.ctx.op(op_type, *inputs, **attributes), self.like, boolean)

    def _operand(self, other):
        if isinstance(other, Expr):
            return other._float() if other.boolean and not self.boolean else other.name
        return self.ctx.scalar(other, like=self.like)

    def _float(self):
        return self.ctx.op("Cast", self.name, to=self.ctx.elem_type(self.like))

    def _reversed(self, op_type, other):
        """``other`` op ``self``, for a Python number on the left."""
        return Expr(self.ctx, self.ctx.op(op_type, self._operand(other), self.name), self.like)

    def __add__(self, other):
        return self.apply("Add", other)

    def __radd__(self, other):
        return self._reversed("Add", other)

    def __sub__(self, other):
        return self.apply("Sub", other)

    def __rsub__(self, other):
        return self._reversed("Sub", other)

    def __mul__(self, other):
        if self.boolean:  # a 0/1 mask on the left: cast it first
            return Expr(self.ctx, self._float(), self.like) * other
        return self.apply("Mul", other)

    def __rmul__(self, other):
        return self._reversed("Mul", other)

    def __truediv__(self, other):
        return self.apply("Div", other)

    def __rtruediv__(self, other):
        return self._reversed("Div", other)

    def __neg__(self):
        return self.apply("Neg")

    def __gt__(self, other):
        return self.apply("Greater", other, boolean=True)

    def __lt__(self, other):
        return self.apply("Less", other, boolean=True)

    def __and__(self, other):
        return self.apply("And", other, boolean=True)


def where(condition, a, b):
    """``a`` where the bool ``condition`` holds, else ``b`` (Exprs or numbers)."""
    ctx, like = condition.ctx, condition.like
    pick = [v.name if isinstance(v, Expr) else ctx.scalar(v, like=like) for v in (a, b)]
    return Expr(ctx, ctx.op("Where", condition.name, *pick), like)


def derivative(*op_types):
    """Register the decorated derivative ``fn(x, y, **attributes) → dy/dx`` as the rule of the
    unary ``op_types``: dx = dy · fn(...), with ``x``, ``y`` as :class:`Expr`.

    Example: ``@derivative("Sigmoid")`` above ``def sigmoid(x, y): return y * (1 - y)``.
    """

    def register(slope_of):
        names = [p.name for p in inspect.signature(slope_of).parameters.values()][2:]

        def backward(ctx, node, dy):
            x, y = (Expr(ctx, name, like=node.input[0]) for name in (node.input[0], node.output[0]))
            given = attrs(node)
            slope = slope_of(x, y, **{k: given[k] for k in names if k in given})
            return ctx.op("Mul", dy, slope.name)

        backward.__name__ = backward.__qualname__ = slope_of.__name__
        backward.__doc__ = slope_of.__doc__
        rule(*op_types)(backward)
        return slope_of

    return register


__all__ = ["Expr", "derivative", "where"]
