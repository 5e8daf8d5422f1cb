"""Phase 3, the Evolver: a conventional NAS algorithm over the accepted slotted space.

- `re`, regularized evolution (PROTOCOL.md; agents/search.py): population 16 = the seed
  configuration + 5 single + 5 double mutations + 5 uniform; tournament 5; a child is a
  single- or double-slot mutation (50/50); aging; at most 10 generations.
- `rs`, random search: 16 uniform configurations a wave (the seed configuration first).
- `gdas`: one Gumbel-softmax supernet search in the sandbox (the trainer's `gdas` request),
  then its argmax configuration is evaluated like any other (beside the seed configuration).

Every proposal is a `configurations.proposed` event, so a restart replays it instead of
drawing again; a configuration's canonical key is never evaluated twice. Proposals keep
every trainer slot busy: a child is bred as soon as a slot frees, from the population as
it stands (search.py explains why this keeps aging semantics). The phase stops at the
budget (failures included), at its patience (successful evaluations without improvement),
when the generations are done or the space is used up; then the top 8 get wave 1, and, when
Phase 3 ends the run, the final stage picks and reports the winner.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from agentnas.agents import final, search
from agentnas.agents.evaluations import evaluation
from agentnas.agents.planner import DEFAULT_PARALLEL
from agentnas.agents.runtime import Context, Work
from agentnas.bus import messages as m
from agentnas.bus import space as sp
from agentnas.bus.config import Config
from agentnas.store.state import RunState
from agentnas.store.state.search import GDAS_ARCH, PHASE, Trial

log = structlog.get_logger("agentnas.evolver")

STAGE = "3"


def accepted_space(state: RunState) -> sp.SlottedSpace | None:
    accepted = state.space.accepted
    return accepted.space if accepted is not None else None


def slots(state: RunState) -> int:
    return state.settings.phase1.n_parallel or DEFAULT_PARALLEL


def history(state: RunState) -> list[search.Trial]:
    """Every proposal once, finished ones in the order their results arrived (search.py's input)."""
    trials = state.search.ordered()
    finished = sorted((t for t in trials if t.finished), key=lambda t: t.arrival)
    pending = [t for t in trials if not t.finished]
    return [search.Trial(index=t.proposal.index, key=t.proposal.key, config=configuration(t.proposal),
                         fitness=t.val_metric, finished=t.finished) for t in [*finished, *pending]]


def configuration(proposal: m.ProposedConfiguration) -> sp.Configuration:
    return sp.Configuration(choices=tuple(proposal.choices), lr_index=proposal.lr_index)


def as_event(p: search.Proposal) -> m.ProposedConfiguration:
    return m.ProposedConfiguration(index=p.index, config_id=p.config_id, key=p.key, choices=tuple(p.config.choices),
                                   lr_index=p.config.lr_index, generation=p.generation, origin=p.origin,
                                   parent=p.parent)


def proposals(state: RunState, space: sp.SlottedSpace, free: int) -> list[search.Proposal]:
    settings = state.settings
    evolution = settings.evolution
    room = min(free, evolution.budget - len(state.search.trials))
    if room <= 0:
        return []
    propose = search.random_proposals if evolution.algorithm == "rs" else search.next_proposals
    return propose(space, evolution, settings.seed, history(state), room)


def stop_reason(state: RunState, space: sp.SlottedSpace) -> str:
    evolution, found = state.settings.evolution, state.search
    if found.budget_used >= evolution.budget:
        return f"budget: {found.budget_used} of {evolution.budget} evaluations used"
    finished = [t for t in history(state) if t.finished]
    if search.patience_used(finished) >= evolution.patience:
        return f"patience: {search.patience_used(finished)} successful evaluations without improvement"
    if evolution.algorithm == "gdas":
        gdas = found.gdas
        if gdas is not None and gdas.done and gdas.status != "ok":
            return f"GDAS search failed ({gdas.status}: {gdas.reason})"
        if gdas is not None and gdas.done and not _gdas_pending(state, space):
            return "GDAS: the argmax configuration is evaluated"
        return ""
    if found.trials and not proposals(state, space, 1) and len(found.trials) < evolution.budget:
        limit = evolution.population * evolution.generations
        if len(found.trials) >= limit:
            return f"generations: {evolution.generations} generations of {evolution.population} done"
        return f"the space is used up: all {sp.space_size(space)} configurations proposed"
    return ""


def finalists(state: RunState) -> list[Trial]:
    return state.search.leaderboard()[:state.settings.evolution.top_k_full]


def _gdas_config(state: RunState, space: sp.SlottedSpace) -> sp.Configuration | None:
    gdas = state.search.gdas
    if gdas is None or gdas.status != "ok":
        return None
    choices = gdas.choices
    if not choices or len(choices) != len(space.slots):
        return None
    return sp.Configuration(choices=tuple(choices), lr_index=sp.seed_configuration(space).lr_index)


def _gdas_pending(state: RunState, space: sp.SlottedSpace) -> bool:
    config = _gdas_config(state, space)
    if config is None:
        return False
    if sp.canonical_key(space, config) not in state.search.keys:
        return True
    return bool(state.search.pending())


class EvolverRole:
    name = "evolver"

    def __init__(self, config: Config, home: Path) -> None:
        self.config, self.home = config, home

    def due(self, state: RunState) -> list[Work]:
        settings = state.settings
        space = accepted_space(state)
        if not settings.runs_phase(3) or space is None:
            return []
        run, found = state.run_id, state.search
        if found.stopped is not None:
            return self._after_stop(state)
        if state.costs.current != STAGE:
            return [Work(key=f"{run}:search:start", run_id=run, action=start_stage)]
        unrequested = [t for t in found.ordered() if not t.proxy_eval_id]
        if unrequested:  # the evolver died between proposing and requesting
            return [Work(key=f"{run}:search:proxy:{unrequested[0].proposal.index}", run_id=run,
                         action=self.request_proxies)]
        reason = stop_reason(state, space)
        if reason:
            if found.pending():
                return []
            return [Work(key=f"{run}:search:stop", run_id=run, action=lambda ctx, r=reason: self.stop(ctx, r))]
        if settings.evolution.algorithm == "gdas":
            return self._gdas_due(state, space)
        free = slots(state) - len(found.pending())
        if free > 0 and proposals(state, space, free):
            return [Work(key=f"{run}:search:propose:{len(found.trials)}", run_id=run, action=self.propose)]
        return []

    def _gdas_due(self, state: RunState, space: sp.SlottedSpace) -> list[Work]:
        run, found = state.run_id, state.search
        if not found.trials:  # the seed configuration first, beside the search
            return [Work(key=f"{run}:search:propose:0", run_id=run, action=self.propose)]
        if found.gdas is None:
            return [Work(key=f"{run}:search:gdas", run_id=run, action=self.request_gdas)]
        config = _gdas_config(state, space)
        if config is not None and sp.canonical_key(space, config) not in found.keys:
            return [Work(key=f"{run}:search:argmax", run_id=run, action=self.propose_argmax)]
        return []

    def _after_stop(self, state: RunState) -> list[Work]:
        run = state.run_id
        chosen = finalists(state)
        if any(not t.wave1_eval_id for t in chosen):
            return [Work(key=f"{run}:search:wave1", run_id=run, action=self.request_wave1)]
        if all(t.wave1_status for t in chosen):
            return final.final_work(state, ready=max(state.settings.phases) == PHASE)
        return []

    # --- actions ----------------------------------------------------------------------------

    async def propose(self, ctx: Context) -> None:
        state = ctx.state
        space = accepted_space(state)
        if state.settings.evolution.algorithm == "gdas":
            seed = sp.seed_configuration(space)
            found = [search.Proposal(index=0, config=seed, key=sp.canonical_key(space, seed),
                                     config_id=sp.config_id(space, seed), generation=0, origin="seed")]
        else:
            found = proposals(state, space, slots(state) - len(state.search.pending()))
        await self._propose(ctx, space, [as_event(p) for p in found])

    async def propose_argmax(self, ctx: Context) -> None:
        state = ctx.state
        space = accepted_space(state)
        config = _gdas_config(state, space)
        index = len(state.search.trials)
        event = m.ProposedConfiguration(index=index, config_id=sp.config_id(space, config),
                                        key=sp.canonical_key(space, config), choices=config.choices,
                                        lr_index=config.lr_index, generation=1, origin="gdas")
        await self._propose(ctx, space, [event])

    async def _propose(self, ctx: Context, space: sp.SlottedSpace, found: list[m.ProposedConfiguration]) -> None:
        if not found:
            return
        state = ctx.state
        proposed = await ctx.emit(m.ConfigurationsProposed(algorithm=state.settings.evolution.algorithm,
                                                           proposals=found))
        for p in found:
            await ctx.emit(self._proxy(state, space, p), proposed.id)

    async def request_proxies(self, ctx: Context) -> None:
        state = ctx.state
        space = accepted_space(state)
        for trial in state.search.ordered():
            if not trial.proxy_eval_id:
                await ctx.emit(self._proxy(state, space, trial.proposal))

    @staticmethod
    def _proxy(state: RunState, space: sp.SlottedSpace, p: m.ProposedConfiguration) -> m.EvaluationRequested:
        config = configuration(p)
        return evaluation(state, arch_id=p.config_id, request="proxy", source=sp.assemble(space, config),
                          recipe=sp.config_recipe(space, config), phase=PHASE)

    async def request_gdas(self, ctx: Context) -> None:
        state = ctx.state
        space = accepted_space(state)
        evolution = state.settings.evolution
        options = m.GdasOptions(epochs=evolution.gdas_epochs, tau_max=evolution.gdas_tau_max,
                                tau_min=evolution.gdas_tau_min, arch_lr=evolution.gdas_arch_lr,
                                arch_betas=evolution.gdas_arch_betas,
                                arch_weight_decay=evolution.gdas_arch_weight_decay)
        seed = sp.seed_configuration(space)
        await ctx.emit(evaluation(state, arch_id=GDAS_ARCH, request="gdas", source=sp.assemble(space, seed),
                                  recipe=space.seed_recipe, phase=PHASE, space=space, gdas=options))

    async def stop(self, ctx: Context, reason: str) -> None:
        chosen = finalists(ctx.state)
        log.info("phase 3 stopping", reason=reason)
        await ctx.emit(m.PhaseStopped(phase=PHASE, reason=reason, arch_ids=[t.proposal.config_id for t in chosen]))

    async def request_wave1(self, ctx: Context) -> None:
        state = ctx.state
        space = accepted_space(state)
        for trial in finalists(state):
            if not trial.wave1_eval_id:
                config = configuration(trial.proposal)
                await ctx.emit(evaluation(state, arch_id=trial.proposal.config_id, request="final_wave1",
                                          source=sp.assemble(space, config), recipe=sp.config_recipe(space, config),
                                          phase=PHASE))


async def start_stage(ctx: Context) -> None:
    await ctx.emit(m.PhaseStarted(phase=STAGE))
