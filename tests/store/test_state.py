"""The run-state fold: given these events, expect this state (every section, one fold)."""

import math

import pytest
from structlog.testing import capture_logs

from agentnas.bus import messages as m
from agentnas.bus.settings import Phase1Settings, RunSettings, TaskInfo
from agentnas.store.log import EventLog, load_run_state
from agentnas.store.state import RunState, fold, replay, status_after

RUN = "r1"
TASK = TaskInfo(name="addigits", input_shape=(3, 8, 8), output_shape=(28,), loss="cross_entropy", metric="error_pct")


def ev(payload, agent="planner", t=None):
    env = m.make_event(payload, run_id=RUN, sender=m.Sender(agent=agent, instance="p1"))
    if t is not None:
        env = m.Envelope(**{**{f: getattr(env, f) for f in env.__struct_fields__}, "time": t})
    return env


def start(budget=10, patience=3, phases=(1,)):
    settings = RunSettings(task=TASK, task_ref="addigits", phases=phases,
                           phase1=Phase1Settings(budget=budget, patience=patience))
    return [ev(m.RunRequested(task="addigits", phases=phases, settings=settings), "cli")]


def proposal(arch_id, source=""):
    return m.Proposal(arch_id=arch_id, description=f"design {arch_id}", recipe={"epochs": 3}, source=source)


def validate(arch, n, status="ok", reason=""):
    eid = f"{arch}-v{n}"
    return [ev(m.EvaluationRequested(eval_id=eid, request="validate", task="t", model_source=f"src{n}", arch_id=arch), "code_executor"),
            ev(m.EvaluationCompleted(eval_id=eid, status=status, reason=reason, request="validate", params=100), "trainer")]


def proxy(arch, status="ok", val=None):
    eid = f"{arch}-proxy"
    return [ev(m.EvaluationRequested(eval_id=eid, request="proxy", task="t", model_source="src", arch_id=arch), "code_executor"),
            ev(m.EvaluationCompleted(eval_id=eid, status=status, val_metric=val, request="proxy", arch_id=arch), "trainer")]


def batch(n, *archs):
    return [ev(m.ExperimentProposed(batch=n, proposals=[proposal(a) for a in archs]))]


# ---------------------------------------------------------------- lifecycle and settings


def test_lifecycle_and_settings():
    state = replay(RUN, start() + [ev(m.RunStarted(), "cli")])
    assert (state.status, state.task, state.phases, state.n_events) == ("running", "addigits", (1,), 2)
    assert state.requested and state.settings.phase1.budget == 10 and state.phase1.awaiting_planner
    assert replay(RUN, [ev(m.RunStarted()), ev(m.RunFailed(reason="boom"))]).failure == "boom"
    finished = replay(RUN, start() + [ev(m.RunFinished(summary={"a": 1})), ev(m.RunFailed(reason="late"))])
    assert finished.summary == {"a": 1} and finished.status == "finished"  # an ended run stays ended


@pytest.mark.parametrize("kinds, status", [
    (["run.requested"], "requested"),
    (["run.requested", "run.started"], "running"),
    (["run.requested", "run.started", "run.finished"], "finished"),
    (["run.started", "run.failed", "run.started"], "failed"),
    (["evaluation.completed"], ""),
])
def test_status_after_is_the_one_lifecycle_rule(kinds, status):
    current = ""
    for kind in kinds:
        current = status_after(current, kind)
    assert current == status


def test_runs_table_and_fold_agree_on_status(tmp_path):
    events = start() + [ev(m.RunStarted(), "cli"), ev(m.RunFinished()), ev(m.RunFailed(reason="after"))]
    with EventLog(tmp_path / "l.sqlite") as log:
        for e in events:  # one event per transaction: the table folds across batches
            log.append([e])
        (summary,) = log.runs()
        assert summary.status == load_run_state(log, RUN).status == "finished"


def test_legacy_run_requested_config_gives_the_same_settings():
    legacy = m.RunRequested(task="addigits", phases=(1,), config={
        "seed": 7, "phase1": {"budget": 12, "patience": 4, "n_parallel": 2}, "proxy": {"time_cap_s": 99.0},
        "evolution": {"algorithm": "random"}, "llm": {"token_cap": 500},
        "task_spec": {"name": "addigits", "input_shape": [3, 8, 8], "output_shape": [28], "loss": "cross_entropy",
                      "metric": "error_pct", "blind": False, "published_best": None, "description": ""},
        "task_ref": "addigits", "llm_spec": "", "on_divergence": "stop", "data_dir": "/d", "data_paths": "x.npy"})
    settings = replay(RUN, [ev(legacy, "cli")]).settings
    assert settings.task == TASK and settings.seed == 7 and settings.phase1.budget == 12
    assert settings.proxy.time_cap_s == 99.0 and settings.evolution.algorithm == "rs"
    assert settings.llm_caps.token_cap == 500 and settings.data_dir == "/d"


# ---------------------------------------------------------------- phase 1


def test_runs_without_phase_1_leave_the_phase_1_section_alone():
    state = replay(RUN, start(phases=(2, 3)))
    assert state.requested and not state.phase1.awaiting_planner


def test_batch_resolution_budget_and_patience():
    events = start() + batch(1, "arch_001", "arch_002")
    state = replay(RUN, events)
    assert not state.phase1.awaiting_planner and state.phase1.batches == 1
    assert set(state.phase1.archs) == {"arch_001", "arch_002"}
    events += validate("arch_001", 1, "rejected", "shape") + validate("arch_001", 2)
    events += [ev(m.ArchitectureImplemented(arch_id="arch_001", source="src2", recipe={"epochs": 3}), "code_executor")]
    events += proxy("arch_001", val=5.0)
    phase1 = replay(RUN, events).phase1
    assert [a.status for a in phase1.archs["arch_001"].attempts] == ["rejected", "ok"]
    assert phase1.budget_used == 1 and not phase1.awaiting_planner  # arch_002 still open
    events += [ev(m.ArchitectureRejected(arch_id="arch_002", reason="never validated", attempts=11), "code_executor")]
    phase1 = replay(RUN, events).phase1
    # the rejected one uses budget but leaves patience alone; the batch is resolved
    assert (phase1.budget_used, phase1.since_improvement, phase1.best_proxy) == (2, 0, 5.0)
    assert phase1.awaiting_planner
    events += batch(2, "arch_003", "arch_004") + proxy("arch_003", val=6.0) + proxy("arch_004", "oom")
    phase1 = replay(RUN, events).phase1
    assert (phase1.budget_used, phase1.successes, phase1.since_improvement, phase1.best_proxy) == (4, 2, 1, 5.0)
    assert [a.arch_id for a in phase1.leaderboard()] == ["arch_001", "arch_003"]


@pytest.mark.parametrize("results, expected", [
    # (status, val) in completion order -> (budget, ok, since_improvement, best)
    ([("ok", 10.0), ("ok", 12.0), ("ok", 9.0), ("ok", 9.5)], (4, 4, 1, 9.0)),
    # failures use budget but neither reset nor advance patience
    ([("ok", 10.0), ("ok", 11.0), ("error", None), ("oom", None), ("ok", 12.0)], (5, 3, 2, 10.0)),
    ([("timeout", None), ("rejected", None)], (2, 0, 0, None)),
    # equal is not an improvement
    ([("ok", 5.0), ("ok", 5.0)], (2, 2, 1, 5.0)),
    # an "ok" with a non-finite or missing metric is a failure in every view (the two old folds disagreed)
    ([("ok", 5.0), ("ok", math.nan), ("ok", math.inf), ("ok", None)], (4, 1, 0, 5.0)),
])
def test_budget_and_patience(results, expected):
    archs = [f"arch_{i:03d}" for i in range(len(results))]
    events = start(budget=50, patience=50) + batch(1, *archs)
    for arch, (status, val) in zip(archs, results):
        events += proxy(arch, status, val)
    state = replay(RUN, events)
    phase1 = state.phase1
    assert (phase1.budget_used, phase1.successes, phase1.since_improvement, phase1.best_proxy) == expected
    # the evaluations section and the leaderboard apply the same rule
    assert len(state.evals.leaderboard()) == expected[1]
    assert all(math.isfinite(r.val_metric) for r in state.evals.leaderboard())


def test_exploration_round_trip_and_dialogues():
    events = start() + [
        ev(m.LlmRequested(call_id="c1", agent="planner", provider="p", model="x", messages=[{"role": "user", "content": "turn 1"}])),
        ev(m.LlmResponded(call_id="c1", agent="planner", content="EXPLORE")),
        ev(m.ExplorationRequested(question="balance?")),
        ev(m.LlmRequested(call_id="c2", agent="explorer", provider="p", model="x", messages=[{"role": "user", "content": "q"}]), "explorer"),
        ev(m.LlmResponded(call_id="c2", agent="explorer", content="code"), "explorer"),
    ]
    state = replay(RUN, events)
    assert state.phase1.exploring.question == "balance?" and not state.phase1.awaiting_planner
    assert state.llm.history("planner") == (("turn 1", "EXPLORE"),)  # acted upon by exploration.requested
    assert state.llm.unconsumed("explorer") == (("q", "code"),)  # answered, not yet acted upon
    events += [ev(m.ExplorationStepped(step=1, code="print(1)", output="1"), "explorer"),
               ev(m.ExplorationReported(report="balanced", steps=1), "explorer")]
    state = replay(RUN, events)
    assert state.phase1.exploring is None and state.phase1.explorations[0].report == "balanced"
    assert state.phase1.awaiting_planner and state.llm.unconsumed("explorer") == ()


def test_llm_ledger_and_failed_calls_stay_out_of_the_dialogue():
    events = start() + [
        ev(m.LlmRequested(call_id="1", agent="planner", provider="p", model="x", messages=[{"role": "user", "content": "t"}])),
        ev(m.LlmResponded(call_id="1", agent="planner", content="x", input_tokens=100, output_tokens=20, cost_usd=0.01)),
        ev(m.LlmRequested(call_id="2", agent="planner", provider="p", model="x", messages=[{"role": "user", "content": "t"}])),
        ev(m.LlmResponded(call_id="2", agent="planner", content="", error="overloaded")),
    ]
    llm = replay(RUN, events).llm
    assert (llm.calls, llm.errors, llm.input_tokens, llm.output_tokens) == (2, 1, 100, 20)
    assert llm.cost_usd == pytest.approx(0.01) and llm.dialogues == {"planner": (("t", "x"),)}


def test_unusable_answers_count_and_stop_and_seed():
    events = start() + [ev(m.AgentOutputRejected(agent="planner", reason="no tags", attempts=3))] * 2
    state = replay(RUN, events)
    assert state.phase1.planner_failures == 2 and state.phase1.awaiting_planner
    events += batch(1, "arch_001")
    assert replay(RUN, events).phase1.planner_failures == 0
    events += proxy("arch_001", val=3.0) + [ev(m.PhaseStopped(phase=1, reason="planner", arch_ids=["arch_001"]))]
    events += [ev(m.EvaluationRequested(eval_id="w", request="final_wave1", task="t", model_source="s", arch_id="arch_001")),
               ev(m.EvaluationCompleted(eval_id="w", status="ok", val_metric=2.5, request="final_wave1"), "trainer"),
               ev(m.SeedSelected(arch_id="arch_001", source="s", recipe={}, val_metric=2.5, eval_id="w"))]
    state = replay(RUN, events)
    assert state.phase1.stopped.arch_ids == ["arch_001"] and state.phase1.archs["arch_001"].wave1_metric == 2.5
    assert not state.phase1.awaiting_planner and state.phase1.seed.arch_id == "arch_001"


# ---------------------------------------------------------------- evaluations, agents


def test_evaluation_records_progress_and_duplicates():
    events = start() + [
        ev(m.EvaluationRequested(eval_id="e1", request="proxy", task="t", model_source="s", arch_id="a"), "x"),
        ev(m.EvaluationStarted(eval_id="e1", device="cpu", worker="w"), "trainer", t=10.0),
        ev(m.EvaluationProgress(eval_id="e1", epoch=2, epochs=5, train_loss=1.0, val_metric=40.0), "trainer"),
        ev(m.EvaluationProgress(eval_id="e1", epoch=1, epochs=5, train_loss=1.0, val_metric=50.0), "trainer"),
    ]
    evals = replay(RUN, events).evals
    record = evals.records["e1"]
    assert (record.epoch, record.epochs, record.progress_metric, record.started_at) == (2, 5, 40.0, 10.0)
    assert [r.eval_id for r in evals.in_flight] == ["e1"]
    done = ev(m.EvaluationCompleted(eval_id="e1", status="ok", val_metric=30.0, request="proxy", epochs_done=5), "trainer")
    evals = replay(RUN, events + [done, done]).evals
    assert evals.by_status == {"ok": 1} and evals.in_flight == [] and evals.records["e1"].val_metric == 30.0


def test_agents_and_restarts():
    state = replay(RUN, [
        ev(m.AgentStarted(role="planner", pid=1, host="h"), t=1.0),
        ev(m.AgentHeartbeat(role="planner"), t=5.0),
        ev(m.AgentStopped(role="planner"), t=6.0),
        ev(m.ServiceRestarted(service="recorder", pid=9, attempt=1, backoff_s=0.5)),
        ev(m.ServiceRestarted(service="recorder", pid=10, attempt=2, backoff_s=1.0)),
    ])
    planner = state.agents["planner@p1"]
    assert (planner.status, planner.last_seen) == ("stopped", 6.0)
    assert state.agents["recorder"].restarts == 2


def test_unknown_kind_is_skipped_with_one_log_line():
    unknown = m.Envelope(id="u", run_id=RUN, kind="from.the.future", time=0.0, sender=m.Sender(agent="x"),
                         payload=m.UnknownPayload(kind="from.the.future", raw=b"{}"))
    with capture_logs() as logs:
        state = replay(RUN, [ev(m.RunStarted()), unknown, unknown, ev(m.RunFailed(reason="x"))])
    assert state.status == "failed" and state.n_events == 4
    skipped = [entry for entry in logs if entry["event"] == "unknown event kind skipped"]
    assert len(skipped) == 1 and skipped[0]["kind"] == "from.the.future"


def test_fold_is_pure_and_the_log_gives_the_same_state(tmp_path):
    events = start() + batch(1, "arch_001") + proxy("arch_001", val=2.0)
    assert replay(RUN, events) == replay(RUN, events)
    empty = RunState(run_id=RUN)
    assert fold(empty, events[0]) == fold(empty, events[0]) and empty == RunState(run_id=RUN)
    with EventLog(tmp_path / "l.sqlite") as log:
        log.append(events)
        assert load_run_state(log, RUN) == replay(RUN, events)


def test_a_run_recorded_before_typed_settings_replays_to_the_same_state():
    """A Phase 1 run recorded by the previous version (run.requested with an untyped config dict,
    the state folded by the two old folds) gives the same facts through the one fold."""
    import json
    from pathlib import Path

    fixtures = Path(__file__).parents[1] / "fixtures"
    expected = json.loads((fixtures / "legacy_phase1_run.expected.json").read_text())
    envelopes = []
    for line in (fixtures / "legacy_phase1_run.jsonl").read_text().splitlines():
        row = json.loads(line)
        envelopes.append(m.Envelope(id=row["id"], run_id=row["run_id"], kind=row["kind"], time=row["time"],
                                    sender=m.Sender(**row["sender"]), causation_id=row["causation_id"],
                                    payload=m.decode_payload(row["kind"], json.dumps(row["payload"]))))
    state = replay(expected["run_id"], envelopes)
    phase1 = state.phase1
    assert state.n_events == expected["events"] and state.status == expected["status"]
    assert state.settings.phase1.budget == expected["budget"] and state.settings.phase1.patience == expected["patience"]
    assert state.settings.task.name == expected["task"] and state.settings.task.input_shape == (3, 8, 8)
    assert (phase1.budget_used, phase1.since_improvement, phase1.best_proxy) == (
        expected["budget_used"], expected["since_improvement"], expected["best_proxy"])
    assert [a.arch_id for a in phase1.leaderboard()] == expected["leaderboard"]
    assert phase1.stopped.reason == expected["stopped"]
    assert {a: [arch.status, arch.proxy_metric, arch.params] for a, arch in phase1.archs.items()} == expected["archs"]
    assert {a: [arch.wave1_status, arch.wave1_metric] for a, arch in phase1.archs.items()
            if arch.wave1_eval_id} == expected["wave1"]
    assert state.evals.by_status == expected["evals_by_status"]
