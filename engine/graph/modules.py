"""Which torch module produced each tensor, as the exporter recorded it (onnx only).

- dynamo (``torch.onnx.export(..., dynamo=True)``): node metadata ``pkg.torch.onnx.name_scopes``,
  e.g. ``['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_1']``: the root, the qualified module
  names, then the node's own name;
- TorchScript: node names such as ``/layer1/layer1.0/relu_1/Relu``: the scopes (qualified like
  ``layer1.0`` or relative like ``relu``), then the op; ``relu_1`` is the second call of ``relu``.

>>> module_paths(onnx.load("model.onnx"))["/layer1/relu_1/Relu_output_0"]
'layer1.relu'
"""
import ast
import re

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_REPEAT = re.compile(r"^(.+)_\d+$")


def module_paths(model):
    """``{tensor: module path}`` for the outputs of every node whose module the file records
    (ops of the root module are left out).

    >>> module_paths(model.proto)["/layer1/conv1/Conv_output_0"]
    'layer1.conv1'
    """
    scoped = {}
    for node in model.graph.node:
        scopes = _dynamo_scopes(node)
        if scopes is None:
            scopes = _torchscript_scopes(node.name)
        if scopes:
            scoped[node.name or node.output[0], node.output[0]] = scopes
    repeated = _repeat_calls(scoped.values())
    paths = {}
    for node in model.graph.node:
        scopes = scoped.get((node.name or node.output[0], node.output[0]))
        if scopes:
            path = _qualified([repeated.get((tuple(scopes[:k]), s), s) for k, s in enumerate(scopes)])
            paths.update((name, path) for name in node.output if name)
    return paths


def inside(path, module):
    """True when module ``path`` is ``module`` or one of its sub-modules.

    >>> inside("layer4.1.relu", "layer4"), inside("layer40", "layer4")
    (True, False)
    """
    return path == module or path.startswith(module + ".")


def resolve(name, paths):
    """The module that ``name`` designates: a module path (``layer4``, ``layer4.1``) or its last
    components (``1.relu`` when only ``layer4.1.relu`` ends so). Returns ``(module, [])``, or
    ``(None, candidates)``: several modules end so (ambiguous) or, when none does, none.

    >>> paths = {"a": "layer4.0.relu", "b": "layer4.1.relu"}
    >>> resolve("layer4", paths), resolve("relu", paths)
    (('layer4', []), (None, ['layer4.0.relu', 'layer4.1.relu']))
    """
    modules = modules_of(paths)
    if name in modules:
        return name, []
    ending = sorted(m for m in modules if m.endswith("." + name))
    return (ending[0], []) if len(ending) == 1 else (None, ending)


def modules_of(paths):
    """Every module path and its parents, sorted (what close matches are drawn from).

    >>> modules_of({"t": "layer1.0.relu"})
    ['layer1', 'layer1.0', 'layer1.0.relu']
    """
    found = set()
    for path in paths.values():
        parts = path.split(".")
        found.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
    return sorted(found)


def _dynamo_scopes(node):
    """Module names from dynamo's metadata, root and the node's own name left out; None without it."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return [s for s in scopes[:-1] if s] if isinstance(scopes, list) else None
    return None


def _torchscript_scopes(name):
    """``/layer1/layer1.0/relu_1/Relu`` → ``['layer1', 'layer1.0', 'relu_1']`` (the op dropped)."""
    if not name.startswith("/"):
        return []
    return [part for part in name.split("/")[1:-1] if part]


def _repeat_calls(all_scopes):
    """``{(parent scopes, 'relu_1'): 'relu'}`` where a scope ``relu_1`` sits beside ``relu`` under one
    parent: TorchScript's name for a second call of module ``relu``."""
    children = {}
    for scopes in all_scopes:
        for k, scope in enumerate(scopes):
            children.setdefault(tuple(scopes[:k]), set()).add(scope)
    repeated = {}
    for parent, names in children.items():
        for scope in names:
            match = _REPEAT.match(scope)
            if match and match.group(1) in names:
                repeated[parent, scope] = match.group(1)
    return repeated


def _qualified(scopes):
    """Scopes as one dotted module path. A scope that extends the one before it (``layer1`` then
    ``layer1.0``; ``c1`` then ``c1.0``) names a child relative to the same parent; any other is
    relative to the module before it (``conv1`` in ``layer1.0``).

    >>> _qualified(["layers.0", "layers.0.0", "c1", "c1.0"])
    'layers.0.0.c1.0'
    """
    base = path = previous = ""
    for scope in scopes:
        if not (previous and scope.startswith(previous + ".")):
            base = path
        path = f"{base}.{scope}" if base else scope
        previous = scope
    return path
