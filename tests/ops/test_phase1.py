"""Phase 1 end to end through real NATS, recorder, trainer and agent processes.

The LLM is the local fake provider server answering from a checked-in transcript
(tests/fixtures/phase1_addigits_script.json) through the real Anthropic SDK: the planner
explores, the explorer runs code and reports, two experiment batches follow (one proposal
fails validation and is fixed on retry, one fails for good and uses budget without
touching patience), the planner stops, wave 1 trains, the seed is selected. The planner is
killed with SIGKILL between batches and must carry on without repeating an LLM call.
Then the run is re-executed from its log with no provider at all.
"""

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from agentnas.agents.replay import export_jsonl
from agentnas.store.log import EventLog
from agentnas.store.log import load_run_state
from tests.conftest import REPO, agentnas_cmd
from agentnas.ops.scripted_llm import scripted_llm

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCRIPT = json.loads((REPO / "tests/fixtures/phase1_addigits_script.json").read_text())


def write_config(path, base_url=""):
    path.write_text(
        "[llm]\nprovider = 'anthropic'\nmodel = 'claude-sonnet-4-6'\n"
        f"base_url = '{base_url}'\nmax_retries = 1\n"
        "[phase1]\nbudget = 10\nn_parallel = 2\ncode_retries = 1\n"
        "[trainer]\nconcurrency = 2\n")
    return path


def events(home, run_id=None):
    conn = sqlite3.connect(home / "events.sqlite")
    query = "SELECT run_id, kind, sender, payload FROM events"
    rows = conn.execute(query + (" WHERE run_id = ?" if run_id else "") + " ORDER BY seq", (run_id,) if run_id else ()).fetchall()
    conn.close()
    return [(r, k, json.loads(s)["agent"], json.loads(p)) for r, k, s, p in rows]


def the_run(home):
    (run_id,) = {r for r, k, _, _ in events(home) if k == "run.requested"}
    return run_id


def kill_planner_after_first_batch(home, proc):
    """Wait for batch 1, then SIGKILL the planner process (the supervisor restarts it)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            rows = events(home)
        except sqlite3.OperationalError:
            rows = []
        if any(k == "experiment.proposed" for _, k, _, _ in rows):
            (pid,) = [p["pid"] for _, k, _, p in rows if k == "agent.started" and p["role"] == "planner"][:1]
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.2)
    raise AssertionError("no experiment batch appeared")


def run_cli(home, config, *args, env=None, timeout=600, during=None):
    proc = subprocess.Popen(agentnas_cmd("--home", str(home), "--config", str(config), "run", "addigits", "--phases", "1",
                                         *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    extra = during(home, proc) if during else None
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err, extra


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    home = tmp_path_factory.mktemp("phase1")
    with scripted_llm(SCRIPT, key="test-key") as server:
        config = write_config(home / "agentnas.toml", server.base_url)
        code, out, err, killed = run_cli(home, config, "--llm", "anthropic", env={"ANTHROPIC_API_KEY": "test-key"},
                                         during=kill_planner_after_first_batch)
        calls, errors, left = len(server.calls()), list(server.errors), server.remaining()
    return {"home": home, "code": code, "out": out, "err": err, "killed": killed, "calls": calls,
            "errors": errors, "left": left, "run_id": the_run(home)}


def test_phase1_runs_end_to_end(recorded):
    assert recorded["code"] == 0, recorded["out"][-3000:] + recorded["err"][-3000:]
    home, run_id = recorded["home"], recorded["run_id"]
    rows = events(home, run_id)
    kinds = [k for _, k, _, _ in rows]
    payloads = {k: [p for _, kk, _, p in rows if kk == k] for k in set(kinds)}
    # explore first, with code run in the sandbox, then a report
    assert kinds.index("exploration.requested") < kinds.index("exploration.stepped") < kinds.index("exploration.reported")
    assert "counts" in payloads["exploration.stepped"][0]["output"]
    # batch 1: arch_001 fixed on retry, arch_002 failed for good; batch 2: arch_003
    implemented = {p["arch_id"]: p["attempts"] for p in payloads["architecture.implemented"]}
    assert implemented == {"arch_001": 2, "arch_003": 1}
    (rejected,) = payloads["architecture.rejected"]
    assert rejected["arch_id"] == "arch_002" and rejected["attempts"] == 2
    validations = [p for p in payloads["evaluation.completed"] if p["request"] == "validate"]
    assert any(p["status"] == "rejected" and "(8, 10) != expected (8, 28)" in p["reason"] for p in validations)
    # budget counts the rejected architecture, patience does not
    proxies = [p for p in payloads["evaluation.completed"] if p["request"] == "proxy"]
    assert sorted(p["arch_id"] for p in proxies) == ["arch_001", "arch_003"]
    assert {p["status"] for p in proxies} == {"ok"}
    (stopped,) = payloads["phase.stopped"]
    # the finalists, best proxy metric first (error: lower is better)
    by_metric = sorted(proxies, key=lambda p: p["val_metric"])
    assert stopped["arch_ids"] == [p["arch_id"] for p in by_metric]
    wave1 = [p for p in payloads["evaluation.completed"] if p["request"] == "final_wave1"]
    assert sorted(p["arch_id"] for p in wave1) == ["arch_001", "arch_003"]
    (seed,) = payloads["seed.selected"]
    best = min(wave1, key=lambda p: p["val_metric"])
    assert seed["arch_id"] == best["arch_id"] and seed["val_metric"] == best["val_metric"]
    assert "class Architecture" in seed["source"] and seed["recipe"]["epochs"] == 4
    assert kinds[-1] == "run.finished"
    assert len(payloads["batch.summarized"]) == 3
    # every LLM call recorded in full, caused events cite the answer
    responses = payloads["llm.responded"]
    assert len(payloads["llm.requested"]) == len(responses) == len(SCRIPT)
    assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 and r["cost_usd"] > 0 for r in responses)


def test_killed_planner_repeated_no_call_and_lost_nothing(recorded):
    assert recorded["killed"], "the planner was never killed"
    assert recorded["errors"] == [] and recorded["left"] == 0 and recorded["calls"] == len(SCRIPT)
    rows = events(recorded["home"], recorded["run_id"])
    restarts = [p for _, k, _, p in events(recorded["home"], "_system") if k == "service.restarted" and p["service"] == "planner"]
    assert restarts, "the supervisor did not restart the planner"
    completed = [p["eval_id"] for _, k, _, p in rows if k == "evaluation.completed"]
    assert len(completed) == len(set(completed))
    requested = {p["eval_id"] for _, k, _, p in rows if k == "evaluation.requested"}
    assert requested == set(completed)
    with EventLog(recorded["home"] / "events.sqlite", readonly=True) as log:
        state = load_run_state(log, recorded["run_id"])
    # two proxy evaluations and one architecture that never validated; patience untouched by it
    phase1 = state.phase1
    assert state.status == "finished" and phase1.budget_used == 3 and phase1.successes == 2
    assert [a.arch_id for a in phase1.archs.values() if a.rejected] == ["arch_002"]
    assert phase1.seed.arch_id in ("arch_001", "arch_003") and phase1.stopped.reason == "planner chose STOP"


def test_audit_shows_the_decisions(recorded):
    out = subprocess.run(agentnas_cmd("--home", str(recorded["home"]), "audit", recorded["run_id"], "--agent", "planner"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "EXPLORE" in out.stdout and "experiment.proposed" in out.stdout and "STOP" in out.stdout


def test_replay_makes_no_provider_call_and_reaches_the_same_seed(recorded, tmp_path):
    source = recorded["home"] / "events.sqlite"
    config = write_config(tmp_path / "agentnas.toml", "http://127.0.0.1:9")  # nothing listens there
    code, out, err, _ = run_cli(tmp_path / "home", config, "--llm", f"replay:{source}#{recorded['run_id']}",
                                env={"ANTHROPIC_API_KEY": ""})
    assert code == 0, out[-3000:] + err[-3000:]
    original = [p for _, k, _, p in events(recorded["home"], recorded["run_id"]) if k == "seed.selected"][0]
    replayed_run = the_run(tmp_path / "home")
    rows = events(tmp_path / "home", replayed_run)
    replayed = [p for _, k, _, p in rows if k == "seed.selected"][0]
    assert (replayed["arch_id"], replayed["val_metric"]) == (original["arch_id"], original["val_metric"])
    assert {p["provider"] for _, k, _, p in rows if k == "llm.requested"} == {"replay"}
    # the evaluations were the recorded ones: served from the log, none trained again
    completed = [p for _, k, _, p in rows if k == "evaluation.completed"]
    assert completed and all(p["reused_from"].startswith(recorded["run_id"] + "/") for p in completed)
    assert not [k for _, k, _, _ in rows if k == "evaluation.started"]


def test_tampered_transcript_is_caught_as_a_divergence(recorded, tmp_path):
    transcript = tmp_path / "run.jsonl"
    export_jsonl(recorded["home"] / "events.sqlite", recorded["run_id"], transcript)
    lines = [json.loads(line) for line in transcript.read_text().splitlines()]
    first_planner = next(c for c in lines if c["agent"] == "planner")
    first_planner["request"]["messages"][-1]["content"] += " (edited)"
    transcript.write_text("\n".join(json.dumps(c) for c in lines) + "\n")
    config = write_config(tmp_path / "agentnas.toml", "http://127.0.0.1:9")
    code, out, err, _ = run_cli(tmp_path / "home", config, "--llm", f"replay:{transcript}", env={"ANTHROPIC_API_KEY": ""},
                                timeout=300)
    assert code == 1
    text = out + err
    assert "diverge" in text.lower() and "planner" in text


def tiny_task(folder):
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 256), ("valid", 128), ("test", 128)):
        x = rng.normal(size=(n, 3, 8, 8)).astype(np.float32)
        np.save(folder / f"{split}_x.npy", x)
        np.save(folder / f"{split}_y.npy", (x[:, 0].mean(axis=(1, 2)) > 0).astype(np.int64))
    files = "\n".join(f'{s}_{v} = "{s}_{v}.npy"' for s in ("train", "valid", "test") for v in "xy")
    toml = folder / "tiny.toml"
    toml.write_text('name = "tiny"\ninput_shape = [3, 8, 8]\noutput_shape = [2]\nloss = "cross_entropy"\n'
                    f'metric = "error_pct"\n[files]\n{files}\n')
    return toml


def test_rule_based_planner_runs_phase1_without_an_llm(tmp_path):
    task = tiny_task(tmp_path)
    config = tmp_path / "agentnas.toml"
    config.write_text("[phase1]\nn_parallel = 2\ntop_k_full = 2\n[trainer]\nconcurrency = 2\n")
    env = {k: v for k, v in os.environ.items() if "ANTHROPIC" not in k and "OPENAI" not in k}
    result = subprocess.run(agentnas_cmd("--home", str(tmp_path / "home"), "--config", str(config), "run", str(task),
                                         "--phases", "1", "--llm", "none", "--budget", "3"),
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_id = the_run(tmp_path / "home")
    rows = events(tmp_path / "home", run_id)
    kinds = [k for _, k, _, _ in rows]
    assert not any(k.startswith("llm.") for k in kinds)
    proposals = [a["arch_id"] for _, k, _, p in rows if k == "experiment.proposed" for a in p["proposals"]]
    assert len(proposals) == 3 and all(a.startswith("arch_") for a in proposals)
    (stopped,) = [p for _, k, _, p in rows if k == "phase.stopped"]
    assert stopped["reason"].startswith("budget")
    assert len([p for _, k, _, p in rows if k == "evaluation.completed" and p["request"] == "final_wave1"]) == 2
    assert "seed.selected" in kinds and kinds[-1] == "run.finished"


def test_bad_run_requests_are_one_line_errors(tmp_path):
    def cli(*args, env=None):
        return subprocess.run(agentnas_cmd("--home", str(tmp_path), *args), capture_output=True, text=True, timeout=60,
                              env={**os.environ, **(env or {})})

    for args, fragment in [
        (("run", "nope", "--llm", "none"), "unknown task 'nope'"),
        (("run", "addigits", "--phases", "2"), "each phase starts from the one before"),
        (("run", "addigits", "--llm", "none", "--budget", "0"), "--budget must be at least 1"),
        (("run", "addigits", "--llm", "replay:/no/such/log.sqlite"), "/no/such/log.sqlite"),
    ]:
        result = cli(*args)
        assert result.returncode == 2 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
    missing_key = cli("run", "addigits", "--llm", "anthropic", env={"ANTHROPIC_API_KEY": ""})
    assert missing_key.returncode == 2 and "ANTHROPIC_API_KEY" in missing_key.stderr


def test_invalid_key_and_unknown_model_fail_before_any_training(tmp_path):
    with scripted_llm([], key="right-key") as server:
        config = write_config(tmp_path / "agentnas.toml", server.base_url)
        for model, key, fragment in [("claude-sonnet-4-6", "wrong-key", "refused (401)"),
                                     ("claude-imaginary-9", "right-key", "unknown model 'claude-imaginary-9'")]:
            result = subprocess.run(agentnas_cmd("--home", str(tmp_path / "home"), "--config", str(config), "run", "addigits",
                                                 "--llm", f"anthropic:{model}"),
                                    capture_output=True, text=True, timeout=60, env={**os.environ, "ANTHROPIC_API_KEY": key})
            assert result.returncode == 2 and fragment in result.stderr, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "home" / "events.sqlite").exists()  # nothing started, nothing trained


def test_the_run_config_event_holds_no_bus_credentials(tmp_path):
    import msgspec

    from agentnas.bus.config import load_config
    from agentnas.ops.run import run_settings
    from agentnas.trainer_daemon.tasks import load_task

    cfg = tmp_path / "c.toml"
    cfg.write_text("[bus]\ntoken = 's3cret-token'\npassword = 'hunter2'\n")
    settings = run_settings(load_config(cfg), load_task("addigits"), "addigits", (1,), None, "stop", tmp_path, "x")
    text = msgspec.json.encode(settings).decode()
    assert "s3cret-token" not in text and "hunter2" not in text and '"bus"' not in text
    assert settings.phase1.budget == 160 and settings.task.name == "addigits"


def test_divergence_can_hand_over_to_the_live_provider(recorded, tmp_path):
    """A transcript whose first planner request was edited: with --on-divergence live that request
    goes to the live provider; requests that still match the recording are served from it (here the
    live answer equals the recorded one, so every later request matches), and the run finishes."""
    transcript = tmp_path / "run.jsonl"
    export_jsonl(recorded["home"] / "events.sqlite", recorded["run_id"], transcript)
    lines = [json.loads(line) for line in transcript.read_text().splitlines()]
    next(c for c in lines if c["agent"] == "planner")["request"]["messages"][-1]["content"] += " (edited)"
    transcript.write_text("\n".join(json.dumps(c) for c in lines) + "\n")
    planner_script = [rule for rule in SCRIPT if rule["agent"] == "planner"]
    with scripted_llm(planner_script, key="test-key") as server:
        config = write_config(tmp_path / "agentnas.toml", server.base_url)
        code, out, err, _ = run_cli(tmp_path / "home", config, "--llm", f"replay:{transcript}",
                                    "--on-divergence", "live", env={"ANTHROPIC_API_KEY": "test-key"})
        live_calls, errors = server.calls(), list(server.errors)
    assert code == 0, out[-3000:] + err[-3000:]
    assert errors == [] and len(live_calls) == 1
    rows = events(tmp_path / "home", the_run(tmp_path / "home"))
    planner = [p["provider"] for _, k, _, p in rows if k == "llm.requested" and p["agent"] == "planner"]
    assert planner == ["anthropic", "replay", "replay", "replay"]
    providers = {(p["agent"], p["provider"]) for _, k, _, p in rows if k == "llm.requested"}
    assert ("code_executor", "replay") in providers and ("explorer", "replay") in providers
    assert any(k == "seed.selected" for _, k, _, _ in rows)
