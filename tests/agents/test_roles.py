"""Each role's `due(state)` as a table: the run's events in, the work keys out.

`due` is the whole of a role's decision about what to do next; the service loop only
performs the work. These tables pin it down without NATS, a trainer or an LLM.
"""

from pathlib import Path

import pytest

from agentnas.agents.code_executor import CodeExecutorRole
from agentnas.agents.evolver import EvolverRole
from agentnas.agents.explorer import ExplorerRole
from agentnas.agents.modularizer import ModularizerRole, RuleModularizerRole
from agentnas.agents.planner import LlmPlanner, RulePlannerRole
from agentnas.agents.search import initial_population
from agentnas.agents.slot_planner import SlotPlannerRole
from agentnas.bus import messages as m
from agentnas.bus import space as sp
from agentnas.bus.config import Config
from agentnas.bus.settings import EvolutionSettings, Phase1Settings, RunSettings, TaskInfo
from agentnas.store.state import replay
from tests.conftest import REPO

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


# ---------------------------------------------------------------- Phases 1.5, 2, 3


SPACE = sp.load_space(REPO / "tests/fixtures/space_example.json")
STACK = '''import torch
from torch import nn
import torch.nn.functional as F


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 28)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(x.mean(dim=(2, 3)))
'''
MODULAR = "class Architecture(nn.Module):\n    def forward(self, x):\n        return self.body(x)\n"


def full_run(phases=(1, 2, 3), algorithm="re", budget=4):
    settings = RunSettings(task=TASK, task_ref="addigits", phases=phases,
                           phase1=Phase1Settings(budget=1, n_parallel=2),
                           evolution=EvolutionSettings(algorithm=algorithm, budget=budget, population=4,
                                                       init_single_mutations=1, init_double_mutations=1,
                                                       init_random=1, top_k_full=1))
    return [ev(m.RunRequested(task="addigits", phases=phases, settings=settings), "cli")]


def seeded(source=STACK, phases=(1, 2, 3), **kw):
    return full_run(phases, **kw) + [ev(m.SeedSelected(arch_id="arch_001", source=source, recipe={"epochs": 2},
                                                       val_metric=3.0, eval_id="w"))]


def stage(name, agent="x"):
    return [ev(m.PhaseStarted(phase=name), agent)]


def equivalence(arch, status, n=1):
    eid = f"{RUN}-{arch}-eq{n}"
    return [ev(m.EvaluationRequested(eval_id=eid, request="equivalence", task="t", model_source="s", arch_id=arch),
               "modularizer"),
            ev(m.EvaluationCompleted(eval_id=eid, status=status, request="equivalence", arch_id=arch), "trainer")]


def rewrites(*statuses):
    events = []
    for n, status in enumerate(statuses, 1):
        events += equivalence(f"modular-{n}", status, n)
    return events


@pytest.mark.parametrize("events, expected", [
    (full_run(), []),  # no seed yet
    (seeded(), ["modular:start"]),
    (seeded(MODULAR) + stage("1.5"), ["modular:skip"]),  # not a block stack
    (seeded() + stage("1.5"), ["modular:attempt:1"]),
    (seeded() + stage("1.5") + equivalence("modular-1", "ok")[:1], []),  # its check runs
    (seeded() + stage("1.5") + rewrites("rejected"), ["modular:attempt:2"]),
    (seeded() + stage("1.5") + rewrites("rejected", "ok"), ["modular:accept"]),
    (seeded() + stage("1.5") + rewrites(*["rejected"] * 6), ["modular:give-up"]),  # 1 + 5 retries
    (seeded() + stage("1.5") + [ev(m.ModularizerFinished(outcome="skipped", source=MODULAR))], []),
    (seeded(phases=(1,)), []),  # no Phase 2 in this run
])
def test_modularizer_due(events, expected):
    assert keys(ModularizerRole(CONFIG, HOME), events) == expected


def test_the_rule_based_modularizer_keeps_the_seed():
    assert keys(RuleModularizerRole(CONFIG, HOME), seeded() + stage("1.5")) == ["modular:skip"]


def planned(space=SPACE, plan=1):
    return [ev(m.SlotPlanProposed(plan=plan, space=space), "slot_planner")]


def every_alternative_resolved(space=SPACE, plan=1):
    events = []
    for slot in space.slots:
        for k in range(1, len(slot.alternatives)):
            events.append(ev(m.AlternativeImplemented(plan=plan, slot=slot.name, index=k, source="s"), "code_executor"))
    return events


MODULARIZED = seeded() + [ev(m.ModularizerFinished(outcome="skipped", source=MODULAR))]
RESOLVED = MODULARIZED + stage("2") + planned() + every_alternative_resolved()


@pytest.mark.parametrize("phases_events, expected", [
    (seeded(), []),  # the Modularizer has not finished
    (MODULARIZED, ["slots:start"]),
    (MODULARIZED + stage("2"), ["slots:plan:1"]),
    (MODULARIZED + stage("2") + planned(), []),  # the Code Executor writes alternatives
    (RESOLVED, ["slots:gate:1"]),
    (RESOLVED + equivalence("plan1-seed", "ok")[:1], []),
    (RESOLVED + equivalence("plan1-seed", "ok"), ["slots:accept:1"]),
    (RESOLVED + equivalence("plan1-seed", "rejected"), ["slots:reject:1"]),
    (RESOLVED + equivalence("plan1-seed", "rejected") + [ev(m.SpaceRejected(plan=1, reason="x"))], ["slots:plan:2"]),
    # two plans rejected: the run ends with the seed as its result
    (RESOLVED + [ev(m.SpaceRejected(plan=1, reason="x"))] + planned(plan=2) + [ev(m.SpaceRejected(plan=2, reason="y"))],
     ["final:start"]),
    (RESOLVED + [ev(m.SpaceAccepted(plan=1, space=SPACE))], []),  # Phase 3 takes over
])
def test_slot_planner_due(phases_events, expected):
    assert keys(SlotPlannerRole(CONFIG, HOME), phases_events) == expected


def test_a_run_that_ends_with_phase_2_hands_over_the_seed():
    events = seeded(phases=(1, 2)) + [ev(m.ModularizerFinished(outcome="skipped", source=MODULAR))] + stage("2") \
        + planned() + every_alternative_resolved() + [ev(m.SpaceAccepted(plan=1, space=SPACE))]
    assert keys(SlotPlannerRole(CONFIG, HOME), events) == ["final:start"]


def accepted(**kw):
    return full_run(**kw) + [ev(m.SpaceAccepted(plan=0, space=SPACE), "cli")]


def proposal(index, config, origin="seed"):
    return m.ProposedConfiguration(index=index, config_id=sp.config_id(SPACE, config),
                                   key=sp.canonical_key(SPACE, config), choices=config.choices,
                                   lr_index=config.lr_index, origin=origin)


SEED_CONFIG = sp.seed_configuration(SPACE)
# the run's own second initial member (the evolver checks that its history is this run's)
OTHER = initial_population(SPACE, EvolutionSettings(algorithm="re", budget=4, population=4, init_single_mutations=1,
                                                    init_double_mutations=1, init_random=1, top_k_full=1), 42)[1]


def proposed_and_requested(*proposals):
    events = [ev(m.ConfigurationsProposed(algorithm="re", proposals=list(proposals)), "evolver")]
    for p in proposals:
        events.append(ev(m.EvaluationRequested(eval_id=f"{RUN}-{p.config_id}-proxy", request="proxy", task="t",
                                               model_source="s", arch_id=p.config_id, phase=3), "evolver"))
    return events


def proxy_done(p, val=2.0):
    return [ev(m.EvaluationCompleted(eval_id=f"{RUN}-{p.config_id}-proxy", status="ok", request="proxy",
                                     arch_id=p.config_id, val_metric=val, phase=3), "trainer")]


P0, P1 = proposal(0, SEED_CONFIG), proposal(1, OTHER, "single")


@pytest.mark.parametrize("events, expected", [
    (full_run(), []),  # no space yet
    (accepted(), ["search:start"]),
    (accepted() + stage("3"), ["search:propose:0"]),
    (accepted() + stage("3") + [ev(m.ConfigurationsProposed(algorithm="re", proposals=[P0]), "evolver")],
     ["search:proxy:0"]),  # died between proposing and requesting
    (accepted() + stage("3") + proposed_and_requested(P0, P1), []),  # both trainer slots busy
    (accepted() + stage("3") + proposed_and_requested(P0, P1) + proxy_done(P0), ["search:propose:2"]),
    (accepted(budget=2) + stage("3") + proposed_and_requested(P0, P1) + proxy_done(P0), []),  # budget: wait
    (accepted(budget=2) + stage("3") + proposed_and_requested(P0, P1) + proxy_done(P0) + proxy_done(P1, 1.0),
     ["search:stop"]),
    (accepted(budget=2) + stage("3") + proposed_and_requested(P0, P1) + proxy_done(P0) + proxy_done(P1, 1.0)
     + [ev(m.PhaseStopped(phase=3, reason="budget", arch_ids=[P1.config_id]), "evolver")], ["search:wave1"]),
])
def test_evolver_due(events, expected):
    assert keys(EvolverRole(CONFIG, HOME), events) == expected


def test_gdas_proposes_the_seed_then_searches_then_evaluates_the_argmax():
    base = accepted(algorithm="gdas") + stage("3")
    assert keys(EvolverRole(CONFIG, HOME), base) == ["search:propose:0"]
    base += proposed_and_requested(P0)
    assert keys(EvolverRole(CONFIG, HOME), base) == ["search:gdas"]
    gdas = f"{RUN}-gdas-gdas"
    base += [ev(m.EvaluationRequested(eval_id=gdas, request="gdas", task="t", model_source="s", arch_id="gdas",
                                      phase=3), "evolver")]
    assert keys(EvolverRole(CONFIG, HOME), base) == []
    base += [ev(m.EvaluationCompleted(eval_id=gdas, status="ok", request="gdas", arch_id="gdas", choices=[2, 1],
                                      phase=3), "trainer")]
    assert keys(EvolverRole(CONFIG, HOME), base) == ["search:argmax"]
