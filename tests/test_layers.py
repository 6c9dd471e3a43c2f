"""The import graph runs one way: experiments -> analysis, fflab; analysis imports nothing from fflab; fflab
reaches experiments only through the command line's lazy registry; experiments do not import each other; no
module uses another module's private names; and the command line's help needs no JAX."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fflab", "analysis", "experiments", "benchmarks")


def _modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            yield name, ast.parse(path.read_text(), str(path))


def _imports(name, tree):
    """``(module imported, names taken from it)`` for every import of a project module, anywhere in the file."""
    package = name.split(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module if node.level == 0 else f"{package}.{node.module}"
            if module.split(".")[0] in PACKAGES:
                yield module, [a.name for a in node.names]


def _graph():
    graph = {}
    for name, tree in _modules():
        edges = set()
        for module, names in _imports(name, tree):
            # `from pkg import sub` imports the submodule pkg.sub
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in _all_names()]
            edges.update(subs or [module])
        graph[name] = edges - {name}
    return graph


def _all_names():
    if not hasattr(_all_names, "cache"):
        _all_names.cache = {name for name, _ in _modules()}
    return _all_names.cache


def test_analysis_imports_nothing_from_fflab_or_experiments():
    for name, edges in _graph().items():
        if name.startswith("analysis"):
            bad = [e for e in edges if e.split(".")[0] in ("fflab", "experiments", "benchmarks")]
            assert not bad, f"{name} imports {bad}"


def test_fflab_imports_no_experiments_except_through_the_registry():
    for name, edges in _graph().items():
        if name.startswith("fflab"):
            # The command line stands on both sides (`fflab train --track-sharpness` uses analysis.sharpness);
            # the library modules under it import neither analysis nor the experiments.
            above = ("experiments", "benchmarks") if name in ("fflab.cli", "fflab.__main__") else (
                "experiments", "benchmarks", "analysis")
            assert not [e for e in edges if e.split(".")[0] in above], name
    cli = (ROOT / "fflab" / "cli.py").read_text()
    assert 'importlib.import_module("experiments")' in cli  # the one, lazy, way in


def test_experiments_do_not_import_each_other():
    for name, edges in _graph().items():
        if name.startswith("experiments.") and not name.startswith("experiments._"):
            others = [e for e in edges if e.startswith("experiments") and e not in ("experiments._common",)]
            assert not others, f"{name} imports {others}"


def test_no_cycles():
    graph = _graph()
    done, active = set(), []

    def visit(node):
        if node in active:
            raise AssertionError(f"import cycle: {' -> '.join([*active[active.index(node):], node])}")
        if node in done:
            return
        active.append(node)
        for nxt in graph.get(node, ()):
            if nxt in graph:
                visit(nxt)
        active.pop()
        done.add(node)

    for node in graph:
        visit(node)


def test_no_module_uses_another_modules_private_names():
    found = []
    for name, tree in _modules():
        aliases = {}
        for module, names in _imports(name, tree):
            for n in names:
                if n.startswith("_") and not n.startswith("__") and f"{module}.{n}" not in _all_names():
                    found.append(f"{name}: from {module} import {n}")
                aliases[n] = f"{module}.{n}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    aliases[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and aliases.get(node.value.id, "").split(".")[0] in PACKAGES
                    and aliases[node.value.id] != name):
                found.append(f"{name}: {node.value.id}.{node.attr}")
    assert not found, found


def test_help_and_list_load_no_jax():
    code = "import sys; from fflab import cli; cli.main(['list']); print('jax' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"
