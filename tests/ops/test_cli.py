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
    # nothing runs on this home: a run that never ended is shown as interrupted
    assert runs.returncode == 0 and "r1" in runs.stdout and "interrupted" in runs.stdout
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


LAZY_MODEL = """
import torch
from torch import nn


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.LazyConv2d(8, 3, padding=1)
        self.head = nn.LazyLinear(28)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))
"""


def test_check_model_with_lazy_modules(tmp_path):
    """Generated code often uses lazy modules: parameters are counted after the first forward."""
    lazy = tmp_path / "lazy.py"
    lazy.write_text(LAZY_MODEL)
    ok = run_cli("--home", str(tmp_path), "check-model", str(lazy), "--task", "addigits", timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "params 476 " in ok.stdout  # the same layers as GOOD_MODEL, made lazily


def test_tasks_lists_builtins():
    out = run_cli("tasks")
    assert out.returncode == 0
    for name in ("addigits", "multdigits", "digitwave", "digitsmooth"):
        assert name in out.stdout


# --- bad input that used to get past the checks (issue 10) ---------------------------------


def write_garbage_log(home):
    home.mkdir(parents=True, exist_ok=True)
    path = home / "events.sqlite"
    path.write_bytes(b"garbage" * 1000)
    return path


def write_newer_log(home):
    import sqlite3

    path = home / "events.sqlite"
    EventLog(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    return path


def assert_nothing_started(home):
    for started in ("nats", "data", "weights", "bus.json"):
        assert not (home / started).exists(), started
    logs = home / "logs"  # `run` may have opened its own log file, but no service started
    assert not logs.exists() or {p.name for p in logs.iterdir()} <= {"agentnas.log"}


@pytest.mark.parametrize("command", [["up", "--for", "30"], ["run", "addigits", "--llm", "none"]])
def test_corrupt_log_stops_up_and_run_before_anything_starts(tmp_path, command):
    log = write_garbage_log(tmp_path)
    start = time.monotonic()
    result = run_cli("--home", str(tmp_path), *command, timeout=60)
    assert time.monotonic() - start < 20  # no recorder restarting in a loop
    assert_one_line_error(result, "not an SQLite event log", str(log))
    assert log.read_bytes() == b"garbage" * 1000
    assert_nothing_started(tmp_path)


@pytest.mark.parametrize("command", [["runs"], ["status", "r1"], ["up", "--for", "30"], ["run", "addigits", "--llm", "none"]])
def test_log_from_a_newer_version_says_upgrade(tmp_path, command):
    log = write_newer_log(tmp_path)
    before = log.read_bytes()
    result = run_cli("--home", str(tmp_path), *command, timeout=60)
    assert_one_line_error(result, "written by a newer agentnas (schema 999); upgrade", str(log))
    assert log.read_bytes() == before
    assert_nothing_started(tmp_path)


def test_file_as_home_is_not_a_folder(tmp_path, home):
    afile = tmp_path / "afile"
    afile.write_text("")
    model = tmp_path / "m.py"
    model.write_text(GOOD_MODEL)
    for command in (["runs"], ["status", "r1"], ["up", "--for", "1"], ["check-model", str(model), "--task", "addigits"]):
        assert_one_line_error(run_cli("--home", str(afile), *command), f"home {afile} is not a folder")
    assert afile.read_text() == ""


def write_cls_task(folder, name="cls"):
    """A small classification task: ds/<name>.toml with its npy files in ds/data/ (paths relative to the TOML)."""
    import numpy as np

    ds = folder / "ds"
    (ds / "data").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for split, n in (("train", 40), ("valid", 10), ("test", 10)):
        np.save(ds / "data" / f"{split}_x.npy", rng.normal(size=(n, 3, 8, 8)).astype(np.float32))
        np.save(ds / "data" / f"{split}_y.npy", rng.integers(0, 28, size=n).astype(np.int64))
        files += [f'{split}_x = "data/{split}_x.npy"', f'{split}_y = "data/{split}_y.npy"']
    toml = ds / f"{name}.toml"
    toml.write_text(f'name = "{name}"\ninput_shape = [3, 8, 8]\noutput_shape = [28]\nloss = "cross_entropy"\n'
                    'metric = "error_pct"\n[files]\n' + "\n".join(files) + "\n")
    return toml


def test_check_model_with_a_relative_task_file_from_any_cwd(tmp_path):
    project = tmp_path / "project"
    write_cls_task(project)
    model = project / "model.py"
    model.write_text(GOOD_MODEL)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd, ref in ((project, "ds/cls.toml"), (elsewhere, "../project/ds/cls.toml"), (project / "ds", "cls.toml")):
        result = run_cli("--home", str(tmp_path / "home"), "check-model", str(model), "--task", ref, cwd=cwd, timeout=120)
        assert result.returncode == 0, (cwd, result.stdout, result.stderr)
        assert "ok" in result.stdout and "Traceback" not in result.stderr


def test_run_start_up_check_reads_a_relative_task_file(tmp_path):
    project = tmp_path / "project"
    write_cls_task(project)
    log = write_garbage_log(tmp_path / "home")
    # the task loads from the relative path (paths inside it relative to its folder), so the
    # next start-up check is the one that stops the run
    result = run_cli("--home", str(tmp_path / "home"), "run", "ds/cls.toml", "--llm", "none", cwd=project)
    assert_one_line_error(result, "not an SQLite event log")
    (project / "ds" / "data" / "valid_y.npy").unlink()
    result = run_cli("--home", str(tmp_path / "home"), "run", "ds/cls.toml", "--llm", "none", cwd=project)
    assert_one_line_error(result, "ds/cls.toml: files.valid_y: no such file")
    result = run_cli("--home", str(tmp_path / "home"), "run", "ds/nope.toml", "--llm", "none", cwd=project)
    assert_one_line_error(result, "no such task file ds/nope.toml")
    assert log.read_bytes() == b"garbage" * 1000
    assert_nothing_started(tmp_path / "home")


@pytest.mark.parametrize("task", ["my task", "a/b", "tâche", "ds"])
def test_run_with_a_task_that_is_neither_built_in_nor_a_file(tmp_path, home, task):
    (tmp_path / "ds").mkdir()
    before = (home / "events.sqlite").read_bytes()
    result = run_cli("--home", str(home), "run", task, "--llm", "none", cwd=tmp_path)
    assert_one_line_error(result, task)
    assert (home / "events.sqlite").read_bytes() == before
    assert_nothing_started(home)


@pytest.mark.parametrize("name", ["my task", "a/b", "tâche", "тест", "x" * 80, ""])
def test_run_ids_from_any_task_name_are_valid(name):
    from agentnas.bus.subjects import valid_run_id
    from agentnas.ops.run import new_run_id

    assert valid_run_id(new_run_id(name))


def test_check_model_bad_device_and_memory(tmp_path):
    model = tmp_path / "m.py"
    model.write_text(GOOD_MODEL)
    result = run_cli("--home", str(tmp_path), "check-model", str(model), "--task", "addigits", "--memory-mb", "-5")
    assert_one_line_error(result, "--memory-mb", "-5")
    from agentnas.trainer_daemon.devices import visible_gpus

    if not visible_gpus():
        result = run_cli("--home", str(tmp_path), "check-model", str(model), "--task", "addigits", "--device", "cuda:0")
        assert_one_line_error(result, "cuda:0", "no GPU")
    result = run_cli("--home", str(tmp_path), "check-model", str(model), "--task", "addigits", "--device", "cuda:99")
    assert_one_line_error(result, "cuda:99")


@pytest.mark.parametrize(("options", "expected"), [
    (["--llm", "none", "--planner", "bogus"], "--planner"),
    (["--llm", "none", "--planner", "llm"], "--planner llm"),
    (["--llm", "none", "--planner", "no_such_module:Planner"], "no_such_module"),
    (["--llm", "none", "--on-divergence", "maybe"], "--on-divergence"),
    (["--llm", "none", "--budget", "0"], "--budget"),
])
def test_run_refuses_bad_options_before_anything_starts(home, options, expected):
    before = (home / "events.sqlite").read_bytes()
    assert_one_line_error(run_cli("--home", str(home), "run", "addigits", *options), expected)
    assert (home / "events.sqlite").read_bytes() == before
    assert_nothing_started(home)


@pytest.mark.parametrize(("text", "expected"), [
    ("[phase1]\nbudget = 0\n", "phase1.budget: Expected `int` >= 1"),
    ("[phase1]\npatience = 0\n", "phase1.patience: Expected `int` >= 1"),
    ("[phase1]\nbudget = -3\n", "phase1.budget: Expected `int` >= 1"),
    ("[evolution]\nalgorithm = 'bayes'\n", "evolution.algorithm: expected one of 'gdas', 're', 'rs', got 'bayes'"),
    ("[trainer]\nworker_jobs = -1\n", "trainer.worker_jobs: Expected `int` >= 0"),
])
def test_config_values_out_of_bounds_are_refused(tmp_path, home, text, expected):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    before = (home / "events.sqlite").read_bytes()
    for command in (["config", "show"], ["run", "addigits", "--llm", "none"], ["up", "--for", "1"]):
        assert_one_line_error(run_cli("--config", str(cfg), "--home", str(home), *command), str(cfg), expected)
    assert (home / "events.sqlite").read_bytes() == before
    assert_nothing_started(home)


def test_replay_of_a_file_that_is_no_log_nor_transcript(tmp_path, home):
    text = tmp_path / "notes.txt"
    text.write_text("these are my notes\nnot a transcript\n")
    before = (home / "events.sqlite").read_bytes()
    result = run_cli("--home", str(home), "run", "addigits", f"--llm", f"replay:{text}")
    assert_one_line_error(result, str(text), "agentnas event log (SQLite) or a JSONL transcript")
    assert "malformed" not in result.stderr
    assert (home / "events.sqlite").read_bytes() == before


def test_config_show_prints_effective_values(tmp_path):
    import tomllib

    shown = run_cli("--home", str(tmp_path / "h"), "config", "show")
    assert shown.returncode == 0, shown.stderr
    parsed = tomllib.loads(shown.stdout)
    assert parsed["home"] == str(tmp_path / "h") and parsed["trainer"]["worker_jobs"] == 32
    again = tmp_path / "again.toml"
    again.write_text(shown.stdout)
    assert run_cli("--config", str(again), "config", "show").stdout == shown.stdout


def test_help_texts():
    top = run_cli("--help", env={"COLUMNS": "200"})
    home_line = next(line for line in top.stdout.splitlines() if "--home" in line)
    assert "AGENTNAS_HOME" in home_line and "~/.agentnas" in home_line
    tasks_help = run_cli("tasks", "--help", env={"COLUMNS": "200"})
    assert tasks_help.returncode == 0 and "docs/DATASETS.md" in tasks_help.stdout
    for key in ("input_shape", "output_shape", "loss", "metric", "train_x", "npy"):
        assert key in tasks_help.stdout


def test_tasks_file_prints_ok_and_what_it_holds(tmp_path):
    toml = write_cls_task(tmp_path)
    result = run_cli("tasks", str(toml), env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("ok"))
    for fragment in (str(toml), "train 40", "valid 10", "test 10", "input 3x8x8", "output 28", "28 classes",
                     "loss cross_entropy", "metric error_pct"):
        assert fragment in line, (fragment, line)
    (tmp_path / "ds" / "data" / "test_y.npy").write_text("1 2 3\n")
    assert_one_line_error(run_cli("tasks", str(toml)), "files.test_y", "is not a .npy file")
