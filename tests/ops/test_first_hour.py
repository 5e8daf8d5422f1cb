"""A new user's first hour, end to end: their own dataset from a relative path, a run with no LLM
watched in an 80-column terminal, and a result folder whose model loads in a fresh interpreter.

The run is Phase 1 only with the rule-based planner and tiny recipes (a minute or two on a
CPU); it is captured under a real pseudo-terminal of 80 columns, so the live progress (each
running evaluation's epoch) is what a person sees, and no service log line reaches the screen.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import fcntl
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import agentnas_cmd

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

TOML = """name = "where_square"
description = "Which third of a noisy 12x12 image holds the bright square."
input_shape = [1, 12, 12]
output_shape = [3]
loss = "cross_entropy"
metric = "error_pct"

[files]
train_x = "data/train_x.npy"
train_y = "data/train_y.npy"
valid_x = "data/valid_x.npy"
valid_y = "data/valid_y.npy"
test_x = "data/test_x.npy"
test_y = "data/test_y.npy"
"""

CHECK = """
import importlib.util, json, sys
import numpy as np
import torch

result, data = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location("winner", f"{result}/model.py")
winner = importlib.util.module_from_spec(spec)
spec.loader.exec_module(winner)
model = winner.load()
x = torch.tensor(np.load(f"{data}/test_x.npy"))
y = np.load(f"{data}/test_y.npy")
with torch.no_grad():
    predicted = model(x).argmax(1).numpy()
print(json.dumps({"error_pct": float(100.0 * (predicted != y).mean()),
                  "agentnas_imported": any(m.startswith("agentnas") for m in sys.modules)}))
"""


def write_dataset(folder: Path) -> None:
    rng = np.random.default_rng(0)
    (folder / "data").mkdir(parents=True)
    for split, n in (("train", 600), ("valid", 200), ("test", 200)):
        x = rng.normal(0.0, 1.0, size=(n, 1, 12, 12)).astype(np.float32)
        y = rng.integers(0, 3, size=n).astype(np.int64)
        for i, label in enumerate(y):
            top = rng.integers(0, 9)
            x[i, 0, top:top + 4, 4 * label:4 * label + 4] += 1.5
        np.save(folder / "data" / f"{split}_x.npy", x)
        np.save(folder / "data" / f"{split}_y.npy", y)
    (folder / "task.toml").write_text(TOML)


def run_in_terminal(argv: list[str], cwd: Path, columns: int = 80, timeout: float = 800) -> tuple[int, str]:
    """Run `argv` with a pseudo-terminal of `columns` columns as its stdout and stderr."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(argv, cwd=cwd, stdin=secondary, stdout=secondary, stderr=secondary, env={**env, "TERM": "xterm"},
                            close_fds=True)
    os.close(secondary)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                data = os.read(primary, 65536)
            except OSError:  # the terminal closed: every writer is gone
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(primary)
    proc.wait(timeout=60)
    return proc.returncode, b"".join(chunks).decode("utf-8", errors="replace")


def test_own_dataset_from_a_relative_path_with_no_llm_in_an_80_column_terminal(tmp_path):
    work = tmp_path / "work"
    write_dataset(work / "ds")
    home = tmp_path / "home"
    config = tmp_path / "small.toml"
    config.write_text("[phase1]\nbudget = 2\nn_parallel = 2\ntop_k_full = 1\nrule_epochs = 3\n"
                      "[trainer]\nconcurrency = 2\n")
    code, screen = run_in_terminal(agentnas_cmd("--home", str(home), "--config", str(config), "run", "ds/task.toml",
                                                "--phases", "1", "--llm", "none"), cwd=work)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)  # the live region's cursor moves
    assert code == 0, plain[-4000:]
    assert re.search(r"epoch \d+/\d+", plain), "no per-epoch progress on the screen"
    assert "result of" in plain and "test error" in plain and "(lower is better)" in plain
    assert "a constant guess scores" in plain and "result folder:" in plain
    assert not [line for line in plain.splitlines() if line.lstrip().startswith('{"')], "a JSON log line on the screen"
    # the result folder: the winner loads in a fresh interpreter with torch alone and scores what was recorded
    (result,) = list((home / "runs").glob("*/result"))
    metrics = json.loads((result / "metrics.json").read_text())
    assert metrics["metric"] == "error_pct" and metrics["direction"] == "lower is better"
    checked = subprocess.run([sys.executable, "-c", CHECK, str(result), str(work / "ds" / "data")],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    scored = json.loads(checked.stdout)
    assert not scored["agentnas_imported"]
    assert scored["error_pct"] == pytest.approx(metrics["test_metric"], abs=1e-6)
