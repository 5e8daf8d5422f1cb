"""The CLI's bad-input paths: one line on stderr, exit status 2, nothing lost."""

import time

import pytest

from agentnas.bus import messages as m
from agentnas.store.log import EventLog
from tests.conftest import run_cli

S = m.Sender(agent="t")


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    with EventLog(h / "events.sqlite") as log:
        log.append([m.make_event(m.RunRequested(task="addigits"), run_id="r1", sender=S),
                    m.make_event(m.RunStarted(), run_id="r1", sender=S),
                    m.make_event(m.EvaluationCompleted(eval_id="e1", status="ok", val_metric=4.5, arch_id="arch_001"), run_id="r1", sender=S)])
    return h


def test_unreachable_nats_url_fails_fast(tmp_path):
    start = time.monotonic()
    result = run_cli("--home", str(tmp_path), "up", "--nats-url", "nats://127.0.0.1:9")
    assert time.monotonic() - start < 8  # 5 s deadline + interpreter start
    assert_one_line_error(result, "cannot reach NATS at nats://127.0.0.1:9")


def test_missing_nats_server_binary(tmp_path):
    result = run_cli("--home", str(tmp_path), "up", env={"AGENTNAS_NATS_SERVER": str(tmp_path / "no-such-binary")})
    assert_one_line_error(result, "nats-server binary not found", "no-such-binary")


def test_unwritable_home(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("--home", str(blocker / "home"), "up", "--for", "1")
    assert_one_line_error(result, "home folder", "is not writable")


def test_unknown_run(home):
    for command in (["status", "nope"], ["events", "nope"]):
        assert_one_line_error(run_cli("--home", str(home), *command), "run 'nope' does not exist")


def test_no_log_yet(tmp_path):
    assert_one_line_error(run_cli("--home", str(tmp_path), "runs"), "no event log at")


def test_corrupted_log_is_reported_and_left_alone(tmp_path):
    (tmp_path / "events.sqlite").write_bytes(b"garbage" * 1000)
    for command in (["runs"], ["status", "r1"], ["events", "r1"]):
        assert_one_line_error(run_cli("--home", str(tmp_path), *command), "not an SQLite event log")
    assert (tmp_path / "events.sqlite").read_bytes() == b"garbage" * 1000


def test_bad_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[phase1]\nbudget = 'lots'\n")
    assert_one_line_error(run_cli("--config", str(cfg), "config", "show"), "phase1.budget", str(cfg))


def test_unknown_kind_filter(home):
    assert_one_line_error(run_cli("--home", str(home), "events", "r1", "--kind", "run.exploded"), "unknown kind")


def test_runs_status_events(home):
    runs = run_cli("--home", str(home), "runs")
    assert runs.returncode == 0 and "r1" in runs.stdout and "running" in runs.stdout
    status = run_cli("--home", str(home), "status", "r1")
    assert status.returncode == 0 and "arch_001" in status.stdout and "addigits" in status.stdout
    events = run_cli("--home", str(home), "events", "r1", "--kind", "evaluation.completed", "--json")
    assert events.returncode == 0
    assert events.stdout.count("\n") == 1 and '"val_metric": 4.5' in events.stdout


def test_config_show_reflects_file_and_is_valid_toml(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[phase1]\nbudget = 12\n")
    shown = run_cli("--config", str(cfg), "config", "show")
    assert shown.returncode == 0 and "budget = 12" in shown.stdout
    again = tmp_path / "again.toml"
    again.write_text(shown.stdout)
    assert run_cli("--config", str(again), "config", "show").stdout == shown.stdout


GOOD_MODEL = """
import torch
from torch import nn

class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 28))

    def forward(self, x):
        return self.net(x)
"""


def test_check_model(tmp_path):
    good = tmp_path / "good.py"
    good.write_text(GOOD_MODEL)
    ok = run_cli("--home", str(tmp_path), "check-model", str(good), "--task", "addigits", timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok" in ok.stdout and "params 476 " in ok.stdout  # 3*8*9+8 + 8*28+28 and "FLOPs" in ok.stdout
    wrong = run_cli("--home", str(tmp_path), "check-model", str(good), "--task", "multdigits", timeout=120)
    assert wrong.returncode == 1 and "rejected" in wrong.stdout and "(8, 10)" in wrong.stdout
    hostile = tmp_path / "hostile.py"
    hostile.write_text("import subprocess\n" + GOOD_MODEL)
    refused = run_cli("--home", str(tmp_path), "check-model", str(hostile), "--task", "addigits", timeout=120)
    assert refused.returncode == 1 and "subprocess" in refused.stdout
    assert_one_line_error(run_cli("--home", str(tmp_path), "check-model", str(good), "--task", "nope"), "unknown task 'nope'")
    assert_one_line_error(run_cli("--home", str(tmp_path), "check-model", str(tmp_path / "missing.py"), "--task", "addigits"),
                          "cannot read model file")
    assert_one_line_error(run_cli("--home", str(tmp_path), "check-model", str(good), "--task", "addigits", "--device", "tpu"),
                          "device 'tpu'")


def test_tasks_lists_builtins():
    out = run_cli("tasks")
    assert out.returncode == 0
    for name in ("addigits", "multdigits", "digitwave", "digitsmooth"):
        assert name in out.stdout
