"""Phases 1 -> 1.5 -> 2 end to end through real NATS, recorder, trainer and agent processes.

The LLM is the local scripted provider answering through the real Anthropic SDK from a
checked-in transcript (ops/demo_transcript.json, the one the demo plays): the planner proposes
a block-stack CNN and stops; the Modularizer's first rewrite swaps an activation and fails
the equivalence check, the second passes; the Slot Planner plans five slots; the Code
Executor writes the alternatives, one of which never validates and is dropped; the seed
configuration reproduces the seed; wave 2 reports the seed. The Slot Planner is killed
with SIGKILL while the alternatives are being validated and must carry on without a second
LLM call.
"""

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from agentnas.bus.space import load_space, seed_configuration, space_size
from agentnas.ops.scripted_llm import scripted_llm
from tests.conftest import REPO, agentnas_cmd, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCRIPT = json.loads((REPO / "ops/demo_transcript.json").read_text())


def events(home, run_id=None):
    conn = sqlite3.connect(home / "events.sqlite")
    query = "SELECT run_id, kind, payload FROM events"
    rows = conn.execute(query + (" WHERE run_id = ?" if run_id else "") + " ORDER BY seq",
                        (run_id,) if run_id else ()).fetchall()
    conn.close()
    return [(r, k, json.loads(p)) for r, k, p in rows]


def kill_slot_planner_while_validating(home, proc):
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            rows = events(home)
        except sqlite3.OperationalError:
            rows = []
        if any(k == "alternative.implemented" for _, k, _ in rows):
            (pid,) = [p["pid"] for _, k, p in rows if k == "agent.started" and p["role"] == "slot_planner"][:1]
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.2)
    raise AssertionError("no alternative was implemented")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    home = tmp_path_factory.mktemp("pipeline")
    with scripted_llm(SCRIPT, key="test-key") as server:
        config = home / "agentnas.toml"
        config.write_text(
            "[llm]\nprovider = 'anthropic'\nmodel = 'claude-sonnet-4-6'\n"
            f"base_url = '{server.base_url}'\nmax_retries = 1\n"
            "[phase1]\nbudget = 1\nn_parallel = 1\ncode_retries = 1\ntop_k_full = 1\n"
            "[slots]\ncode_retries = 1\n[trainer]\nconcurrency = 2\n")
        proc = subprocess.Popen(agentnas_cmd("--home", str(home), "--config", str(config), "run", "addigits",
                                             "--phases", "1,2", "--llm", "anthropic"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "ANTHROPIC_API_KEY": "test-key"})
        killed = kill_slot_planner_while_validating(home, proc)
        out, err = proc.communicate(timeout=900)
        calls, errors, left = len(server.calls()), list(server.errors), server.remaining()
    (run_id,) = {r for r, k, _ in events(home) if k == "run.requested"}
    return {"home": home, "code": proc.returncode, "out": out, "err": err, "killed": killed, "calls": calls,
            "errors": errors, "left": left, "run_id": run_id}


def test_phases_1_and_2_run_end_to_end(pipeline):
    assert pipeline["code"] == 0, pipeline["out"][-3000:] + pipeline["err"][-3000:]
    home, run_id = pipeline["home"], pipeline["run_id"]
    rows = events(home, run_id)
    kinds = [k for _, k, _ in rows]
    of = {k: [p for _, kk, p in rows if kk == k] for k in set(kinds)}
    # Phase 1.5: the first rewrite is not the same function, the second is
    checks = [p for p in of["evaluation.completed"] if p["request"] == "equivalence"]
    assert [c["arch_id"] for c in checks][:2] == ["modular-1", "modular-2"]
    assert checks[0]["status"] == "rejected" and "outputs differ" in checks[0]["reason"]
    assert checks[1]["status"] == "ok"
    (modular,) = of["modularizer.finished"]
    assert modular["outcome"] == "accepted" and modular["attempts"] == 2 and "class Stage1" in modular["source"]
    # Phase 2: one plan; the broken alternative dropped after its two attempts; the rest in the space
    (plan,) = of["slot_plan.proposed"]
    assert [s["name"] for s in plan["space"]["slots"]] == ["stage1", "stage1_glue", "stage2", "stage2_glue", "head"]
    dropped = {(d["slot"], d["index"]): d for d in of["alternative.dropped"]}
    assert dropped[("stage1_glue", 2)]["attempts"] == 2  # written, failed, fixed, failed again
    # a Zero head gives the loss nothing to differentiate: it never validates either
    assert set(dropped) <= {("stage1_glue", 2), ("head", 2)}
    (accepted,) = of["space.accepted"]
    glue = accepted["space"]["slots"][1]
    assert [a["role"] for a in glue["alternatives"]] == ["identity", "candidate", "zero"]
    assert "Squeeze-and-excitation" in glue["alternatives"][1]["description"]
    gate = [c for c in checks if c["arch_id"] == "plan1-seed"]
    assert len(gate) == 1 and gate[0]["status"] == "ok"
    # the result: Phase 2 ends this run, so the seed is reported, with its wave-2 test metric
    (finished,) = of["run.finished"]
    result = finished["result"]
    assert result["winner"]["arch_id"] == "arch_001" and result["winner"]["test_metric"] is not None
    assert [p["phase"] for p in result["phases"]] == ["1", "1.5", "2", "final"]


def test_the_slot_planner_killed_mid_phase_asked_nothing_twice(pipeline):
    assert pipeline["killed"]
    assert pipeline["errors"] == [] and pipeline["left"] == 0 and pipeline["calls"] == len(SCRIPT)
    rows = events(pipeline["home"])
    restarts = [p for _, k, p in rows if k == "service.restarted" and p["service"] == "slot_planner"]
    assert restarts, "the supervisor did not restart the slot planner"
    requested = [p["eval_id"] for r, k, p in rows if k == "evaluation.requested" and r == pipeline["run_id"]]
    assert len(requested) == len(set(requested))


def test_the_space_is_left_in_the_run_folder_and_works_from_the_cli(pipeline):
    home, run_id = pipeline["home"], pipeline["run_id"]
    path = home / "runs" / run_id / "space.json"
    space = load_space(path)
    (accepted,) = [p for r, k, p in events(home, run_id) if k == "space.accepted"]
    assert space_size(space) == accepted["size"] > 100 and seed_configuration(space).choices == (0,) * 5
    shown = run_cli("--home", str(home), "space", "show", run_id)
    assert shown.returncode == 0 and "stage1_glue" in shown.stdout, shown.stderr
    checked = run_cli("--home", str(home), "space", "validate", str(path), "--task", "addigits", timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = home / "runs" / run_id / "result"
    assert {"model.py", "weights.pt", "recipe.json", "metrics.json"} <= {p.name for p in result.iterdir()}


def test_re_executing_phases_1_and_2_from_the_log_then_a_different_phase_3(pipeline, tmp_path):
    """What if? The recorded run re-executed with every LLM answer served from its own log (no
    provider is running at all), and every evaluation it asks for again served from the log too
    (nothing of Phases 1-2 is trained again): the same space comes out, and Phase 3 searches it
    with RS.
    (Phase 1's settings must stay as recorded: its prompts show them, and a changed prompt is a
    divergence.)"""
    home, run_id = pipeline["home"], pipeline["run_id"]
    config = tmp_path / "replay.toml"
    config.write_text("[phase1]\nbudget = 1\nn_parallel = 1\ncode_retries = 1\ntop_k_full = 1\n"
                      "[slots]\ncode_retries = 1\n[trainer]\nconcurrency = 2\n"
                      "[evolution]\nbudget = 3\npopulation = 3\ninit_single_mutations = 1\n"
                      "init_double_mutations = 1\ninit_random = 0\ngenerations = 2\ntop_k_full = 1\n")
    again = tmp_path / "again"
    done = subprocess.run(agentnas_cmd("--home", str(again), "--config", str(config), "run", "addigits",
                                       "--llm", f"replay:{home / 'events.sqlite'}#{run_id}", "--algo", "rs"),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (new_run,) = {r for r, k, _ in events(again) if k == "run.requested"}
    first = [p for _, k, p in events(home, run_id) if k == "space.accepted"][0]["space"]
    second = [p for _, k, p in events(again, new_run) if k == "space.accepted"][0]["space"]
    assert first["slots"] == second["slots"] and first["scaffold_source"] == second["scaffold_source"]
    searched = [p for _, k, p in events(again, new_run) if k == "configurations.proposed"]
    assert searched and {p["algorithm"] for p in searched} == {"rs"}
    responded = [p for _, k, p in events(again, new_run) if k == "llm.responded"]
    assert responded and all(p["cost_usd"] == 0.0 for p in responded)  # served from the recording
    # Phases 1-2 asked for the recorded evaluations again: served, not trained; Phase 3 trained
    rows = events(again, new_run)
    started = {p["eval_id"] for _, k, p in rows if k == "evaluation.started"}
    completed = [p for _, k, p in rows if k == "evaluation.completed"]
    before = [p for p in completed if p["phase"] < 3 and p["request"] != "final_wave2"]
    assert before and all(p["reused_from"].startswith(f"{run_id}/") for p in before)
    assert not started & {p["eval_id"] for p in before}
    searched_evals = [p for p in completed if p["phase"] == 3 and not p.get("reused_from")]
    assert searched_evals and {p["eval_id"] for p in searched_evals} <= started
    assert "recorded evaluation results are served" in " ".join(done.stdout.split())  # rich wraps at 80
