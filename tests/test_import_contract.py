"""Dependency direction (DESIGN.md): sandbox <- bus <- store <- agents | trainer_daemon <- ops.

Every import statement counts, wherever it is (module level, inside a function, under
TYPE_CHECKING), and so does a module path written in a string ("pkg.mod:Class" for
importlib, "-m pkg.mod" for a child process):
- a package imports, or names, only itself and the packages below it; nothing imports ops;
  torch only in trainer_daemon (and sandboxed children), LLM clients only in agents;
- inside a package the modules import each other as a tree: no cycle, not even one hidden
  by an import inside a function.

The checks are functions of a folder tree, so the tests below also plant violations in a
temporary tree and show that they are reported.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.conftest import REPO

NAMESPACE = "agentnas"
ALLOWED = {  # package -> the packages it may import (besides itself)
    "sandbox": set(),  # the ground floor: the walls of every sandboxed child
    "bus": {"sandbox"},
    "store": {"bus", "sandbox"},
    "agents": {"bus", "store", "sandbox"},
    "trainer_daemon": {"bus", "store", "sandbox"},
    "ops": {"sandbox", "bus", "store", "agents", "trainer_daemon"},
}
DATA_PACKAGES = {"prompts"}  # template files, no code: anyone may read them
THIRD_PARTY_ONLY_IN = {
    "torch": {"trainer_daemon"},
    "anthropic": {"agents"},
    "openai": {"agents"},
    "autogen_agentchat": {"agents"},
    "autogen_ext": {"agents"},
    "autogen_core": {"agents"},
}
# A whole string that is a module path: agentnas.PACKAGE[.module...][:Attribute[.attr...]]
MODULE_PATH = re.compile(r"agentnas(\.\w+)+(:\w+(\.\w+)*)?")


class Import(NamedTuple):
    line: int
    name: str  # absolute; `from p import m` is p.m when m is a module, else p
    scope: str  # the enclosing function or class ("" = module level)


# --- reading a tree --------------------------------------------------------------------------


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file for the folder `root/package`, installed as agentnas.<package>."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root / package).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((NAMESPACE, package, *parts))] = path
    return modules


def all_modules(root: Path) -> dict[str, Path]:
    """Every module of the packages present under root (sandbox may not exist yet)."""
    return {name: path for package in ALLOWED if (root / package).is_dir()
            for name, path in package_modules(root, package).items()}


def _scoped(node: ast.AST, scope: str = "") -> Iterator[tuple[ast.AST, str]]:
    for child in ast.iter_child_nodes(node):
        yield child, scope
        inner = scope
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inner = f"{scope}.{child.name}" if scope else child.name
        yield from _scoped(child, inner)


def imports_of(path: Path, module: str, known: Mapping[str, Path]) -> list[Import]:
    """Every import statement anywhere in the file, resolved to absolute names."""
    found = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node, scope in _scoped(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(node.lineno, alias.name, scope) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append(Import(node.lineno, submodule if submodule in known else base, scope))
    return found


def module_paths_in_strings(path: Path) -> list[tuple[int, str]]:
    """String constants that are a whole module path (`agentnas.agents.planner:LlmPlanner`)."""
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_PATH.fullmatch(node.value)
    ]


# --- the direction between packages -------------------------------------------------------------


def _may_use(package: str, target: str) -> bool:
    return target == package or target in ALLOWED[package] or target in DATA_PACKAGES


def direction_problems(root: Path, package: str, path: Path, known: Mapping[str, Path]) -> list[str]:
    """What the file imports or names against the dependency direction, one line each."""
    where = path.relative_to(root)
    module = next(name for name, p in known.items() if p == path)
    below = ", ".join(sorted(ALLOWED[package])) or "no other agentnas package"
    problems = []
    for line, name, _scope in imports_of(path, module, known):
        parts = name.split(".")
        if parts[0] in ALLOWED or parts[0] in DATA_PACKAGES:
            problems.append(f"{where}:{line} imports '{name}'; use the agentnas.{name} namespace")
        elif parts[0] == NAMESPACE and len(parts) > 1 and not _may_use(package, parts[1]):
            problems.append(f"{where}:{line} imports {name}: {package} may import only {below}")
        allowed_in = THIRD_PARTY_ONLY_IN.get(parts[0])
        if allowed_in is not None and package not in allowed_in:
            problems.append(f"{where}:{line} imports {parts[0]}, allowed only in {', '.join(sorted(allowed_in))}")
    for line, text in module_paths_in_strings(path):
        target = text.split(".")[1].partition(":")[0]
        if (target in ALLOWED or target in DATA_PACKAGES) and not _may_use(package, target):
            problems.append(
                f"{where}:{line} names '{text}' in a string, which imports it all the same:"
                f" {package} may import only {below}"
            )
    return problems


def assert_direction(root: Path, package: str, path: Path, known: Mapping[str, Path]) -> None:
    problems = direction_problems(root, package, path, known)
    assert not problems, "against the dependency direction:\n" + "\n".join(problems)


# --- no cycle inside a package -------------------------------------------------------------------


def import_graph(modules: Mapping[str, Path]) -> dict[str, dict[str, Import]]:
    """module -> {module of the same set it imports: the first statement that does}."""
    graph: dict[str, dict[str, Import]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        for imp in imports_of(path, module, modules):
            if imp.name in modules and imp.name != module:
                edges.setdefault(imp.name, imp)
    return graph


def _rings(graph: Mapping[str, Mapping[str, object]]) -> list[set[str]]:
    """Groups of modules that import each other, directly or not (Tarjan's strongly
    connected components with more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    rings: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            ring = {stack.pop()}
            while node not in ring:
                ring.add(stack.pop())
            if len(ring) > 1:
                rings.append(ring)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return rings


def _shortest_cycle(graph: Mapping[str, Mapping[str, object]], ring: set[str]) -> list[str]:
    """Breadth first from the ring's first module back to itself, inside the ring."""
    start = min(ring)
    paths = {start: [start]}
    frontier = [start]
    while True:
        for node in frontier:
            if start in graph[node]:
                return paths[node] + [start]
        following = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ in ring and succ not in paths:
                    paths[succ] = paths[node] + [succ]
                    following.append(succ)
        frontier = following


def cycles(graph: Mapping[str, Mapping[str, object]]) -> list[tuple[list[str], list[str]]]:
    """Per ring of modules that import each other: one shortest cycle (a -> ... -> a) and
    all the ring's modules."""
    return sorted((_shortest_cycle(graph, ring), sorted(ring)) for ring in _rings(graph))


def cycle_problems(root: Path, package: str) -> list[str]:
    modules = package_modules(root, package)
    graph = import_graph(modules)
    problems = []
    for cycle, ring in cycles(graph):
        steps = []
        for here, there in zip(cycle, cycle[1:]):
            imp = graph[here][there]
            scope = f", inside {imp.scope}" if imp.scope else ""
            steps.append(f"  {modules[here].relative_to(root)}:{imp.line} imports {there}{scope}")
        also = f" (one cycle of several among {', '.join(ring)})" if len(ring) > len(cycle) - 1 else ""
        problems.append(" -> ".join(cycle) + also + "\n" + "\n".join(steps))
    return problems


def assert_no_cycles(root: Path, package: str) -> None:
    problems = cycle_problems(root, package)
    assert not problems, (
        f"import cycle inside agentnas.{package} (its modules must import each other as a tree;"
        " move what both sides need into a module below them):\n" + "\n".join(problems)
    )


# --- the repository --------------------------------------------------------------------------------

KNOWN = all_modules(REPO)
PRESENT = [package for package in ALLOWED if (REPO / package).is_dir()]


def repo_modules() -> Iterator[tuple[str, Path]]:
    for package in PRESENT:
        for path in package_modules(REPO, package).values():
            yield package, path


@pytest.mark.parametrize(
    "package, path", list(repo_modules()), ids=lambda v: str(v.relative_to(REPO)) if isinstance(v, Path) else v
)
def test_dependency_direction(package, path):
    assert_direction(REPO, package, path, KNOWN)


# Cycles already in the tree when this check came, each to be broken by its package's owner;
# strict: once one is gone the test reports XPASS and its entry must go too.
KNOWN_CYCLES: dict[str, str] = {}  # package -> why a cycle is tolerated for now (none is)


@pytest.mark.parametrize("package", [
    pytest.param(package, marks=pytest.mark.xfail(strict=True, reason=KNOWN_CYCLES[package]))
    if package in KNOWN_CYCLES else package
    for package in PRESENT
])
def test_no_import_cycle_inside(package):
    assert_no_cycles(REPO, package)


# --- the checks catch what they should (planted trees) ------------------------------------------------


def plant(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("b_imports_a", [
    "from agentnas.agents.a import load\n",
    "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from agentnas.agents import a as other\n",
], ids=["module-level", "type-checking"])
def test_a_cycle_hidden_inside_a_function_is_reported(tmp_path, b_imports_a):
    plant(tmp_path, {
        "agents/__init__.py": "",
        "agents/a.py": "def load():\n    from agentnas.agents import b as helper\n\n    return helper\n",
        "agents/b.py": b_imports_a,
        "agents/c.py": "from agentnas.agents import a, b\n",  # above the cycle, not in it
    })
    with pytest.raises(AssertionError) as failure:
        assert_no_cycles(tmp_path, "agents")
    message = str(failure.value)
    assert "agentnas.agents.a -> agentnas.agents.b -> agentnas.agents.a" in message
    assert "agents/a.py:2 imports agentnas.agents.b, inside load" in message
    assert "agentnas.agents.c" not in message


def test_no_cycle_in_a_tree(tmp_path):
    plant(tmp_path, {
        "agents/__init__.py": "",
        "agents/low.py": "import json\n",
        "agents/mid.py": "from agentnas.agents.low import x\n",
        "agents/top.py": "def f():\n    from agentnas.agents import low, mid\n",
    })
    assert_no_cycles(tmp_path, "agents")


def test_a_module_path_in_a_string_is_an_import(tmp_path):
    plant(tmp_path, {
        "bus/__init__.py": "",
        "bus/config.py": 'PLANNER = "agentnas.agents.planner:LlmPlanner"\nlog_name = "agentnas.bus"\n',
        "agents/__init__.py": "",
        "agents/planner.py": "class LlmPlanner: ...\n",
        "agents/code_runner.py": 'ARGV = ["python", "-m", "agentnas.agents.code_runner"]\n',
        "trainer_daemon/__init__.py": "",
        "trainer_daemon/sandbox.py": 'ARGV = ["-m", "agentnas.trainer_daemon.worker"]\n',
        "trainer_daemon/worker.py": "",
        "ops/__init__.py": "",
        "ops/up.py": 'SERVICES = ["agentnas.trainer_daemon.worker", "agentnas.agents.planner:LlmPlanner"]\n',
    })
    known = all_modules(tmp_path)
    with pytest.raises(AssertionError) as failure:
        assert_direction(tmp_path, "bus", tmp_path / "bus/config.py", known)
    assert "bus/config.py:1 names 'agentnas.agents.planner:LlmPlanner' in a string" in str(failure.value)
    assert "agentnas.bus'" not in str(failure.value)  # a logger named after its own package is fine
    # A child process of the same package, and ops naming anything, are fine.
    assert_direction(tmp_path, "agents", tmp_path / "agents/code_runner.py", known)
    assert_direction(tmp_path, "trainer_daemon", tmp_path / "trainer_daemon/sandbox.py", known)
    assert_direction(tmp_path, "ops", tmp_path / "ops/up.py", known)
    # ... but agents naming the trainer's worker breaks the direction.
    plant(tmp_path, {"agents/launch.py": 'ARGV = ["-m", "agentnas.trainer_daemon.worker"]\n'})
    known = all_modules(tmp_path)
    with pytest.raises(AssertionError, match="agents/launch.py:1 names 'agentnas.trainer_daemon.worker'"):
        assert_direction(tmp_path, "agents", tmp_path / "agents/launch.py", known)


def test_imports_resolve_to_modules(tmp_path):
    plant(tmp_path, {
        "agents/__init__.py": "",
        "agents/prompts.py": "",
        "agents/user.py": (
            "from agentnas.agents import prompts as p\n"
            "from agentnas.agents.prompts import render\n"
            "from agentnas.agents import VERSION\n"
            "from . import prompts\n"
        ),
    })
    known = all_modules(tmp_path)
    found = imports_of(tmp_path / "agents/user.py", "agentnas.agents.user", known)
    assert [imp.name for imp in found] == [
        "agentnas.agents.prompts", "agentnas.agents.prompts", "agentnas.agents", "agentnas.agents.prompts",
    ]
