"""Each package names its public surface in ``__all__``, and no module reaches into another
module's private (``_name``) definitions."""
import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "engine").rglob("__init__.py"))
SOURCES = sorted((ROOT / "engine").rglob("*.py")) + [ROOT / "cli.py"]


def _private(name):
    return name.startswith("_") and not name.startswith("__")


def private_crossings(path):
    """``module: name`` for each private name that ``path`` imports from, or reads off, an engine module."""
    tree = ast.parse(path.read_text(), str(path))
    engine_names, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine"):
            for alias in node.names:
                engine_names.add(alias.asname or alias.name)
                if _private(alias.name):
                    found.append(f"{node.module}: {alias.name}")
        elif isinstance(node, ast.Import):
            engine_names.update((a.asname or a.name).split(".")[0] for a in node.names
                                if a.name.startswith("engine"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in engine_names):
            found.append(f"{node.value.id}: {node.attr}")
    return found


def test_the_scan_finds_private_imports_and_attribute_reads(tmp_path):
    source = tmp_path / "user.py"
    source.write_text("from engine.data.files import _secret, public\nimport engine.graph.normalize as nz\n"
                      "from engine.graph import editing\nnz._hidden(editing._also, public._attr, self._own, nz.__name__)\n")
    assert sorted(private_crossings(source)) == ["editing: _also", "engine.data.files: _secret", "nz: _hidden",
                                                 "public: _attr"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_declares_all_and_each_name_exists(package):
    module = importlib.import_module(package)
    assert isinstance(getattr(module, "__all__", None), list) and module.__all__, f"{package} has no __all__"
    namespace = {}
    exec(f"from {package} import *", namespace)  # imports the submodules it names, fails on a missing name
    assert set(module.__all__) <= set(namespace)


def test_no_module_imports_a_private_name_from_another():
    crossings = {str(p.relative_to(ROOT)): found for p in SOURCES if (found := private_crossings(p))}
    assert not crossings, f"private names used across modules: {crossings}"
