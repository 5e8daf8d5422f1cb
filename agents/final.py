"""The final stage of every run: the reporting rule, wave 2, and the result it hands over.

PROTOCOL.md: across Phase 1 and Phase 3 pick the architecture with the best wave-1
validation metric and report its wave-2 test metric (retrained from scratch on
train+valid, last weights, tested once). The Phase 3 population holds the seed, so when NAS
never beats it the best non-seed is reported instead, which makes a null NAS result
visible. Every finalist gets wave 2 (`[proxy] wave2 = "reported"`: only the winner and the
seed, the LLM-only result, so the two can still be compared), and the result lists them
all. Test metrics are never shown to an agent: only this stage reads them, after every
decision is made.

The role that owns the run's last phase performs this stage (`final_work`); everything it
needs is in the folded state.
"""

from __future__ import annotations

import msgspec

from agentnas.agents.evaluations import eval_id, evaluation
from agentnas.agents.runtime import Context, Work
from agentnas.bus import messages as m
from agentnas.bus import space as sp
from agentnas.store.state import RunState

STAGE = "final"


class Finalist(msgspec.Struct, frozen=True, kw_only=True):
    arch_id: str
    phase: int
    source: str
    recipe: dict
    val_metric: float  # wave 1
    is_seed: bool = False  # the Phase 1 seed, or its configuration in Phase 3
    params: int | None = None
    flops: int | None = None
    config_key: str = ""
    choices: list[tuple[str, str]] = []


def finalists(state: RunState) -> list[Finalist]:
    """Every architecture with a successful wave-1 result, best first."""
    found: list[Finalist] = []
    seed = state.phase1.seed
    for arch in state.phase1.archs.values():
        if arch.wave1_status == "ok" and arch.wave1_metric is not None:
            record = state.evals.records.get(arch.wave1_eval_id)
            found.append(Finalist(arch_id=arch.arch_id, phase=1, source=arch.source,
                                  recipe=arch.recipe if isinstance(arch.recipe, dict) else {},
                                  val_metric=arch.wave1_metric, is_seed=seed is not None and seed.arch_id == arch.arch_id,
                                  params=arch.params, flops=record.flops if record else None))
    accepted = state.space.accepted
    if accepted is not None:
        space = accepted.space
        seed_key = sp.canonical_key(space, sp.seed_configuration(space))
        for trial in state.search.trials.values():
            if trial.wave1_status == "ok" and trial.wave1_metric is not None:
                config = sp.Configuration(choices=tuple(trial.proposal.choices), lr_index=trial.proposal.lr_index)
                record = state.evals.records.get(trial.wave1_eval_id)
                found.append(Finalist(arch_id=trial.proposal.config_id, phase=3, source=sp.assemble(space, config),
                                      recipe=sp.config_recipe(space, config), val_metric=trial.wave1_metric,
                                      is_seed=trial.proposal.key == seed_key, params=trial.params,
                                      flops=record.flops if record else trial.flops, config_key=trial.proposal.key,
                                      choices=sp.describe_choices(space, config)))
    return sorted(found, key=lambda f: (f.val_metric, f.phase, f.arch_id))


def choose(candidates: list[Finalist]) -> tuple[Finalist | None, Finalist | None, str]:
    """(winner, seed, rule): the reporting rule over wave-1 validation metrics."""
    if not candidates:
        return None, None, "no architecture completed wave-1 training"
    seed = next((f for f in candidates if f.is_seed and f.phase == 1), None) or \
        next((f for f in candidates if f.is_seed), None)
    best = candidates[0]
    phase3 = any(f.phase == 3 for f in candidates)
    if not phase3:
        return best, None, "best wave-1 validation metric of Phase 1 (the seed)"
    if best.is_seed:
        others = [f for f in candidates if not f.is_seed]
        if others:
            return others[0], seed, ("NAS never beat the seed: the best non-seed architecture is reported "
                                     "(PROTOCOL.md), the seed beside it")
        return best, None, "only the seed completed wave-1 training"
    return best, seed, "best wave-1 validation metric across Phases 1 and 3"


def final_work(state: RunState, ready: bool) -> list[Work]:
    """What the final stage needs next; `ready` once the last search phase's wave 1 is done."""
    if not ready or state.ended:
        return []
    run = state.run_id
    if state.costs.current != STAGE:
        return [Work(key=f"{run}:final:start", run_id=run, action=start)]
    candidates = finalists(state)
    if not candidates:  # the reporting rule has nothing to choose from
        return [Work(key=f"{run}:final:fail", run_id=run, action=fail)]
    wanted = wave2_wanted(state, candidates)
    records = state.evals.records
    if any(eval_id(run, f.arch_id, "final_wave2") not in records for f in wanted):
        return [Work(key=f"{run}:final:wave2", run_id=run, action=request_wave2)]
    if all(records[eval_id(run, f.arch_id, "final_wave2")].done for f in wanted):
        return [Work(key=f"{run}:final:finish", run_id=run, action=finish)]
    return []


async def start(ctx: Context) -> None:
    await ctx.emit(m.PhaseStarted(phase=STAGE))


async def fail(ctx: Context) -> None:
    await ctx.emit(m.RunFailed(reason="no architecture completed wave-1 training; nothing to report"))


def wave2_wanted(state: RunState, candidates: list[Finalist]) -> list[Finalist]:
    """Who of `candidates` (finalists(state)) gets wave 2: every one, or only the two the
    reporting rule hands over."""
    if state.settings.proxy.wave2 == "finalists":
        return candidates
    winner, seed, _ = choose(candidates)
    return [f for f in (winner, seed) if f is not None]


async def request_wave2(ctx: Context) -> None:
    state = ctx.state
    for f in wave2_wanted(state, finalists(state)):
        if eval_id(state.run_id, f.arch_id, "final_wave2") not in state.evals.records:
            await ctx.emit(evaluation(state, arch_id=f.arch_id, request="final_wave2", source=f.source,
                                      recipe=f.recipe, phase=f.phase))


def outcome(state: RunState, f: Finalist) -> m.Outcome:
    record = state.evals.records.get(eval_id(state.run_id, f.arch_id, "final_wave2"))
    return m.Outcome(arch_id=f.arch_id, phase=f.phase, source=f.source, recipe=f.recipe, val_metric=f.val_metric,
                     test_metric=record.test_metric if record else None, params=f.params, flops=f.flops,
                     weights_path=record.weights_path if record else "", eval_id=record.eval_id if record else "",
                     config_key=f.config_key, choices=list(f.choices))


async def finish(ctx: Context) -> None:
    state = ctx.state
    candidates = finalists(state)
    winner, seed, rule = choose(candidates)
    result = m.RunResult(winner=outcome(state, winner), seed=outcome(state, seed) if seed else None,
                         metric=state.settings.task.metric, rule=rule,
                         phases=state.costs.table(until=ctx.now()),
                         finalists=[msgspec.structs.replace(outcome(state, f), source="") for f in candidates])
    summary = {"winner": winner.arch_id, "val_metric": winner.val_metric,
               "test_metric": result.winner.test_metric}
    await ctx.emit(m.RunFinished(summary=summary, result=result))
