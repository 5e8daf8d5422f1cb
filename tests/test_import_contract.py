"""Dependency direction (DESIGN.md): bus <- store <- agents | trainer_daemon <- ops.

torch only in trainer_daemon (and sandboxed children); LLM clients only in agents; nothing imports ops.
"""

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ["bus", "store", "agents", "trainer_daemon", "ops"]
ALLOWED = {
    "bus": set(),
    "store": {"bus"},
    "agents": {"bus", "store"},
    "trainer_daemon": {"bus", "store"},
    "ops": {"bus", "store", "agents", "trainer_daemon"},
}
THIRD_PARTY_ONLY_IN = {
    "torch": {"trainer_daemon"},
    "anthropic": {"agents"},
    "openai": {"agents"},
    "autogen_agentchat": {"agents"},
    "autogen_ext": {"agents"},
    "autogen_core": {"agents"},
}


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield package, path


@pytest.mark.parametrize("package, path", list(modules()), ids=lambda v: str(v.relative_to(REPO)) if isinstance(v, Path) else v)
def test_dependency_direction(package, path):
    for name in imports_of(path):
        parts = name.split(".")
        if parts[0] in PACKAGES:
            pytest.fail(f"{path.relative_to(REPO)} imports '{name}'; use the agentnas.{name} namespace")
        if parts[0] == "agentnas" and len(parts) > 1:
            target = parts[1]
            if target != package:
                assert target in ALLOWED[package], f"{path.relative_to(REPO)} may not import agentnas.{target}"
        allowed_in = THIRD_PARTY_ONLY_IN.get(parts[0])
        if allowed_in is not None:
            assert package in allowed_in, f"{path.relative_to(REPO)} imports {parts[0]}, allowed only in {allowed_in}"
