"""Each role's `due(state)` as a table: the run's events in, the work keys out.

`due` is the whole of a role's decision about what to do next; the service loop only
performs the work. These tables pin it down without NATS, a trainer or an LLM.
"""

from pathlib import Path

import pytest

from agentnas.agents.code_executor import CodeExecutorRole
from agentnas.agents.explorer import ExplorerRole
from agentnas.agents.planner import LlmPlanner, RulePlannerRole
from agentnas.bus import messages as m
from agentnas.bus.config import Config
from agentnas.bus.settings import Phase1Settings, RunSettings, TaskInfo
from agentnas.store.state import replay

RUN = "r1"
TASK = TaskInfo(name="addigits", input_shape=(3, 8, 8), output_shape=(28,), loss="cross_entropy", metric="error_pct")


def ev(payload, agent="planner"):
    return m.make_event(payload, run_id=RUN, sender=m.Sender(agent=agent))


def requested(phases=(1,), budget=4, patience=3, retries=1):
    settings = RunSettings(task=TASK, task_ref="addigits", phases=phases,
                           phase1=Phase1Settings(budget=budget, patience=patience, code_retries=retries, top_k_full=2))
    return [ev(m.RunRequested(task="addigits", phases=phases, settings=settings), "cli")]


def proposed(batch, *archs, source=""):
    return [ev(m.ExperimentProposed(batch=batch, proposals=[
        m.Proposal(arch_id=a, description=a, recipe={"epochs": 2}, source=source) for a in archs]))]


def validated(arch, n, status):
    eid = f"{RUN}-{arch}-v{n}"
    return [ev(m.EvaluationRequested(eval_id=eid, request="validate", task="t", model_source="s", arch_id=arch),
               "code_executor"),
            ev(m.EvaluationCompleted(eval_id=eid, status=status, request="validate", arch_id=arch), "trainer")]


def implemented(arch, val, status="ok"):
    eid = f"{RUN}-{arch}-proxy"
    return [ev(m.ArchitectureImplemented(arch_id=arch, source="s"), "code_executor"),
            ev(m.EvaluationRequested(eval_id=eid, request="proxy", task="t", model_source="s", arch_id=arch),
               "code_executor"),
            ev(m.EvaluationCompleted(eval_id=eid, status=status, request="proxy", arch_id=arch,
                                     val_metric=val if status == "ok" else None), "trainer")]


def wave1(arch, val, status="ok"):
    eid = f"{RUN}-{arch}-wave1"
    return [ev(m.EvaluationRequested(eval_id=eid, request="final_wave1", task="t", model_source="s", arch_id=arch)),
            ev(m.EvaluationCompleted(eval_id=eid, status=status, request="final_wave1", arch_id=arch, val_metric=val),
               "trainer")]


def keys(role, events):
    return [w.key.removeprefix(f"{RUN}:") for w in role.due(replay(RUN, events))]


CONFIG, HOME = Config(), Path("/nonexistent")
STOPPED = [ev(m.PhaseStopped(phase=1, reason="planner chose STOP", arch_ids=[]))]


@pytest.mark.parametrize("role_class", [LlmPlanner, RulePlannerRole])
@pytest.mark.parametrize("events, expected", [
    (requested(), ["turn:0"]),  # a new run: the first turn
    (requested(phases=(2, 3)), []),  # not a Phase 1 run
    (requested() + proposed(1, "arch_001", "arch_002"), []),  # a batch is running
    (requested() + proposed(1, "arch_001") + implemented("arch_001", 5.0), ["turn:1"]),  # resolved: next turn
    (requested(budget=1) + proposed(1, "arch_001") + implemented("arch_001", 5.0), ["stop"]),  # budget spent
    (requested(patience=1) + proposed(1, "arch_001", "arch_002") + implemented("arch_001", 5.0)
     + implemented("arch_002", 6.0), ["stop"]),  # patience spent
    (requested() + [ev(m.AgentOutputRejected(agent="planner", reason="x", attempts=3))] * 3, ["stop"]),
    (requested() + [ev(m.ExplorationRequested(question="q"))], []),  # the explorer is at work
    (requested() + proposed(1, "arch_001") + implemented("arch_001", 5.0) + STOPPED, ["wave1"]),
    (requested() + proposed(1, "arch_001") + implemented("arch_001", 5.0) + STOPPED + wave1("arch_001", 4.0),
     ["seed"]),
    (requested() + proposed(1, "arch_001") + implemented("arch_001", 0, "oom") + STOPPED, ["fail"]),
    (requested() + proposed(1, "arch_001") + implemented("arch_001", 5.0) + STOPPED + wave1("arch_001", 4.0)
     + [ev(m.SeedSelected(arch_id="arch_001", source="s", recipe={}, val_metric=4.0, eval_id="w"))], ["final:start"]),
    (requested(phases=(1, 2, 3)) + proposed(1, "arch_001") + implemented("arch_001", 5.0) + STOPPED
     + wave1("arch_001", 4.0) + [ev(m.SeedSelected(arch_id="arch_001", source="s", recipe={}, val_metric=4.0,
                                                   eval_id="w"))], []),  # the next phase takes over
    (requested() + [ev(m.RunFailed(reason="x"))], []),  # an ended run asks nothing more
])
def test_planner_due(role_class, events, expected):
    assert keys(role_class(CONFIG, HOME), events) == expected


@pytest.mark.parametrize("events, expected", [
    (requested(), []),
    (requested() + proposed(1, "arch_001", "arch_002"), ["arch_001:attempt:1", "arch_002:attempt:1"]),
    (requested() + proposed(1, "arch_001") + validated("arch_001", 1, "rejected"), ["arch_001:attempt:2"]),
    # retries spent (code_retries 1: two attempts in all): give up
    (requested() + proposed(1, "arch_001") + validated("arch_001", 1, "rejected") + validated("arch_001", 2, "error"),
     ["arch_001:reject"]),
    (requested() + proposed(1, "arch_001") + validated("arch_001", 1, "ok"), ["arch_001:accept"]),
    # code the planner wrote itself gets one attempt only
    (requested() + proposed(1, "arch_001", source="x") + validated("arch_001", 1, "rejected"), ["arch_001:reject"]),
    (requested() + proposed(1, "arch_001") + implemented("arch_001", 3.0), []),
    # a validation in flight: nothing to do until it completes
    (requested() + proposed(1, "arch_001") + validated("arch_001", 1, "ok")[:1], []),
    # the phase stopped before this proposal was started
    (requested() + proposed(1, "arch_001") + STOPPED, []),
])
def test_code_executor_due(events, expected):
    assert keys(CodeExecutorRole(CONFIG, HOME), events) == expected


@pytest.mark.parametrize("events, expected", [
    (requested(), []),
    (requested() + [ev(m.ExplorationRequested(question="q"))], ["explore:1:0"]),
    (requested() + [ev(m.ExplorationRequested(question="q")),
                    ev(m.ExplorationStepped(step=1, code="c", output="o"), "explorer")], ["explore:1:1"]),
    (requested() + [ev(m.ExplorationRequested(question="q")),
                    ev(m.ExplorationReported(report="r", steps=0), "explorer")], []),
])
def test_explorer_due(events, expected):
    assert keys(ExplorerRole(CONFIG, HOME), events) == expected
