"""Run state as a pure fold over a run's events.

`fold(state, event) -> state` does no I/O and reads no clock; the state is a frozen Struct
replaced, never mutated. `replay` is the one place that decodes, skips unknown kinds (with a
log line) and folds; every agent calls `load_run_state` at start-up to rebuild its state.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
import structlog

from agentnas.bus import messages as m
from agentnas.store.log import EventLog

log = structlog.get_logger("agentnas.projection")

LEADERBOARD_SIZE = 10


class AgentState(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    instance: str
    status: str  # running | stopped
    last_seen: float
    restarts: int = 0


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    eval_id: str
    arch_id: str
    phase: int
    request: str
    val_metric: float
    params: int | None = None


class PhaseCounters(msgspec.Struct, frozen=True, kw_only=True):
    """Budget and patience of one search phase, counted from completed proxy evaluations."""

    budget_used: int = 0
    successes: int = 0
    failures: int = 0
    since_improvement: int = 0  # consecutive successful evaluations without a new best
    best_val: float | None = None


class RunState(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    status: str = "unknown"  # requested | running | finished | failed
    task: str = ""
    phases: tuple[int, ...] = ()
    failure: str = ""
    summary: dict = {}
    n_events: int = 0
    last_seq_time: float = 0.0
    agents: dict[str, AgentState] = {}
    evals_requested: int = 0
    evals_started: int = 0
    evals_by_status: dict[str, int] = {}
    completed: frozenset[str] = frozenset()
    in_flight: frozenset[str] = frozenset()
    phase_counters: dict[int, PhaseCounters] = {}
    leaderboard: tuple[Entry, ...] = ()  # best first (all metrics are errors)
    llm_calls: int = 0
    llm_errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    rejected_messages: int = 0
    stopped: str = ""  # why the search phase stopped
    seed_arch: str = ""
    seed_val_metric: float | None = None


def _replace(state: RunState, **changes) -> RunState:
    return msgspec.structs.replace(state, **changes)


def _count_phase(counters: PhaseCounters, done: m.EvaluationCompleted) -> PhaseCounters:
    if done.status != "ok" or done.val_metric is None:
        return msgspec.structs.replace(
            counters, budget_used=counters.budget_used + 1, failures=counters.failures + 1
        )
    improved = counters.best_val is None or done.val_metric < counters.best_val
    return msgspec.structs.replace(
        counters,
        budget_used=counters.budget_used + 1,
        successes=counters.successes + 1,
        since_improvement=0 if improved else counters.since_improvement + 1,
        best_val=done.val_metric if improved else counters.best_val,
    )


def _on_completed(state: RunState, done: m.EvaluationCompleted) -> RunState:
    if done.eval_id in state.completed:
        return state  # a second completion of the same evaluation changes nothing
    changes: dict = {
        "completed": state.completed | {done.eval_id},
        "in_flight": state.in_flight - {done.eval_id},
        "evals_by_status": {
            **state.evals_by_status,
            done.status: state.evals_by_status.get(done.status, 0) + 1,
        },
    }
    if done.request == "proxy":
        counters = state.phase_counters.get(done.phase, PhaseCounters())
        changes["phase_counters"] = {
            **state.phase_counters,
            done.phase: _count_phase(counters, done),
        }
    if done.status == "ok" and done.val_metric is not None and done.request != "validate":
        entry = Entry(
            eval_id=done.eval_id,
            arch_id=done.arch_id,
            phase=done.phase,
            request=done.request,
            val_metric=done.val_metric,
            params=done.params,
        )
        board = sorted((*state.leaderboard, entry), key=lambda e: e.val_metric)
        changes["leaderboard"] = tuple(board[:LEADERBOARD_SIZE])
    return _replace(state, **changes)


def _agent_key(env: m.Envelope, role: str) -> str:
    return f"{role}@{env.sender.instance}"


def fold(state: RunState, env: m.Envelope) -> RunState:
    """Apply one event. Unknown payloads change only the event count."""
    state = _replace(state, n_events=state.n_events + 1, last_seq_time=env.time)
    match env.payload:
        case m.RunRequested(task=task, phases=phases):
            return _replace(state, status="requested", task=task, phases=tuple(phases))
        case m.RunStarted():
            return _replace(state, status="running")
        case m.RunFinished(summary=summary):
            return _replace(state, status="finished", summary=summary)
        case m.RunFailed(reason=reason):
            return _replace(state, status="failed", failure=reason)
        case m.AgentStarted(role=role) | m.AgentHeartbeat(role=role):
            key = _agent_key(env, role)
            old = state.agents.get(key)
            agent = AgentState(
                role=role,
                instance=env.sender.instance,
                status="running",
                last_seen=env.time,
                restarts=old.restarts if old else 0,
            )
            return _replace(state, agents={**state.agents, key: agent})
        case m.AgentStopped(role=role):
            key = _agent_key(env, role)
            old = state.agents.get(key)
            if old is None:
                return state
            agent = msgspec.structs.replace(old, status="stopped", last_seen=env.time)
            return _replace(state, agents={**state.agents, key: agent})
        case m.ServiceRestarted(service=service):
            old = state.agents.get(service)
            agent = AgentState(
                role=service,
                instance=str(env.payload.pid),
                status="running",
                last_seen=env.time,
                restarts=(old.restarts if old else 0) + 1,
            )
            return _replace(state, agents={**state.agents, service: agent})
        case m.EvaluationRequested():
            return _replace(state, evals_requested=state.evals_requested + 1)
        case m.EvaluationStarted(eval_id=eval_id):
            if eval_id in state.completed or eval_id in state.in_flight:
                return state
            return _replace(
                state, evals_started=state.evals_started + 1, in_flight=state.in_flight | {eval_id}
            )
        case m.EvaluationCompleted():
            return _on_completed(state, env.payload)
        case m.LlmResponded(input_tokens=i, output_tokens=o, cost_usd=cost, error=error):
            return _replace(
                state,
                llm_calls=state.llm_calls + 1,
                llm_errors=state.llm_errors + (1 if error else 0),
                input_tokens=state.input_tokens + i,
                output_tokens=state.output_tokens + o,
                cost_usd=state.cost_usd + cost,
            )
        case m.MessageRejected():
            return _replace(state, rejected_messages=state.rejected_messages + 1)
        case m.ArchitectureRejected():
            # never validated: uses budget like a failed evaluation, leaves patience alone
            counters = state.phase_counters.get(1, PhaseCounters())
            counters = msgspec.structs.replace(counters, budget_used=counters.budget_used + 1,
                                               failures=counters.failures + 1)
            return _replace(state, phase_counters={**state.phase_counters, 1: counters})
        case m.PhaseStopped(reason=reason):
            return _replace(state, stopped=reason)
        case m.SeedSelected(arch_id=arch_id, val_metric=val):
            return _replace(state, seed_arch=arch_id, seed_val_metric=val)
        case _:
            return state


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


def load_run_state(event_log: EventLog, run_id: str) -> RunState:
    """What every agent calls at start-up: the run's state rebuilt from the log."""
    return replay(run_id, event_log.events(run_id))
