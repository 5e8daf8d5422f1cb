"""The Planner role: EXPLORE / EXPERIMENT / STOP turns, then wave-1 training and the seed.

`PlannerRole` holds everything every planner does (budget and patience stops from the
log, wave-1 full training of the top 8 after STOP, seed selection, finishing a Phase-1-only
run); subclasses decide the turns: `LlmPlanner` asks the LLM, `RulePlannerRole` uses the
no-LLM baseline. Another implementation is named in the config as `module:Class`.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from agentnas.agents import prompts as p
from agentnas.agents.conversation import Unusable, ask_parsed
from agentnas.agents.protocol import Experiment, Explore, Stop, format_arch_id, parse_planner
from agentnas.agents.rule_planner import RulePlanner, TaskInfo
from agentnas.agents.evaluations import evaluation
from agentnas.agents.final import final_work
from agentnas.agents.runtime import Context, Work
from agentnas.bus import messages as m
from agentnas.bus.config import Config
from agentnas.store.state import Arch, RunState

log = structlog.get_logger("agentnas.planner")

MAX_PLANNER_FAILURES = 3
DEFAULT_PARALLEL = 4


def n_parallel(state: RunState) -> int:
    settings = state.settings.phase1
    wanted = settings.n_parallel or DEFAULT_PARALLEL
    return max(1, min(wanted, settings.budget - state.phase1.budget_used))


class PlannerRole:
    name = "planner"

    def __init__(self, config: Config, home: Path) -> None:
        self.config, self.home = config, home

    # --- what is due ---------------------------------------------------------------------

    def due(self, state: RunState) -> list[Work]:
        phase1 = state.phase1
        if not state.settings.runs_phase(1):
            return []
        if phase1.seed is not None:
            # a Phase-1-only run: the planner owns its final stage (wave 2 and the result)
            return final_work(state, ready=max(state.settings.phases) == 1)
        if phase1.stopped is not None:
            return self._full_training_work(state)
        if not phase1.awaiting_planner:
            return []
        reason = self.stop_reason(state)
        if reason:
            return [Work(key=f"{state.run_id}:stop", run_id=state.run_id,
                         action=lambda ctx, reason=reason: self.stop(ctx, reason, []))]
        return [Work(key=f"{state.run_id}:turn:{phase1.planner_turns}", run_id=state.run_id, action=self.turn)]

    def stop_reason(self, state: RunState) -> str:
        phase1, settings = state.phase1, state.settings.phase1
        if phase1.budget_used >= settings.budget:
            return f"budget: {phase1.budget_used} of {settings.budget} evaluations used"
        if phase1.since_improvement >= settings.patience:
            return f"patience: {phase1.since_improvement} successful evaluations without improvement"
        if phase1.planner_failures >= MAX_PLANNER_FAILURES:
            return f"planner: {phase1.planner_failures} unusable answers in a row"
        return ""

    def _full_training_work(self, state: RunState) -> list[Work]:
        chosen = self.finalists(state)
        if any(not a.wave1_eval_id for a in chosen):
            return [Work(key=f"{state.run_id}:wave1", run_id=state.run_id, action=self.request_wave1)]
        if chosen and all(a.wave1_status for a in chosen):
            return [Work(key=f"{state.run_id}:seed", run_id=state.run_id, action=self.select_seed)]
        if not chosen:
            return [Work(key=f"{state.run_id}:fail", run_id=state.run_id, action=self.fail_no_candidates)]
        return []

    # --- decisions shared by every planner ---------------------------------------------------

    def finalists(self, state: RunState, named: list[str] | None = None) -> list[Arch]:
        """The top-k (by proxy metric) of the architectures STOP named, or of all of them."""
        phase1 = state.phase1
        board = phase1.leaderboard()
        if named is None:
            named = phase1.stopped.arch_ids if phase1.stopped else []
        if named:
            wanted = set(named)
            board = [a for a in board if a.arch_id in wanted] or phase1.leaderboard()
        return board[:state.settings.phase1.top_k_full]

    async def stop(self, ctx: Context, reason: str, arch_ids: list[str]) -> None:
        """The phase's end, naming what goes to full training (the finalists, as many as there are)."""
        finalists = [a.arch_id for a in self.finalists(ctx.state, arch_ids)]
        log.info("phase 1 stopping", reason=reason, finalists=finalists)
        await ctx.emit(m.PhaseStopped(phase=1, reason=reason, arch_ids=finalists))

    async def request_wave1(self, ctx: Context) -> None:
        state = ctx.state
        for arch in self.finalists(state):
            if arch.wave1_eval_id:
                continue
            await ctx.emit(evaluation(state, arch_id=arch.arch_id, request="final_wave1", source=arch.source,
                                      recipe=arch.recipe, phase=1))

    async def select_seed(self, ctx: Context) -> None:
        done = [a for a in self.finalists(ctx.state) if a.wave1_status == "ok" and a.wave1_metric is not None]
        if not done:
            await ctx.emit(m.RunFailed(reason="phase 1: no architecture completed full training"))
            return
        best = min(done, key=lambda a: (a.wave1_metric, a.arch_id))
        await ctx.emit(m.SeedSelected(arch_id=best.arch_id, source=best.source, recipe=best.recipe if isinstance(best.recipe, dict) else {},
                                      val_metric=best.wave1_metric, eval_id=best.wave1_eval_id, params=best.params))

    async def fail_no_candidates(self, ctx: Context) -> None:
        await ctx.emit(m.RunFailed(reason="phase 1 stopped without a successful proxy evaluation"))

    async def turn(self, ctx: Context) -> None:
        raise NotImplementedError

    # --- shared helpers for turns ----------------------------------------------------------------

    @staticmethod
    def next_arch_number(state: RunState) -> int:
        numbers = [int(a.split("_")[1]) for a in state.phase1.archs if a.startswith("arch_") and a[5:].isdigit()]
        return max(numbers, default=0) + 1

    async def emit_decision(self, ctx: Context, decision: Explore | Experiment | Stop, causation: str | None) -> None:
        state = ctx.state
        if decision.summary:
            await ctx.emit(m.BatchSummarized(batch=state.phase1.batches, summary=decision.summary), causation)
        match decision:
            case Explore(question=question):
                await ctx.emit(m.ExplorationRequested(question=question), causation)
            case Experiment(proposals=proposals):
                await ctx.emit(m.ExperimentProposed(batch=state.phase1.batches + 1, proposals=proposals), causation)
            case Stop(arch_ids=arch_ids):
                await self.stop(ctx, "planner chose STOP", arch_ids)


class RulePlannerRole(PlannerRole):
    """The no-LLM baseline: a fixed grid of families and recipes, refined around the best."""

    async def turn(self, ctx: Context) -> None:
        state = ctx.state
        task = state.settings.task
        info = TaskInfo(input_shape=tuple(task.input_shape), output_shape=tuple(task.output_shape), loss=task.loss)
        planner = RulePlanner(info, n_parallel(state), state.settings.phase1.budget, seed=state.settings.seed,
                              epochs=state.settings.phase1.rule_epochs)
        results = [(a.arch_id, a.proxy_metric, a.status) for a in state.phase1.archs.values()]
        await self.emit_decision(ctx, planner.decide(results), None)


class LlmPlanner(PlannerRole):
    """The LLM planner: one multi-turn conversation per run, rebuilt from the log each turn."""

    def turn_prompt(self, state: RunState) -> p.Rendered:
        task, settings, phase1 = state.settings.task, state.settings, state.phase1
        last = phase1.batch_archs(phase1.batches)
        reports = [e.report for e in phase1.explorations if e.report]
        return p.render(
            "planner_turn",
            task=p.task_block(task, task.blind),
            published_best=p.published_best_text(task.published_best, blind=task.blind),
            budget_used=phase1.budget_used, budget_total=settings.phase1.budget,
            patience=phase1.since_improvement, patience_limit=settings.phase1.patience,
            n_parallel=n_parallel(state), next_arch_id=format_arch_id(self.next_arch_number(state)),
            memory_cap_mb=f"{settings.proxy.memory_cap_mb:g}",
            proxy_fraction=f"{settings.proxy.fraction:g}",
            time_cap_min=f"{settings.proxy.time_cap_s / 60:g}",
            whitelist=p.recipe_whitelist(),
            explorer_report="\n\n".join(reports) or "no exploration yet",
            leaderboard=p.results_table([_row(a) for a in phase1.leaderboard()[:10]]),
            last_results=p.results_table([_row(a) for a in last], empty="no batch has run yet"),
        )

    async def turn(self, ctx: Context) -> None:
        state = ctx.state
        client = ctx.llm(self.name)
        system = p.render("planner_system")
        known = list(state.phase1.archs)
        parse = lambda text: parse_planner(text, n_parallel=n_parallel(state), known_arch_ids=known)  # noqa: E731
        try:
            decision, _, _ = await ask_parsed(client, self.name, system, state.llm.history(self.name),
                                              self.turn_prompt(state), parse, state.llm.unconsumed(self.name))
        except Unusable as exc:
            await ctx.emit(m.AgentOutputRejected(agent=self.name, reason=exc.reason, attempts=exc.attempts),
                           ctx.last_response_id)
            return
        await self.emit_decision(ctx, decision, ctx.last_response_id)


def _row(arch: Arch) -> p.ResultRow:
    return p.ResultRow(arch_id=arch.arch_id, status=arch.status, val_metric=arch.proxy_metric, params=arch.params,
                       reason=arch.rejected or arch.proxy_reason)
