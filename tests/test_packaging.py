"""The wheel installs everything under `agentnas`, with the prompt files, and no generic top-level module."""

import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_wheel_contents(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("agentnas-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"agentnas", next(t for t in top if t.endswith(".dist-info"))}
    for package in ("sandbox", "bus", "store", "agents", "trainer_daemon", "ops", "prompts"):
        assert f"agentnas/{package}/__init__.py" in names
    assert "agentnas/bus/messages.py" in names and "agentnas/ops/cli.py" in names
    assert "agentnas/sandbox/audit.py" in names and "agentnas/sandbox/walls.py" in names
    prompt_files = [n for n in names if n.startswith("agentnas/prompts/") and not n.endswith(".py")]
    assert prompt_files, "prompt templates must ship in the wheel"
    assert not any(n.startswith("tests/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "agentnas = agentnas.ops.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
