"""Measuring and deciding are separate rooms: nothing in ``prunekit.measure`` imports ``prunekit.decide``
(at import time or at call time), and the modules of ``decide/`` import each other without a circle."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import prunekit

SRC = Path(prunekit.__file__).parent


def imported_modules(source: str, module: str) -> set[str]:
    """Every ``prunekit...`` module ``source`` (the text of module ``module``; a package's own is
    ``pkg.__init__``) imports, anywhere in it (top level, ``TYPE_CHECKING`` blocks, function bodies),
    with relative imports resolved."""
    package = module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # "from . import x" imports a module x
    return {m for m in out if m.startswith("prunekit")}


def room_modules(room: str) -> dict[str, str]:
    """``{module name: source}`` for every module of ``prunekit.<room>`` (a package's as ``pkg.__init__``)."""
    return {"prunekit." + ".".join(p.relative_to(SRC).with_suffix("").parts): p.read_text()
            for p in sorted((SRC / room).rglob("*.py"))}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in ``graph`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = 2
        path.pop()
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_module_of_measure_imports_decide():
    modules = room_modules("measure")
    assert "prunekit.measure.counting" in modules and len(modules) >= 7
    bad = {m: sorted(i for i in imported_modules(src, m) if i.startswith("prunekit.decide"))
           for m, src in modules.items()}
    assert {m: i for m, i in bad.items() if i} == {}


def test_the_import_reader_sees_call_time_and_relative_imports():  # negative control
    src = "def f():\n    from ..decide.budget import budget_search\n"
    assert "prunekit.decide.budget" in imported_modules(src, "prunekit.measure.latency")
    assert "prunekit.decide.curves" in imported_modules("from .curves import Sensitivity\n", "prunekit.decide.budget")
    assert "prunekit.decide" in imported_modules("from ..decide import RatioSearch\n", "prunekit.measure.__init__")


def test_decide_has_no_import_circle():
    modules = room_modules("decide")
    names = set(modules) - {"prunekit.decide.__init__"}  # the package re-exports its modules: not a circle
    graph = {m: {i for i in imported_modules(src, m) if i in names and i != m} for m, src in modules.items()
             if m in names}
    assert cycle(graph) is None
    assert graph["prunekit.decide.budget"] >= {"prunekit.decide.curves"}
    assert graph["prunekit.decide.sensitivity"] >= {"prunekit.decide.curves"}


def test_the_circle_finder_finds_the_old_circle():  # negative control: budget <-> sensitivity, as it was
    old = {"m.budget": {"m.sensitivity"}, "m.sensitivity": {"m.budget", "m.counting"}, "m.counting": set()}
    assert cycle(old) == ["m.budget", "m.sensitivity", "m.budget"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_importing_all_of_measure_loads_nothing_of_decide(tmp_path):
    """One fresh interpreter imports every module of measure/ (if none of them together loads decide/,
    none alone does), then, as a negative control, a module that does import decide/."""
    (tmp_path / "uses_decide.py").write_text("from prunekit.measure import count\nimport prunekit.decide.budget\n")
    code = textwrap.dedent(f"""
        import importlib, json, pkgutil, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import prunekit, prunekit.measure
        loaded = lambda: sorted(m for m in sys.modules if m.startswith("prunekit.decide"))
        after_prunekit = loaded()
        names = [m.name for m in pkgutil.walk_packages(prunekit.measure.__path__, "prunekit.measure.")]
        for name in names:
            importlib.import_module(name)
        after_measure = loaded()
        import uses_decide
        print(json.dumps({{"names": names, "after_prunekit": after_prunekit, "after_measure": after_measure,
                          "control": loaded()}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "prunekit.measure.counting" in out["names"] and "prunekit.measure.latency" in out["names"]
    assert out["after_prunekit"] == [] and out["after_measure"] == []
    assert "prunekit.decide.budget" in out["control"]  # the check sees a module that does load decide/
