"""Phase 1 state: a pure fold over a run's events, shared by the Phase 1 agents.

Every Phase 1 decision (the planner's next turn, an architecture to implement, a failed
validation to fix, a question to explore, full training, the seed) is derived from this
state, so an agent killed at any point and restarted carries on from the log. Budget and
patience are counted here from events, never from in-memory counters.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from agentnas.bus import messages as m

PHASE = 1


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    eval_id: str
    source: str
    recipe: dict[str, Any] | str
    status: str = ""  # "" while validating; else the validation's status
    reason: str = ""
    traceback: str = ""


class Arch(msgspec.Struct, frozen=True, kw_only=True):
    arch_id: str
    batch: int
    proposal: m.Proposal
    attempts: tuple[Attempt, ...] = ()
    implemented: bool = False
    rejected: str = ""  # reason the Code Executor gave up
    source: str = ""
    recipe: dict[str, Any] | str = {}
    params: int | None = None
    proxy_eval_id: str = ""
    proxy_status: str = ""
    proxy_reason: str = ""
    proxy_metric: float | None = None
    wave1_eval_id: str = ""
    wave1_status: str = ""
    wave1_metric: float | None = None

    @property
    def status(self) -> str:
        """The proxy result's status, "rejected" if it never validated, else "pending"."""
        return self.proxy_status or ("rejected" if self.rejected else "pending")

    @property
    def resolved(self) -> bool:
        """Done for budget purposes: proxy result in, or given up."""
        return bool(self.rejected or self.proxy_status)


class Exploration(msgspec.Struct, frozen=True, kw_only=True):
    question: str
    dialogue_start: int = 0  # the explorer's turns before this exploration belong to earlier ones
    steps: tuple[m.ExplorationStepped, ...] = ()
    report: str = ""


class Phase1State(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    requested: bool = False
    finished: bool = False
    task: str = ""
    config: dict[str, Any] = {}
    archs: dict[str, Arch] = {}
    evals: dict[str, tuple[str, str]] = {}  # eval_id -> (arch_id, request)
    batches: int = 0
    explorations: tuple[Exploration, ...] = ()
    summaries: tuple[str, ...] = ()
    planner_turns: int = 0  # decisions made: experiment, explore, stop, or a rejected answer
    planner_failures: int = 0  # consecutive unusable planner answers
    awaiting_planner: bool = False
    budget_used: int = 0
    since_improvement: int = 0
    best_proxy: float | None = None
    stopped: m.PhaseStopped | None = None
    seed: m.SeedSelected | None = None
    # (prompt, answer) turns per agent, from the recorded LLM calls: conversations are rebuilt
    # from these, identically in the original run, after a restart and in a re-execution
    dialogues: dict[str, tuple[tuple[str, str], ...]] = {}
    pending_calls: dict[str, tuple[str, str]] = {}  # call_id -> (agent, prompt)
    consumed: dict[str, int] = {}  # agent -> dialogue turns already acted upon by its events
    # the run's LLM spending so far, all agents together: token and cost caps apply to the run
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def unconsumed(self, agent: str) -> tuple[tuple[str, str], ...]:
        """Answered turns the agent has not acted upon yet (it died in between)."""
        return self.dialogues.get(agent, ())[self.consumed.get(agent, 0):]

    def history(self, agent: str, start: int = 0) -> tuple[tuple[str, str], ...]:
        return self.dialogues.get(agent, ())[start:self.consumed.get(agent, 0)]

    # --- derived views ---------------------------------------------------------------

    def setting(self, section: str, key: str, default: Any) -> Any:
        return self.config.get(section, {}).get(key, default)

    @property
    def budget(self) -> int:
        return int(self.setting("phase1", "budget", 160))

    @property
    def patience(self) -> int:
        return int(self.setting("phase1", "patience", 64))

    @property
    def exploring(self) -> Exploration | None:
        last = self.explorations[-1] if self.explorations else None
        return last if last is not None and not last.report else None

    def batch_archs(self, batch: int) -> list[Arch]:
        return [a for a in self.archs.values() if a.batch == batch]

    def leaderboard(self) -> list[Arch]:
        """Architectures with a successful proxy result, best first (metrics are errors)."""
        done = [a for a in self.archs.values() if a.proxy_status == "ok" and a.proxy_metric is not None]
        return sorted(done, key=lambda a: (a.proxy_metric, a.arch_id))


def _replace(state: Phase1State, **changes: Any) -> Phase1State:
    return msgspec.structs.replace(state, **changes)


def _with_arch(state: Phase1State, arch: Arch, **changes: Any) -> Phase1State:
    return _replace(state, archs={**state.archs, arch.arch_id: arch}, **changes)


def _on_completed(state: Phase1State, done: m.EvaluationCompleted) -> Phase1State:
    arch_id, request = state.evals.get(done.eval_id, ("", ""))
    arch = state.archs.get(arch_id)
    if arch is None:
        return state
    if request == "validate":
        attempts = tuple(
            msgspec.structs.replace(a, status=done.status, reason=done.reason, traceback=done.traceback)
            if a.eval_id == done.eval_id and not a.status else a
            for a in arch.attempts
        )
        return _with_arch(state, msgspec.structs.replace(arch, attempts=attempts, params=done.params or arch.params))
    if request == "proxy" and not arch.proxy_status:
        arch = msgspec.structs.replace(arch, proxy_status=done.status, proxy_reason=done.reason,
                                       proxy_metric=done.val_metric)
        changes: dict[str, Any] = {"budget_used": state.budget_used + 1}
        if done.status == "ok" and done.val_metric is not None and math.isfinite(done.val_metric):
            improved = state.best_proxy is None or done.val_metric < state.best_proxy
            changes["best_proxy"] = done.val_metric if improved else state.best_proxy
            changes["since_improvement"] = 0 if improved else state.since_improvement + 1
        state = _with_arch(state, arch, **changes)
        return _replace(state, awaiting_planner=_batch_resolved(state))
    if request == "final_wave1" and not arch.wave1_status:
        return _with_arch(state, msgspec.structs.replace(arch, wave1_status=done.status, wave1_metric=done.val_metric))
    return state


def _batch_resolved(state: Phase1State) -> bool:
    if state.stopped is not None or state.exploring is not None:
        return False
    batch = state.batch_archs(state.batches)
    return bool(batch) and all(a.resolved for a in batch)


_DECISIONS = (m.ExplorationRequested, m.ExperimentProposed, m.PhaseStopped, m.AgentOutputRejected,
              m.ExplorationStepped, m.ExplorationReported)


def fold(state: Phase1State, env: m.Envelope) -> Phase1State:
    if isinstance(env.payload, _DECISIONS) and env.sender.agent in state.dialogues:
        consumed = {**state.consumed, env.sender.agent: len(state.dialogues[env.sender.agent])}
        state = _replace(state, consumed=consumed)
    match env.payload:
        case m.RunRequested(task=task, phases=phases, config=config) if PHASE in phases:
            return _replace(state, requested=True, task=task, config=config, awaiting_planner=True)
        case m.RunFinished() | m.RunFailed():
            return _replace(state, finished=True, awaiting_planner=False)
        case m.LlmRequested(call_id=call_id, agent=agent, messages=messages):
            users = [msg for msg in messages if msg.get("role") == "user"]
            prompt = str(users[-1].get("content", "")) if users else ""
            return _replace(state, pending_calls={**state.pending_calls, call_id: (agent, prompt)})
        case m.LlmResponded(call_id=call_id, content=content, error=error) if call_id in state.pending_calls:
            payload = env.payload
            state = _replace(state, input_tokens=state.input_tokens + payload.input_tokens,
                             output_tokens=state.output_tokens + payload.output_tokens,
                             cost_usd=state.cost_usd + payload.cost_usd)
            agent, prompt = state.pending_calls[call_id]
            pending = {k: v for k, v in state.pending_calls.items() if k != call_id}
            if error:
                return _replace(state, pending_calls=pending)
            turns = (*state.dialogues.get(agent, ()), (prompt, content))
            return _replace(state, pending_calls=pending, dialogues={**state.dialogues, agent: turns})
        case m.ExplorationRequested(question=question):
            start = len(state.dialogues.get("explorer", ()))
            exploration = Exploration(question=question, dialogue_start=start)
            return _replace(state, explorations=(*state.explorations, exploration),
                            planner_turns=state.planner_turns + 1, planner_failures=0, awaiting_planner=False)
        case m.ExplorationStepped() if state.exploring is not None:
            current = state.exploring
            updated = msgspec.structs.replace(current, steps=(*current.steps, env.payload))
            return _replace(state, explorations=(*state.explorations[:-1], updated))
        case m.ExplorationReported(report=report) if state.exploring is not None:
            updated = msgspec.structs.replace(state.exploring, report=report)
            return _replace(state, explorations=(*state.explorations[:-1], updated), awaiting_planner=True)
        case m.ExperimentProposed(batch=batch, proposals=proposals):
            archs = dict(state.archs)
            for p in proposals:
                archs.setdefault(p.arch_id, Arch(arch_id=p.arch_id, batch=batch, proposal=p))
            return _replace(state, archs=archs, batches=max(state.batches, batch), planner_turns=state.planner_turns + 1,
                            planner_failures=0, awaiting_planner=False)
        case m.BatchSummarized(summary=summary):
            return _replace(state, summaries=(*state.summaries, summary))
        case m.AgentOutputRejected(agent="planner"):
            return _replace(state, planner_turns=state.planner_turns + 1, planner_failures=state.planner_failures + 1)
        case m.EvaluationRequested(eval_id=eval_id, arch_id=arch_id, request=request) if arch_id in state.archs:
            state = _replace(state, evals={**state.evals, eval_id: (arch_id, request)})
            arch = state.archs[arch_id]
            if request == "validate":
                attempt = Attempt(eval_id=eval_id, source=env.payload.model_source, recipe=env.payload.recipe)
                return _with_arch(state, msgspec.structs.replace(arch, attempts=(*arch.attempts, attempt)))
            if request == "proxy":
                return _with_arch(state, msgspec.structs.replace(arch, proxy_eval_id=eval_id))
            if request == "final_wave1":
                return _with_arch(state, msgspec.structs.replace(arch, wave1_eval_id=eval_id))
            return state
        case m.EvaluationCompleted():
            return _on_completed(state, env.payload)
        case m.ArchitectureImplemented(arch_id=arch_id, source=source, recipe=recipe) if arch_id in state.archs:
            arch = msgspec.structs.replace(state.archs[arch_id], implemented=True, source=source, recipe=recipe)
            return _with_arch(state, arch)
        case m.ArchitectureRejected(arch_id=arch_id, reason=reason) if arch_id in state.archs:
            arch = msgspec.structs.replace(state.archs[arch_id], rejected=reason)
            state = _with_arch(state, arch, budget_used=state.budget_used + 1)
            return _replace(state, awaiting_planner=_batch_resolved(state))
        case m.PhaseStopped(phase=phase) if phase == PHASE:
            return _replace(state, stopped=env.payload, awaiting_planner=False, planner_turns=state.planner_turns + 1)
        case m.SeedSelected():
            return _replace(state, seed=env.payload)
        case _:
            return state


def replay(run_id: str, events) -> Phase1State:
    state = Phase1State(run_id=run_id)
    for env in events:
        state = fold(state, env)
    return state
