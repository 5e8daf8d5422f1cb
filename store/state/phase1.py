"""The Phase 1 section of a run's state (Planner, Data Explorer, Code Executor).

Every Phase 1 decision (the planner's next turn, an architecture to implement, a failed
validation to fix, a question to explore, full training, the seed) is derived from this
section, so an agent killed at any point and restarted carries on from the log. Budget
and patience are counted here from events, never from in-memory counters.
"""

from __future__ import annotations

from typing import Any

import msgspec

from agentnas.bus import messages as m
from agentnas.store.state.evals import EvalRecord

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


class Phase1(msgspec.Struct, frozen=True, kw_only=True):
    archs: dict[str, Arch] = {}
    evals: dict[str, tuple[str, str]] = {}  # eval_id -> (arch_id, request)
    batches: int = 0
    explorations: tuple[Exploration, ...] = ()
    summaries: tuple[str, ...] = ()
    planner_turns: int = 0  # decisions made: experiment, explore, stop, or a rejected answer
    planner_failures: int = 0  # consecutive unusable planner answers
    awaiting_planner: bool = False
    budget_used: int = 0
    successes: int = 0
    since_improvement: int = 0
    best_proxy: float | None = None
    stopped: m.PhaseStopped | None = None
    seed: m.SeedSelected | None = None

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


def _with_arch(section: Phase1, arch: Arch, **changes: Any) -> Phase1:
    return msgspec.structs.replace(section, archs={**section.archs, arch.arch_id: arch}, **changes)


def _batch_resolved(section: Phase1) -> bool:
    if section.stopped is not None or section.exploring is not None:
        return False
    batch = section.batch_archs(section.batches)
    return bool(batch) and all(a.resolved for a in batch)


def _on_completed(section: Phase1, done: m.EvaluationCompleted, record: EvalRecord) -> Phase1:
    arch_id, request = section.evals.get(done.eval_id, ("", ""))
    arch = section.archs.get(arch_id)
    if arch is None:
        return section
    if request == "validate":
        attempts = tuple(
            msgspec.structs.replace(a, status=done.status, reason=done.reason, traceback=done.traceback)
            if a.eval_id == done.eval_id and not a.status else a
            for a in arch.attempts
        )
        return _with_arch(section, msgspec.structs.replace(arch, attempts=attempts, params=done.params or arch.params))
    if request == "proxy" and not arch.proxy_status:
        arch = msgspec.structs.replace(arch, proxy_status=done.status, proxy_reason=done.reason,
                                       proxy_metric=done.val_metric if record.succeeded else None)
        changes: dict[str, Any] = {"budget_used": section.budget_used + 1}
        if record.succeeded:  # failures use budget but neither reset nor advance patience
            improved = section.best_proxy is None or done.val_metric < section.best_proxy
            changes["successes"] = section.successes + 1
            changes["best_proxy"] = done.val_metric if improved else section.best_proxy
            changes["since_improvement"] = 0 if improved else section.since_improvement + 1
        section = _with_arch(section, arch, **changes)
        return msgspec.structs.replace(section, awaiting_planner=_batch_resolved(section))
    if request == "final_wave1" and not arch.wave1_status:
        metric = done.val_metric if record.succeeded else None
        return _with_arch(section, msgspec.structs.replace(arch, wave1_status=done.status, wave1_metric=metric))
    return section


def fold_phase1(section: Phase1, env: m.Envelope, *, explorer_turns: int, record: EvalRecord | None) -> Phase1:
    """One event into the Phase 1 section. `explorer_turns`: the explorer's dialogue length so far;
    `record`: the evaluation's record after this event (for completions)."""
    match env.payload:
        case m.RunRequested():
            return msgspec.structs.replace(section, awaiting_planner=True)
        case m.RunFinished() | m.RunFailed():
            return msgspec.structs.replace(section, awaiting_planner=False)
        case m.ExplorationRequested(question=question):
            exploration = Exploration(question=question, dialogue_start=explorer_turns)
            return msgspec.structs.replace(section, explorations=(*section.explorations, exploration),
                                           planner_turns=section.planner_turns + 1, planner_failures=0,
                                           awaiting_planner=False)
        case m.ExplorationStepped() if section.exploring is not None:
            current = section.exploring
            updated = msgspec.structs.replace(current, steps=(*current.steps, env.payload))
            return msgspec.structs.replace(section, explorations=(*section.explorations[:-1], updated))
        case m.ExplorationReported(report=report) if section.exploring is not None:
            updated = msgspec.structs.replace(section.exploring, report=report)
            return msgspec.structs.replace(section, explorations=(*section.explorations[:-1], updated),
                                           awaiting_planner=True)
        case m.ExperimentProposed(batch=batch, proposals=proposals):
            archs = dict(section.archs)
            for p in proposals:
                archs.setdefault(p.arch_id, Arch(arch_id=p.arch_id, batch=batch, proposal=p))
            return msgspec.structs.replace(section, archs=archs, batches=max(section.batches, batch),
                                           planner_turns=section.planner_turns + 1, planner_failures=0,
                                           awaiting_planner=False)
        case m.BatchSummarized(summary=summary):
            return msgspec.structs.replace(section, summaries=(*section.summaries, summary))
        case m.AgentOutputRejected(agent="planner"):
            return msgspec.structs.replace(section, planner_turns=section.planner_turns + 1,
                                           planner_failures=section.planner_failures + 1)
        case m.EvaluationRequested(eval_id=eval_id, arch_id=arch_id, request=request) if arch_id in section.archs:
            section = msgspec.structs.replace(section, evals={**section.evals, eval_id: (arch_id, request)})
            arch = section.archs[arch_id]
            if request == "validate":
                attempt = Attempt(eval_id=eval_id, source=env.payload.model_source, recipe=env.payload.recipe)
                return _with_arch(section, msgspec.structs.replace(arch, attempts=(*arch.attempts, attempt)))
            if request == "proxy":
                return _with_arch(section, msgspec.structs.replace(arch, proxy_eval_id=eval_id))
            if request == "final_wave1":
                return _with_arch(section, msgspec.structs.replace(arch, wave1_eval_id=eval_id))
            return section
        case m.EvaluationCompleted() if record is not None:
            return _on_completed(section, env.payload, record)
        case m.ArchitectureImplemented(arch_id=arch_id, source=source, recipe=recipe) if arch_id in section.archs:
            arch = msgspec.structs.replace(section.archs[arch_id], implemented=True, source=source, recipe=recipe)
            return _with_arch(section, arch)
        case m.ArchitectureRejected(arch_id=arch_id, reason=reason) if arch_id in section.archs:
            if section.archs[arch_id].rejected:
                return section
            arch = msgspec.structs.replace(section.archs[arch_id], rejected=reason)
            section = _with_arch(section, arch, budget_used=section.budget_used + 1)
            return msgspec.structs.replace(section, awaiting_planner=_batch_resolved(section))
        case m.PhaseStopped(phase=phase) if phase == PHASE and section.stopped is None:
            return msgspec.structs.replace(section, stopped=env.payload, awaiting_planner=False,
                                           planner_turns=section.planner_turns + 1)
        case m.SeedSelected() if section.seed is None:
            return msgspec.structs.replace(section, seed=env.payload)
    return section
