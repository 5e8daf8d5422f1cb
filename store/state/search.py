"""The Phase 3 section: every proposed configuration, its proxy result in arrival order,
budget and patience, the GDAS search, the stop and the finalists' wave 1.

A configuration's evaluations use its config id as arch id (`<run>-<config_id>-proxy`,
`...-wave1`); a GDAS search is the evaluation with arch id `gdas`.
"""

from __future__ import annotations

import math

import msgspec

from agentnas.bus import messages as m
from agentnas.store.state.evals import EvalRecord

PHASE = 3
GDAS_ARCH = "gdas"


class Trial(msgspec.Struct, frozen=True, kw_only=True):
    proposal: m.ProposedConfiguration
    proxy_eval_id: str = ""
    status: str = ""  # the proxy's status once in
    val_metric: float | None = None  # finite, or None (failed)
    arrival: int | None = None  # 0-based order in which results arrived
    params: int | None = None
    flops: int | None = None
    wave1_eval_id: str = ""
    wave1_status: str = ""
    wave1_metric: float | None = None

    @property
    def finished(self) -> bool:
        return bool(self.status)


class Search(msgspec.Struct, frozen=True, kw_only=True):
    algorithm: str = ""
    trials: dict[str, Trial] = {}  # config id -> trial
    keys: frozenset[str] = frozenset()  # canonical keys proposed so far
    arrivals: int = 0
    budget_used: int = 0
    successes: int = 0
    since_improvement: int = 0
    best: float | None = None
    gdas: EvalRecord | None = None
    stopped: m.PhaseStopped | None = None

    def ordered(self) -> list[Trial]:
        """Trials in order of proposal."""
        return sorted(self.trials.values(), key=lambda t: t.proposal.index)

    def pending(self) -> list[Trial]:
        return [t for t in self.trials.values() if not t.finished]

    def leaderboard(self) -> list[Trial]:
        done = [t for t in self.trials.values() if t.status == "ok" and t.val_metric is not None]
        return sorted(done, key=lambda t: (t.val_metric, t.proposal.index))


def _trial_of(section: Search, arch_id: str) -> Trial | None:
    return section.trials.get(arch_id)


def fold_search(section: Search, env: m.Envelope, record: EvalRecord | None) -> Search:
    match env.payload:
        case m.ConfigurationsProposed(algorithm=algorithm, proposals=proposals):
            trials = dict(section.trials)
            keys = set(section.keys)
            for p in proposals:
                if p.config_id not in trials:
                    trials[p.config_id] = Trial(proposal=p)
                    keys.add(p.key)
            return msgspec.structs.replace(section, algorithm=algorithm, trials=trials, keys=frozenset(keys))
        case m.EvaluationRequested(eval_id=eval_id, arch_id=arch, request=request) if arch == GDAS_ARCH:
            return msgspec.structs.replace(section, gdas=record) if record is not None else section
        case m.EvaluationRequested(eval_id=eval_id, arch_id=arch, request=request) if arch in section.trials:
            trial = section.trials[arch]
            if request == "proxy" and not trial.proxy_eval_id:
                trial = msgspec.structs.replace(trial, proxy_eval_id=eval_id)
            elif request == "final_wave1" and not trial.wave1_eval_id:
                trial = msgspec.structs.replace(trial, wave1_eval_id=eval_id)
            else:
                return section
            return msgspec.structs.replace(section, trials={**section.trials, arch: trial})
        case m.EvaluationCompleted(eval_id=eval_id, arch_id=arch) as done if record is not None:
            if section.gdas is not None and section.gdas.eval_id == eval_id:
                return msgspec.structs.replace(section, gdas=record)
            trial = section.trials.get(arch)
            if trial is None:
                return section
            if eval_id == trial.proxy_eval_id and not trial.finished:
                return _arrived(section, trial, done, record)
            if eval_id == trial.wave1_eval_id and not trial.wave1_status:
                metric = done.val_metric if record.succeeded else None
                trial = msgspec.structs.replace(trial, wave1_status=done.status, wave1_metric=metric)
                return msgspec.structs.replace(section, trials={**section.trials, arch: trial})
        case m.PhaseStopped(phase=phase) if phase == PHASE and section.stopped is None:
            return msgspec.structs.replace(section, stopped=env.payload)
    return section


def _arrived(section: Search, trial: Trial, done: m.EvaluationCompleted, record: EvalRecord) -> Search:
    ok = record.succeeded
    trial = msgspec.structs.replace(trial, status=done.status, val_metric=done.val_metric if ok else None,
                                    arrival=section.arrivals, params=done.params, flops=done.flops)
    changes: dict = {"trials": {**section.trials, trial.proposal.config_id: trial},
                     "arrivals": section.arrivals + 1, "budget_used": section.budget_used + 1}
    if ok and math.isfinite(done.val_metric):  # failures use budget, never patience
        improved = section.best is None or done.val_metric < section.best
        changes.update(successes=section.successes + 1,
                       best=done.val_metric if improved else section.best,
                       since_improvement=0 if improved else section.since_improvement + 1)
    return msgspec.structs.replace(section, **changes)
