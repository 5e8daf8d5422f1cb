"""A run's state: one pure fold over the run's events, with a section per phase.

`fold(state, event) -> state` does no I/O and reads no clock; the state is a frozen Struct
replaced, never mutated. The agents, `agentnas status`, the `runs` table (through
`status_after`) and the dashboard all read this one fold; later phases add sections and
event kinds here, not new folds.

Sections: lifecycle and settings (here), `evals` (every evaluation, any phase), `llm` (the
ledger and each agent's dialogue), `costs` (time, device time, tokens per stage), `phase1`,
`space` (Phases 1.5 and 2), `search` (Phase 3).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
import structlog

from agentnas.bus import messages as m
from agentnas.bus.settings import RunSettings
from agentnas.store.state.costs import Costs, fold_costs
from agentnas.store.state.evals import Evaluations, fold_evals
from agentnas.store.state.llm import LlmSection, consume, fold_llm
from agentnas.store.state.phase1 import Phase1, fold_phase1
from agentnas.store.state.search import Search, fold_search
from agentnas.store.state.space import SpaceSection, fold_space

log = structlog.get_logger("agentnas.state")

# The run's status after a lifecycle event; the one rule for the state and the runs table.
STATUS_AFTER: dict[str, str] = {
    "run.requested": "requested",
    "run.started": "running",
    "run.finished": "finished",
    "run.failed": "failed",
}
ENDED = ("finished", "failed")

# An agent's decision that acts upon every LLM answer it has had so far.
DECISIONS = (m.ExplorationRequested, m.ExperimentProposed, m.PhaseStopped, m.AgentOutputRejected,
             m.ExplorationStepped, m.ExplorationReported, m.EvaluationRequested, m.ModularizerFinished,
             m.SlotPlanProposed, m.AlternativeImplemented, m.AlternativeDropped)


def status_after(status: str, kind: str) -> str:
    """The status once an event of `kind` is folded (an ended run stays ended)."""
    if status in ENDED:
        return status
    return STATUS_AFTER.get(kind, status)


class AgentState(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    instance: str
    status: str  # running | stopped
    last_seen: float
    restarts: int = 0


class RunState(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    status: str = "unknown"  # requested | running | finished | failed
    settings: RunSettings | None = None  # None until run.requested (or for runs without one, e.g. _system)
    task: str = ""
    phases: tuple[int, ...] = ()
    failure: str = ""
    summary: dict = {}
    n_events: int = 0
    first_time: float = 0.0
    last_time: float = 0.0
    agents: dict[str, AgentState] = {}
    rejected_messages: int = 0
    evals: Evaluations = Evaluations()
    llm: LlmSection = LlmSection()
    costs: Costs = Costs()
    phase1: Phase1 = Phase1()
    space: SpaceSection = SpaceSection()
    search: Search = Search()
    result: m.RunResult | None = None

    @property
    def requested(self) -> bool:
        return self.settings is not None

    @property
    def ended(self) -> bool:
        return self.status in ENDED


def _settings_of(payload: m.RunRequested) -> RunSettings:
    if payload.settings is not None:
        return payload.settings
    return RunSettings.from_legacy(payload.task, tuple(payload.phases), payload.config)


def _agent_key(env: m.Envelope, role: str) -> str:
    return f"{role}@{env.sender.instance}"


def _fold_agents(state: RunState, env: m.Envelope) -> RunState:
    match env.payload:
        case m.AgentStarted(role=role) | m.AgentHeartbeat(role=role):
            key = _agent_key(env, role)
            old = state.agents.get(key)
            agent = AgentState(role=role, instance=env.sender.instance, status="running", last_seen=env.time,
                               restarts=old.restarts if old else 0)
            return msgspec.structs.replace(state, agents={**state.agents, key: agent})
        case m.AgentStopped(role=role):
            key = _agent_key(env, role)
            old = state.agents.get(key)
            if old is None:
                return state
            agent = msgspec.structs.replace(old, status="stopped", last_seen=env.time)
            return msgspec.structs.replace(state, agents={**state.agents, key: agent})
        case m.ServiceRestarted(service=service, pid=pid):
            old = state.agents.get(service)
            agent = AgentState(role=service, instance=str(pid), status="running", last_seen=env.time,
                               restarts=(old.restarts if old else 0) + 1)
            return msgspec.structs.replace(state, agents={**state.agents, service: agent})
    return state


def fold(state: RunState, env: m.Envelope) -> RunState:
    """Apply one event. Unknown payloads change only the event count."""
    payload = env.payload
    state = msgspec.structs.replace(state, n_events=state.n_events + 1, last_time=env.time,
                                    first_time=state.first_time or env.time,
                                    status=status_after(state.status, env.kind))
    match payload:
        case m.RunRequested(task=task, phases=phases) if state.settings is None:
            state = msgspec.structs.replace(state, settings=_settings_of(payload), task=task, phases=tuple(phases))
        case m.RunFinished(summary=summary, result=result):
            state = msgspec.structs.replace(state, summary=summary, result=state.result or result)
        case m.RunFailed(reason=reason):
            state = msgspec.structs.replace(state, failure=state.failure or reason)
        case m.MessageRejected():
            return msgspec.structs.replace(state, rejected_messages=state.rejected_messages + 1)
        case m.AgentStarted() | m.AgentHeartbeat() | m.AgentStopped() | m.ServiceRestarted():
            return _fold_agents(state, env)
        case m.UnknownPayload():
            return state
    # sections
    llm = state.llm
    if isinstance(payload, DECISIONS):
        llm = consume(llm, env.sender.agent)
    explorer_turns = llm.turns("explorer")
    llm = fold_llm(llm, env)
    record = None
    costs = state.costs
    if isinstance(payload, m.EvaluationCompleted):
        before = state.evals.records.get(payload.eval_id)
        if before is None or not before.done:  # a second completion of an evaluation costs nothing more
            costs = fold_costs(costs, env)
    elif state.settings is not None:
        costs = fold_costs(costs, env, first_phase=_first_stage(state.settings))
    evals = fold_evals(state.evals, env)
    if isinstance(payload, (m.EvaluationRequested, m.EvaluationCompleted)):
        record = evals.records.get(payload.eval_id)
    settings = state.settings
    phase1, space, search = state.phase1, state.space, state.search
    if settings is not None and settings.runs_phase(1):
        completed = record if isinstance(payload, m.EvaluationCompleted) else None
        phase1 = fold_phase1(phase1, env, explorer_turns=explorer_turns, record=completed)
    if settings is not None and (settings.runs_phase(2) or settings.runs_phase(3)):  # Phase 3 alone gets a space
        space = fold_space(space, env, record)
    if settings is not None and settings.runs_phase(3):
        search = fold_search(search, env, record)
    return msgspec.structs.replace(state, llm=llm, evals=evals, costs=costs, phase1=phase1, space=space,
                                   search=search)


def _first_stage(settings: RunSettings) -> str:
    return str(min(settings.phases)) if settings.phases else "1"


def replay(run_id: str, events: Iterable[m.Envelope]) -> RunState:
    """Fold a run's events in order, skipping (and logging once per kind) unknown kinds."""
    state = RunState(run_id=run_id)
    unknown: set[str] = set()
    for env in events:
        if isinstance(env.payload, m.UnknownPayload) and env.kind not in unknown:
            unknown.add(env.kind)
            log.warning("unknown event kind skipped", kind=env.kind, run_id=run_id, event_id=env.id)
        state = fold(state, env)
    return state
