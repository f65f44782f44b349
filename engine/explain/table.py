"""Method tables: a method is a function whose parameter names say what it needs, as pytest
fixtures do; the caller hands each method the inputs it names and nothing else.

>>> def doubled(x, scale=2):
...     "Twice the input."
...     return scale * x
>>> entry = Method("doubled", doubled)
>>> entry.needs, list(entry.parameters), entry.summary
(('x',), ['x', 'scale'], 'Twice the input.')
>>> entry.given({"x": lambda at: at + 1, "unused": lambda at: 1 / 0}, 2)
{'x': 3}
"""
import inspect
from dataclasses import dataclass
from functools import cached_property
from typing import Callable


@dataclass(frozen=True)
class Method:
    """A table entry: ``name`` (as the CLI spells it) and ``fn``; calling the entry calls ``fn``.

    >>> Method("abs", abs)(-2)
    2
    """

    name: str
    fn: Callable

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    @cached_property
    def signature(self):
        """``fn``'s signature, read once (a call that binds arguments reuses it)."""
        return inspect.signature(self.fn)

    @property
    def parameters(self):
        """``fn``'s parameters by name (its signature)."""
        return self.signature.parameters

    @cached_property
    def needs(self):
        """Names of the inputs ``fn`` cannot do without (parameters without a default), in order."""
        return tuple(n for n, p in self.parameters.items() if p.default is inspect.Parameter.empty)

    @property
    def summary(self):
        """The first line of ``fn``'s docstring: what the method is, in one line."""
        return (self.fn.__doc__ or "").strip().split("\n")[0]

    def given(self, inputs, *args):
        """Keyword arguments for ``fn``: each input it names, from ``inputs`` {name: function making
        the value from ``args``} (only those named are made: some cost a session or a pass)."""
        return {name: inputs[name](*args) for name in self.parameters if name in inputs}


def register(table, vocabulary, kind=Method, skip=()):
    """A decorator factory ``register(name, **fields)`` that adds ``kind(name, fn, **fields)`` to
    ``table`` and returns the entry; every input ``fn`` needs (beyond ``skip``, inputs every method
    gets) must be in ``vocabulary``, the inputs the caller knows how to make.

    >>> METHODS = {}
    >>> cam_like = register(METHODS, ("gradients",), skip=("activations",))
    >>> @cam_like("mean")
    ... def mean(activations, gradients):
    ...     "Mean gradient."
    ...     return gradients.mean()
    >>> list(METHODS), METHODS["mean"].needs
    (['mean'], ('activations', 'gradients'))
    """
    def named(name, **fields):
        def add(fn):
            entry = kind(name, fn, **fields)
            unknown = [n for n in entry.needs if n not in vocabulary and n not in skip]
            if unknown:
                raise TypeError(f"method '{name}' needs {unknown}: inputs are {', '.join(vocabulary)}")
            table[name] = entry
            return entry
        return add
    return named
