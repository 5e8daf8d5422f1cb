"""Phase 1 state as a fold: given these events, expect this state."""

from agentnas.agents.phase1 import Phase1State, replay
from agentnas.bus import messages as m

RUN = "r1"


def ev(payload, agent="planner"):
    return m.make_event(payload, run_id=RUN, sender=m.Sender(agent=agent))


def proposal(arch_id, source=""):
    return m.Proposal(arch_id=arch_id, description=f"design {arch_id}", recipe={"epochs": 3}, source=source)


def start(budget=10, patience=3):
    return [ev(m.RunRequested(task="addigits", phases=(1,), config={"phase1": {"budget": budget, "patience": patience}}), "cli")]


def validate(arch, n, status="ok", reason=""):
    eid = f"{arch}-v{n}"
    return [ev(m.EvaluationRequested(eval_id=eid, request="validate", task="t", model_source=f"src{n}", arch_id=arch), "code_executor"),
            ev(m.EvaluationCompleted(eval_id=eid, status=status, reason=reason, request="validate", params=100), "trainer")]


def proxy(arch, status="ok", val=None):
    eid = f"{arch}-proxy"
    return [ev(m.EvaluationRequested(eval_id=eid, request="proxy", task="t", model_source="src", arch_id=arch), "code_executor"),
            ev(m.EvaluationCompleted(eval_id=eid, status=status, val_metric=val, request="proxy"), "trainer")]


def test_a_new_run_awaits_the_planner():
    state = replay(RUN, start())
    assert state.requested and state.awaiting_planner and state.budget == 10 and state.patience == 3


def test_runs_without_phase_1_are_ignored():
    state = replay(RUN, [ev(m.RunRequested(task="t", phases=(2, 3)), "cli")])
    assert not state.requested and not state.awaiting_planner


def test_batch_resolution_budget_and_patience():
    events = start() + [ev(m.ExperimentProposed(batch=1, proposals=[proposal("arch_001"), proposal("arch_002")]))]
    state = replay(RUN, events)
    assert not state.awaiting_planner and state.batches == 1 and set(state.archs) == {"arch_001", "arch_002"}
    events += validate("arch_001", 1, "rejected", "shape") + validate("arch_001", 2)
    events += [ev(m.ArchitectureImplemented(arch_id="arch_001", source="src2", recipe={"epochs": 3}), "code_executor")]
    events += proxy("arch_001", val=5.0)
    state = replay(RUN, events)
    assert [a.status for a in state.archs["arch_001"].attempts] == ["rejected", "ok"]
    assert state.budget_used == 1 and not state.awaiting_planner  # arch_002 still open
    events += [ev(m.ArchitectureRejected(arch_id="arch_002", reason="never validated", attempts=11), "code_executor")]
    state = replay(RUN, events)
    # the rejected one uses budget but leaves patience alone; the batch is resolved
    assert state.budget_used == 2 and state.since_improvement == 0 and state.best_proxy == 5.0
    assert state.awaiting_planner
    events += [ev(m.ExperimentProposed(batch=2, proposals=[proposal("arch_003"), proposal("arch_004")]))]
    events += proxy("arch_003", val=6.0) + proxy("arch_004", "oom")
    state = replay(RUN, events)
    assert (state.budget_used, state.since_improvement, state.best_proxy) == (4, 1, 5.0)
    assert [a.arch_id for a in state.leaderboard()] == ["arch_001", "arch_003"]


def test_exploration_round_trip_and_dialogues():
    events = start() + [
        ev(m.LlmRequested(call_id="c1", agent="planner", provider="p", model="x", messages=[{"role": "user", "content": "turn 1"}])),
        ev(m.LlmResponded(call_id="c1", agent="planner", content="EXPLORE")),
        ev(m.ExplorationRequested(question="balance?")),
        ev(m.LlmRequested(call_id="c2", agent="explorer", provider="p", model="x", messages=[{"role": "user", "content": "q"}]), "explorer"),
        ev(m.LlmResponded(call_id="c2", agent="explorer", content="code"), "explorer"),
    ]
    state = replay(RUN, events)
    assert state.exploring.question == "balance?" and not state.awaiting_planner
    assert state.history("planner") == (("turn 1", "EXPLORE"),)  # acted upon by exploration.requested
    assert state.unconsumed("explorer") == (("q", "code"),)  # answered, not yet acted upon
    events += [ev(m.ExplorationStepped(step=1, code="print(1)", output="1"), "explorer"),
               ev(m.ExplorationReported(report="balanced", steps=1), "explorer")]
    state = replay(RUN, events)
    assert state.exploring is None and state.explorations[0].report == "balanced" and state.awaiting_planner
    assert state.unconsumed("explorer") == ()


def test_failed_llm_calls_do_not_enter_the_dialogue():
    events = start() + [
        ev(m.LlmRequested(call_id="c1", agent="planner", provider="p", model="x", messages=[{"role": "user", "content": "t"}])),
        ev(m.LlmResponded(call_id="c1", agent="planner", content="", error="overloaded")),
    ]
    assert replay(RUN, events).dialogues == {}


def test_unusable_answers_count_and_stop_and_seed():
    events = start() + [ev(m.AgentOutputRejected(agent="planner", reason="no tags", attempts=3))] * 2
    state = replay(RUN, events)
    assert state.planner_failures == 2 and state.awaiting_planner
    events += [ev(m.ExperimentProposed(batch=1, proposals=[proposal("arch_001")]))]
    assert replay(RUN, events).planner_failures == 0
    events += proxy("arch_001", val=3.0) + [ev(m.PhaseStopped(phase=1, reason="planner", arch_ids=["arch_001"]))]
    events += [ev(m.EvaluationRequested(eval_id="w", request="final_wave1", task="t", model_source="s", arch_id="arch_001")),
               ev(m.EvaluationCompleted(eval_id="w", status="ok", val_metric=2.5, request="final_wave1"), "trainer")]
    state = replay(RUN, events)
    assert state.stopped.arch_ids == ["arch_001"] and state.archs["arch_001"].wave1_metric == 2.5
    assert not state.awaiting_planner


def test_fold_is_pure():
    events = start() + [ev(m.ExperimentProposed(batch=1, proposals=[proposal("arch_001")]))]
    assert replay(RUN, events) == replay(RUN, events)
    assert Phase1State(run_id=RUN) == Phase1State(run_id=RUN)
