import pytest
from structlog.testing import capture_logs

from agentnas.bus import messages as m
from agentnas.store.log import EventLog
from agentnas.store.projection import RunState, fold, load_run_state, replay

S = m.Sender(agent="planner", instance="p1")


def ev(payload, t=0.0):
    env = m.make_event(payload, run_id="r1", sender=S)
    return m.Envelope(**{**{f: getattr(env, f) for f in env.__struct_fields__}, "time": t})


def done(eval_id, status="ok", val=None, request="proxy", phase=1, arch=""):
    return ev(m.EvaluationCompleted(eval_id=eval_id, status=status, val_metric=val, request=request, phase=phase, arch_id=arch))


def test_run_lifecycle():
    state = replay("r1", [ev(m.RunRequested(task="addigits", phases=(1,))), ev(m.RunStarted())])
    assert (state.status, state.task, state.phases, state.n_events) == ("running", "addigits", (1,), 2)
    assert replay("r1", [ev(m.RunStarted()), ev(m.RunFailed(reason="boom"))]).failure == "boom"
    assert replay("r1", [ev(m.RunFinished(summary={"a": 1}))]).summary == {"a": 1}


@pytest.mark.parametrize(
    "results, expected",
    [
        # (status, val) in completion order -> (budget, ok, failed, since_improvement, best)
        ([("ok", 10.0), ("ok", 12.0), ("ok", 9.0), ("ok", 9.5)], (4, 4, 0, 1, 9.0)),
        # failures use budget but neither reset nor advance patience
        ([("ok", 10.0), ("ok", 11.0), ("error", None), ("oom", None), ("ok", 12.0)], (5, 3, 2, 2, 10.0)),
        ([("timeout", None), ("rejected", None)], (2, 0, 2, 0, None)),
        # equal is not an improvement
        ([("ok", 5.0), ("ok", 5.0)], (2, 2, 0, 1, 5.0)),
    ],
)
def test_budget_and_patience(results, expected):
    events = [done(f"e{i}", s, v) for i, (s, v) in enumerate(results)]
    c = replay("r1", events).phase_counters[1]
    assert (c.budget_used, c.successes, c.failures, c.since_improvement, c.best_val) == expected


def test_duplicate_completion_counts_once_and_validations_do_not_use_budget():
    state = replay("r1", [
        ev(m.EvaluationStarted(eval_id="e1", device="cpu", worker="w")),
        done("e1", val=3.0), done("e1", val=3.0),
        done("v1", request="validate"),
    ])
    assert state.phase_counters[1].budget_used == 1
    assert state.evals_by_status == {"ok": 2}
    assert state.in_flight == frozenset() and state.completed == {"e1", "v1"}


def test_leaderboard_is_sorted_best_first_and_bounded():
    events = [done(f"e{i}", val=float(30 - i), arch=f"arch_{i:03d}") for i in range(15)]
    events.append(done("w", val=0.5, request="final_wave1", arch="arch_003"))
    board = replay("r1", events).leaderboard
    assert len(board) == 10
    assert [e.val_metric for e in board] == sorted(e.val_metric for e in board)
    assert board[0].request == "final_wave1" and board[1].arch_id == "arch_014"


def test_phases_are_counted_apart():
    state = replay("r1", [done("a", val=1.0, phase=1), done("b", val=2.0, phase=3), done("c", "error", phase=3)])
    assert state.phase_counters[1].budget_used == 1
    assert state.phase_counters[3].budget_used == 2 and state.phase_counters[3].best_val == 2.0


def test_llm_ledger():
    state = replay("r1", [
        ev(m.LlmResponded(call_id="1", agent="planner", content="x", input_tokens=100, output_tokens=20, cost_usd=0.01)),
        ev(m.LlmResponded(call_id="2", agent="planner", content="", error="overloaded", cost_usd=0.0)),
    ])
    assert (state.llm_calls, state.llm_errors, state.input_tokens, state.output_tokens) == (2, 1, 100, 20)
    assert state.cost_usd == pytest.approx(0.01)


def test_agents_and_restarts():
    state = replay("r1", [
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
    unknown = m.Envelope(id="u", run_id="r1", kind="from.the.future", time=0.0, sender=S,
                         payload=m.UnknownPayload(kind="from.the.future", raw=b"{}"))
    with capture_logs() as logs:
        state = replay("r1", [ev(m.RunStarted()), unknown, unknown, ev(m.RunFailed(reason="x"))])
    assert state.status == "failed" and state.n_events == 4
    skipped = [l for l in logs if l["event"] == "unknown event kind skipped"]
    assert len(skipped) == 1 and skipped[0]["kind"] == "from.the.future"


def test_fold_is_pure():
    start = RunState(run_id="r1")
    e = done("e1", val=1.0)
    a, b = fold(start, e), fold(start, e)
    assert a == b and start == RunState(run_id="r1")


def test_state_from_log_equals_state_from_events(tmp_path):
    events = [ev(m.RunRequested(task="t")), ev(m.RunStarted()), done("e1", val=2.0), done("e2", "oom")]
    with EventLog(tmp_path / "l.sqlite") as log:
        log.append(events)
        assert load_run_state(log, "r1") == replay("r1", events)


def test_rejected_architectures_use_budget_and_seed_is_shown():
    state = replay("r1", [
        done("e1", val=4.0),
        ev(m.ArchitectureRejected(arch_id="arch_002", reason="never validated", attempts=11)),
        done("e2", val=5.0),
        ev(m.PhaseStopped(phase=1, reason="planner chose STOP", arch_ids=["arch_001"])),
        ev(m.SeedSelected(arch_id="arch_001", source="s", recipe={}, val_metric=3.5, eval_id="w")),
    ])
    c = state.phase_counters[1]
    assert (c.budget_used, c.failures, c.since_improvement) == (3, 1, 1)
    assert (state.stopped, state.seed_arch, state.seed_val_metric) == ("planner chose STOP", "arch_001", 3.5)
