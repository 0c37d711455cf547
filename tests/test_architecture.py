"""The architecture stays as ARCHITECTURE.md draws it: no import cycles, small modules, the layers kept.

grimp reads every import statement (those inside functions too); a package's ``__init__`` is a
module of its own, and ``from package import submodule`` is an import of the submodule.
"""

from __future__ import annotations

from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "headstart"
MAX_LINES = 450


def _graph():
    return grimp.build_graph("headstart", include_external_packages=False, cache_dir=None)


def import_cycles(graph) -> list[list[str]]:
    """Every strongly connected set of modules that import one another (Tarjan), and self-imports."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    group.append(m)
                    if m == node:
                        break
                if len(group) > 1 or node in edges[node]:
                    cycles.append(sorted(group))
    return cycles


def test_every_folder_of_modules_is_a_package():
    """A folder without ``__init__.py`` is a namespace package that grimp and import-linter skip."""
    missing = [
        str(d.relative_to(ROOT))
        for d in PACKAGE.rglob("*")
        if d.is_dir() and any(d.glob("*.py")) and not (d / "__init__.py").exists()
    ]
    assert missing == []


def test_no_import_cycles():
    graph = _graph()
    assert len(graph.modules) > 50  # the whole package was read, not a part of it
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    class Graph:
        modules = {"a", "b", "c", "d"}

        def find_modules_directly_imported_by(self, m):
            return {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}[m]

    assert sorted(import_cycles(Graph())) == [["a", "b", "c"], ["d"]]


def test_no_module_is_long():
    lines = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {p: n for p, n in lines.items() if n > MAX_LINES} == {}


def test_every_module_names_its_job():
    """Each module opens with a docstring whose first line says what it does."""
    import ast

    bare = []
    for p in PACKAGE.rglob("*.py"):
        doc = ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))
        if not doc or not doc.splitlines()[0].strip():
            bare.append(str(p.relative_to(ROOT)))
    assert bare == []


def test_the_layers_contract_holds():
    """The import-linter contract of pyproject.toml (what ``lint-imports`` checks in .ci/run)."""
    pytest.importorskip("importlinter")
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
