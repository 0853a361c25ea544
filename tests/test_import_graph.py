"""The import graph of both packages: the engine stands alone, library code never imports a
command line, and no project module imports itself back through others.

The graph is read from the source with `ast`, so imports inside functions count as much as
those at the top; imports under `if TYPE_CHECKING:` never run and do not.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("domainbed", "domainbed_itl")
CLI_FOLDER = "scripts"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of both packages by dotted name (a package by its own name)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_modules(tree: ast.AST, module: str, is_package: bool,
                      known: set[str]) -> set[str]:
    """The project modules the import statements of `tree` load, wherever a statement sits
    (module level or in a function), except under TYPE_CHECKING. `from a import b` loads
    a.b when that is a module, else a."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        stack.extend(ast.iter_child_nodes(node))
    return {name for name in found if name in known and name != module}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Each project module under `root` -> the project modules it imports."""
    files = module_files(root)
    return {module: _imported_modules(ast.parse(path.read_text(), filename=str(path)), module,
                                      path.name == "__init__.py", set(files))
            for module, path in files.items()}


def is_cli(module: str) -> bool:
    return CLI_FOLDER in module.split(".")[1:]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def engine_to_extension(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((module, target) for module, targets in graph.items() for target in targets
                  if module.split(".")[0] == "domainbed"
                  and target.split(".")[0] == "domainbed_itl")


def library_to_cli(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((module, target) for module, targets in graph.items() for target in targets
                  if is_cli(target) and not is_cli(module))


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=120)


def test_the_engine_imports_with_the_extension_blocked():
    done = python("import sys; sys.modules['domainbed_itl'] = None; import domainbed.algorithms, "
                  "domainbed.scripts.train, domainbed.scripts.sweep, "
                  "domainbed.scripts.collect_results; "
                  "print('ERM' in domainbed.algorithms.ALGORITHMS, "
                  "'ERM_ITL' in domainbed.algorithms.ALGORITHMS)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


def test_no_engine_module_imports_the_extension():
    assert engine_to_extension(import_graph()) == []


def test_library_modules_never_import_a_command_line():
    assert library_to_cli(import_graph()) == []


def test_no_import_cycle_among_project_modules():
    assert cycles(import_graph()) == []


def test_the_checks_see_what_they_look_for(tmp_path):
    """A planted tree: a function-level import of the extension, a library module importing a
    command line, a TYPE_CHECKING import (ignored) and a cycle through a relative import."""
    files = {
        "domainbed/__init__.py": "",
        "domainbed/a.py": "def f():\n    import domainbed_itl.x\n",
        "domainbed/b.py": "from . import c\n",
        "domainbed/c.py": "from domainbed.d import g\n",
        "domainbed/d.py": "import domainbed.b\ng = 1\n",
        "domainbed/scripts/__init__.py": "",
        "domainbed/scripts/run.py": "from domainbed import d\n",
        "domainbed_itl/__init__.py": "",
        "domainbed_itl/x.py": "from domainbed.scripts import run\n",
        "domainbed_itl/y.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from domainbed.scripts import run\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert engine_to_extension(graph) == [("domainbed.a", "domainbed_itl.x")]
    assert library_to_cli(graph) == [("domainbed_itl.x", "domainbed.scripts.run")]
    assert cycles(graph) == [["domainbed.b", "domainbed.c", "domainbed.d"]]


def _bare_interpreter(code: str) -> subprocess.CompletedProcess:
    """`code` in an interpreter that never imported this package at start (no .pth files run)
    and reads no entry points: only an explicit import can register ITL's algorithms."""
    site_packages = [path for path in sys.path if path.endswith("site-packages")]
    setup = f"import sys; sys.path[:0] = {[str(ROOT), *site_packages]!r}; "
    return subprocess.run([sys.executable, "-S", "-c", setup + code], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DOMAINBED_NO_PLUGINS": "1"})


@pytest.mark.parametrize("imports,registered", [
    ("import domainbed_itl; from domainbed import algorithms", True),
    ("from domainbed import algorithms; import domainbed_itl", True),
    ("from domainbed import algorithms", False),
])
def test_import_domainbed_itl_registers_its_algorithms(imports, registered):
    done = _bare_interpreter(f"{imports}; print('ERM_ITL' in algorithms.ALGORITHMS)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(registered)]
    if registered:
        done = _bare_interpreter(f"{imports}; cls = algorithms.get_algorithm_class('RSC_ITL'); "
                                 "print(cls.__mro__[1].__name__, 'update' in vars(cls))")
        assert done.stdout.split() == ["RSC", "False"], done.stderr
