"""The package layout: every module imports, tregpd modules do not import each other in a cycle at module level,
and model/ (the simulator core) imports nothing from fitting/ or scenarios/ (which build on it).

The import graph is read from each file's ``ast`` (no import is executed for it): the edges are the
``import`` / ``from ... import`` statements at module level (also inside a top-level ``if``/``try``, but not
inside functions or classes, and not under ``if TYPE_CHECKING``).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tregpd

ROOT = Path(tregpd.__file__).resolve().parent
SKIP_DIRS = {"tests", "benchmarks", "build", "dist", "data", "library", "__pycache__"}
#: files that are not modules: model/_engine.py is a code template that model/codegen.py appends to the code it
#: generates for each structure
NOT_MODULES = {"tregpd.model._engine"}


def package_modules() -> dict[str, Path]:
    """{dotted module name: file} for every module of the tregpd package (tests and benchmarks excluded)."""
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(not p.isidentifier() for p in parts):
            continue
        name = ".".join(["tregpd", *parts])
        if name not in NOT_MODULES:
            mods[name] = path
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(body, top_level: bool):
    """Import statements in ``body``: at module level only (``top_level``), or anywhere."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            if not top_level:
                yield from _statements(ast.iter_child_nodes(node), top_level)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _statements(node.orelse, top_level)
        else:
            yield from _statements(ast.iter_child_nodes(node), top_level)


def imported_modules(name: str, path: Path, known: set[str], top_level: bool = True) -> set[str]:
    """tregpd modules imported by module ``name`` (file ``path``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _statements(tree.body, top_level):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from pkg import sub" imports the submodule pkg.sub when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        for t in targets:
            # "import tregpd.model.simulate" -> the deepest known module named
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        colour[start] = GREY
        path = [start]
        while stack:
            node, children = stack[-1]
            for child in children:
                if colour.get(child, BLACK) == GREY:
                    return path[path.index(child):] + [child]
                if colour.get(child) == WHITE:
                    colour[child] = GREY
                    path.append(child)
                    stack.append((child, iter(sorted(graph[child]))))
                    break
            else:
                colour[node] = BLACK
                path.pop()
                stack.pop()
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_graph_sees_relative_and_absolute_imports():
    mods = package_modules()
    known = set(mods)
    edges = imported_modules("tregpd.scenarios.questions", mods["tregpd.scenarios.questions"], known)
    assert {"tregpd.errors", "tregpd.io", "tregpd.scenarios.runner", "tregpd.scenarios.schema"} <= edges


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(package_modules())
    assert {"tregpd.errors", "tregpd.io", "tregpd.model.simulate", "tregpd.scenarios.comparison"} <= set(names)
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "print('ok', len(sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


def test_no_import_cycle_at_module_level():
    mods = package_modules()
    known = set(mods)
    graph = {name: imported_modules(name, path, known) for name, path in mods.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle among tregpd modules: " + " -> ".join(cycle)


def test_questions_and_runner_do_not_import_each_other():
    """Not even inside functions: what both need is in scenarios/comparison.py."""
    mods = package_modules()
    known = set(mods)
    q = imported_modules("tregpd.scenarios.questions", mods["tregpd.scenarios.questions"], known, top_level=False)
    r = imported_modules("tregpd.scenarios.runner", mods["tregpd.scenarios.runner"], known, top_level=False)
    assert not ("tregpd.scenarios.runner" in q and "tregpd.scenarios.questions" in r)
    assert "tregpd.scenarios.questions" not in r


def test_model_imports_nothing_from_fitting_or_scenarios():
    """The simulator core does not depend on what is built on it (not even inside functions); the shared
    infrastructure (errors, atomic writes, provenance) is at the package top."""
    mods = package_modules()
    known = set(mods)
    bad = {}
    for name, path in mods.items():
        if not name.startswith("tregpd.model"):
            continue
        up = sorted(m for m in imported_modules(name, path, known, top_level=False)
                    if m.startswith(("tregpd.fitting", "tregpd.scenarios", "tregpd.pipeline", "tregpd.cli")))
        if up:
            bad[name] = up
    assert not bad, f"model/ modules importing fitting/, scenarios/ or the CLI: {bad}"


def test_shared_infrastructure_is_at_the_top():
    import tregpd.errors
    import tregpd.io
    import tregpd.model.errors
    import tregpd.model.io
    assert tregpd.model.errors.TregpdError is tregpd.errors.TregpdError
    assert tregpd.model.errors.ScenarioError is tregpd.errors.ScenarioError
    assert tregpd.model.io.atomic_write_text is tregpd.io.atomic_write_text
    mods = package_modules()
    known = set(mods)
    for name, path in mods.items():
        if name.startswith(("tregpd.fitting", "tregpd.scenarios")) or name == "tregpd.cli":
            used = imported_modules(name, path, known, top_level=False)
            assert not used & {"tregpd.model.errors", "tregpd.model.io"}, name
