"""`agentnas search`: Phase 3 alone on a slotted space, no LLM, with each algorithm (RE, RS, GDAS),
through the real services, to the final training and the result; plus what bad spaces get."""

from __future__ import annotations

import json
import sqlite3

import msgspec
import pytest

from agentnas.agents.builtin_spaces import rule_space
from agentnas.agents.rule_planner import Design
from agentnas.bus.settings import TaskInfo
from agentnas.bus.space import save_space
from tests.conftest import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
ADDIGITS = TaskInfo(name="addigits", input_shape=(3, 8, 8), output_shape=(28,), loss="cross_entropy",
                    metric="error_pct")


# a small regularized evolution: the seed, one single and one double mutation, three generations
SMALL_RE = ("[evolution]\npopulation = 3\ninit_single_mutations = 1\ninit_double_mutations = 1\n"
            "init_random = 0\ngenerations = 3\ntop_k_full = 2\n[trainer]\nconcurrency = 2\n")


@pytest.fixture(scope="module")
def small_space(tmp_path_factory):
    """The slotted space of a small rule-planner CNN, with a two-epoch recipe."""
    space = rule_space(Design(family="cnn", width=16, depth=2, recipe=0), ADDIGITS)
    space = msgspec.structs.replace(space, seed_recipe={**space.seed_recipe, "epochs": 2, "batch_size": 128})
    path = tmp_path_factory.mktemp("space") / "space.json"
    save_space(space, path)
    return path


def events(home, kind):
    conn = sqlite3.connect(home / "events.sqlite")
    rows = conn.execute("SELECT payload FROM events WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
    conn.close()
    return [json.loads(p) for (p,) in rows]


@pytest.mark.parametrize("algo", ["rs", "gdas"])  # re: the demo and the kill test below
def test_each_algorithm_completes_a_short_search(algo, small_space, tmp_path):
    config = tmp_path / "small.toml"
    config.write_text("[evolution]\npopulation = 3\ninit_single_mutations = 1\ninit_double_mutations = 1\n"
                      "init_random = 0\ngenerations = 2\ntop_k_full = 2\ngdas_epochs = 2\n"
                      "[trainer]\nconcurrency = 2\n")
    home = tmp_path / "home"
    done = run_cli("--home", str(home), "--config", str(config), "search", "--space", str(small_space), "--task",
                   "addigits", "--algo", algo, "--budget", "4", timeout=800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    proposed = [p for batch in events(home, "configurations.proposed") for p in batch["proposals"]]
    keys = [p["key"] for p in proposed]
    assert len(keys) == len(set(keys)) and proposed[0]["origin"] == "seed"  # never paid twice; the seed in it
    (finished,) = events(home, "run.finished")
    result = finished["result"]
    assert result["winner"]["test_metric"] is not None
    # PROTOCOL.md: every finalist gets both waves; the result lists them, best validation first
    finalists = result["finalists"]
    wave2 = {e["arch_id"] for e in events(home, "evaluation.completed") if e["request"] == "final_wave2"}
    assert finalists and wave2 == {f["arch_id"] for f in finalists}
    assert all(f["test_metric"] is not None for f in finalists)
    assert [f["val_metric"] for f in finalists] == sorted(f["val_metric"] for f in finalists)
    conn = sqlite3.connect(home / "events.sqlite")
    (run_id,) = conn.execute("SELECT run_id FROM events WHERE kind = 'run.requested'").fetchone()
    conn.close()
    report = run_cli("--home", str(home), "report", run_id, "--out", str(tmp_path / "report"), timeout=120)
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Full training (every finalist)" in text and text.count("| 3 |") >= len(finalists)
    if algo == "gdas":
        (gdas,) = [e for e in events(home, "evaluation.completed") if e["request"] == "gdas"]
        assert gdas["status"] == "ok" and len(gdas["choices"]) == len(json.loads(small_space.read_text())["slots"])
        assert [p["origin"] for p in proposed][-1] in ("gdas", "seed")
    else:
        assert 2 <= len(proposed) <= 4
    assert "result of" in done.stdout


def test_a_bad_space_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"scaffold_source": "class Architecture: pass", "slots": [{"name": "x"}]}')
    done = run_cli("--home", str(tmp_path / "home"), "search", "--space", str(bad), "--task", "addigits")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "$.slots[0]" in done.stderr
    unknown = run_cli("--home", str(tmp_path / "home"), "search", "--space", "builtin:nope", "--task", "addigits")
    assert unknown.returncode == 2 and "builtin:wrn16_4" in unknown.stderr


def test_the_evolver_and_a_trainer_killed_mid_search(small_space, tmp_path):
    """kill -9 of the evolver after its first proposals and of the trainer daemon during final
    training: the run completes; no configuration proposed or evaluated twice, none lost."""
    import os
    import signal
    import subprocess
    import time

    from tests.conftest import agentnas_cmd

    config = tmp_path / "small.toml"
    config.write_text(SMALL_RE + "ack_wait_s = 6\n")
    home = tmp_path / "home"
    proc = subprocess.Popen(agentnas_cmd("--home", str(home), "--config", str(config), "search", "--space",
                                         str(small_space), "--task", "addigits", "--budget", "6"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def started(role):
        return [p["pid"] for p in events(home, "agent.started") if p["role"] == role]

    def wait(predicate, what):
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if predicate():
                    return
            except sqlite3.OperationalError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"no {what}: {proc.stdout.read()[-3000:] if proc.poll() is not None else ''}")

    wait(lambda: events(home, "configurations.proposed") and started("evolver"), "first proposals")
    os.kill(started("evolver")[0], signal.SIGKILL)
    wait(lambda: [p for p in events(home, "evaluation.progress") if p["eval_id"].endswith("-wave1")], "wave 1")
    os.kill(started("trainer")[0], signal.SIGKILL)
    out, _ = proc.communicate(timeout=800)
    assert proc.returncode == 0, out[-4000:]
    proposed = [p["key"] for batch in events(home, "configurations.proposed") for p in batch["proposals"]]
    assert len(proposed) == len(set(proposed)) == 6
    requested = [p["eval_id"] for p in events(home, "evaluation.requested")]
    completed = [p["eval_id"] for p in events(home, "evaluation.completed")]
    assert len(requested) == len(set(requested)) and sorted(completed) == sorted(requested)
    assert len(started("evolver")) >= 2 and len(started("trainer")) >= 2  # both came back
    assert events(home, "run.finished")[0]["result"]["winner"]["test_metric"] is not None


def test_every_process_killed_mid_search_then_resumed(small_space, tmp_path):
    """kill -9 of the whole tree (the CLI, the bus, every service and worker) once Phase 3 has
    results, then `run --resume`: the search finishes; no configuration proposed or evaluated
    twice, none lost, every evaluation ended once."""
    import subprocess
    import time

    from tests.conftest import agentnas_cmd
    from tests.ops.test_faults import kill_everything

    config = tmp_path / "small.toml"
    config.write_text(SMALL_RE)
    home = tmp_path / "home"
    proc = subprocess.Popen(agentnas_cmd("--home", str(home), "--config", str(config), "search", "--space",
                                         str(small_space), "--task", "addigits", "--budget", "6"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    while not [p for p in _safe(events, home, "evaluation.completed") if p["request"] == "proxy"]:
        assert proc.poll() is None and time.monotonic() < deadline, "no proxy result before the kill"
        time.sleep(0.2)
    kill_everything(proc, home)
    assert not events(home, "run.finished")
    (run_id,) = {r for r, _ in _runs(home)}
    resumed = run_cli("--home", str(home), "--config", str(config), "run", "--resume", run_id, timeout=800)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-2000:]
    proposed = [p["key"] for batch in events(home, "configurations.proposed") for p in batch["proposals"]]
    assert len(proposed) == len(set(proposed)) == 6
    requested = [p["eval_id"] for p in events(home, "evaluation.requested")]
    completed = [p["eval_id"] for p in events(home, "evaluation.completed")]
    assert len(requested) == len(set(requested)) and sorted(completed) == sorted(requested)
    assert events(home, "run.finished")[0]["result"]["winner"]["test_metric"] is not None


def _safe(read, *args):
    try:
        return read(*args)
    except sqlite3.OperationalError:  # the log is not there yet
        return []


def _runs(home):
    conn = sqlite3.connect(home / "events.sqlite")
    rows = conn.execute("SELECT run_id, payload FROM events WHERE kind = 'run.requested'").fetchall()
    conn.close()
    return [(r, json.loads(p)) for r, p in rows]
