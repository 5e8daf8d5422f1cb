"""The Planner role: EXPLORE / EXPERIMENT / STOP turns, then wave-1 training and the seed.

`PlannerRole` holds everything every planner does (budget and patience stops from the
log, wave-1 full training of the top 8 after STOP, seed selection, finishing a Phase-1-only
run); subclasses decide the turns: `LlmPlanner` asks the LLM, `RulePlannerRole` uses the
no-LLM baseline. Another implementation is named in the config as `module:Class`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from agentnas.agents import prompts as p
from agentnas.agents.conversation import Unusable, ask_parsed
from agentnas.agents.phase1 import Arch, Phase1State
from agentnas.agents.protocol import Experiment, Explore, Stop, format_arch_id, parse_planner
from agentnas.agents.rule_planner import RulePlanner, TaskInfo
from agentnas.agents.runtime import Context, Work
from agentnas.bus import messages as m
from agentnas.bus.config import Config

log = structlog.get_logger("agentnas.planner")

MAX_PLANNER_FAILURES = 3
DEFAULT_PARALLEL = 4


def task_info(state: Phase1State) -> dict[str, Any]:
    return state.config.get("task_spec", {})


def caps(state: Phase1State, full: bool) -> m.Caps:
    proxy = state.config.get("proxy", {})
    time_s = proxy.get("full_time_cap_s", 86400.0) if full else proxy.get("time_cap_s", 3600.0)
    return m.Caps(time_s=time_s, memory_mb=proxy.get("memory_cap_mb", 11264.0))


def n_parallel(state: Phase1State) -> int:
    wanted = int(state.setting("phase1", "n_parallel", 0)) or DEFAULT_PARALLEL
    return max(1, min(wanted, state.budget - state.budget_used))


class PlannerRole:
    name = "planner"

    def __init__(self, config: Config, home: Path) -> None:
        self.config, self.home = config, home

    # --- what is due ---------------------------------------------------------------------

    def due(self, state: Phase1State) -> list[Work]:
        if state.seed is not None:
            if tuple(state.config.get("phases", (1,))) == (1,):
                return [Work(key=f"{state.run_id}:finish", run_id=state.run_id, action=self.finish)]
            return []
        if state.stopped is not None:
            return self._full_training_work(state)
        if not state.awaiting_planner:
            return []
        reason = self.stop_reason(state)
        if reason:
            return [Work(key=f"{state.run_id}:stop", run_id=state.run_id,
                         action=lambda ctx, reason=reason: self.stop(ctx, reason, []))]
        return [Work(key=f"{state.run_id}:turn:{state.planner_turns}", run_id=state.run_id, action=self.turn)]

    def stop_reason(self, state: Phase1State) -> str:
        if state.budget_used >= state.budget:
            return f"budget: {state.budget_used} of {state.budget} evaluations used"
        if state.since_improvement >= state.patience:
            return f"patience: {state.since_improvement} successful evaluations without improvement"
        if state.planner_failures >= MAX_PLANNER_FAILURES:
            return f"planner: {state.planner_failures} unusable answers in a row"
        return ""

    def _full_training_work(self, state: Phase1State) -> list[Work]:
        chosen = self.finalists(state)
        if any(not a.wave1_eval_id for a in chosen):
            return [Work(key=f"{state.run_id}:wave1", run_id=state.run_id, action=self.request_wave1)]
        if chosen and all(a.wave1_status for a in chosen):
            return [Work(key=f"{state.run_id}:seed", run_id=state.run_id, action=self.select_seed)]
        if not chosen:
            return [Work(key=f"{state.run_id}:fail", run_id=state.run_id, action=self.fail_no_candidates)]
        return []

    # --- decisions shared by every planner ---------------------------------------------------

    def finalists(self, state: Phase1State) -> list[Arch]:
        """The top-k (by proxy metric) of the architectures STOP named, or of all of them."""
        top_k = int(state.setting("phase1", "top_k_full", 8))
        board = state.leaderboard()
        named = set(state.stopped.arch_ids) if state.stopped and state.stopped.arch_ids else None
        if named:
            board = [a for a in board if a.arch_id in named] or state.leaderboard()
        return board[:top_k]

    async def stop(self, ctx: Context, reason: str, arch_ids: list[str]) -> None:
        log.info("phase 1 stopping", reason=reason)
        await ctx.emit(m.PhaseStopped(phase=1, reason=reason, arch_ids=arch_ids))

    async def request_wave1(self, ctx: Context) -> None:
        state = ctx.state
        for arch in self.finalists(state):
            if arch.wave1_eval_id:
                continue
            await ctx.emit(m.EvaluationRequested(
                eval_id=f"{state.run_id}-{arch.arch_id}-wave1", request="final_wave1", task=state.task,
                model_source=arch.source, recipe=arch.recipe, caps=caps(state, full=True),
                seed=int(state.config.get("seed", 42)), arch_id=arch.arch_id, phase=1))

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

    async def finish(self, ctx: Context) -> None:
        state = ctx.state
        seed = state.seed
        await ctx.emit(m.RunFinished(summary={"seed": seed.arch_id, "seed_val_metric": seed.val_metric,
                                              "budget_used": state.budget_used, "stopped": state.stopped.reason}))

    async def turn(self, ctx: Context) -> None:
        raise NotImplementedError

    # --- shared helpers for turns ----------------------------------------------------------------

    @staticmethod
    def next_arch_number(state: Phase1State) -> int:
        numbers = [int(a.split("_")[1]) for a in state.archs if a.startswith("arch_") and a[5:].isdigit()]
        return max(numbers, default=0) + 1

    async def emit_decision(self, ctx: Context, decision: Explore | Experiment | Stop, causation: str | None) -> None:
        state = ctx.state
        if decision.summary:
            await ctx.emit(m.BatchSummarized(batch=state.batches, summary=decision.summary), causation)
        match decision:
            case Explore(question=question):
                await ctx.emit(m.ExplorationRequested(question=question), causation)
            case Experiment(proposals=proposals):
                await ctx.emit(m.ExperimentProposed(batch=state.batches + 1, proposals=proposals), causation)
            case Stop(arch_ids=arch_ids):
                await self.stop(ctx, "planner chose STOP", arch_ids)


class RulePlannerRole(PlannerRole):
    """The no-LLM baseline: a fixed grid of families and recipes, refined around the best."""

    async def turn(self, ctx: Context) -> None:
        state = ctx.state
        spec = task_info(state)
        info = TaskInfo(input_shape=tuple(spec["input_shape"]), output_shape=tuple(spec["output_shape"]),
                        loss=spec["loss"])
        planner = RulePlanner(info, n_parallel(state), state.budget, seed=int(state.config.get("seed", 42)))
        results = [(a.arch_id, a.proxy_metric, a.status) for a in state.archs.values()]
        await self.emit_decision(ctx, planner.decide(results), None)


class LlmPlanner(PlannerRole):
    """The LLM planner: one multi-turn conversation per run, rebuilt from the log each turn."""

    def turn_prompt(self, state: Phase1State) -> p.Rendered:
        spec = task_info(state)
        blind = bool(spec.get("blind", False))
        proxy = state.config.get("proxy", {})
        last = state.batch_archs(state.batches)
        reports = [e.report for e in state.explorations if e.report]
        return p.render(
            "planner_turn",
            task=p.task_block(spec, blind),
            published_best=p.published_best_text(spec.get("published_best"), blind=blind),
            budget_used=state.budget_used, budget_total=state.budget,
            patience=state.since_improvement, patience_limit=state.patience,
            n_parallel=n_parallel(state), next_arch_id=format_arch_id(self.next_arch_number(state)),
            memory_cap_mb=f"{proxy.get('memory_cap_mb', 11264.0):g}",
            proxy_fraction=f"{proxy.get('fraction', 0.3):g}",
            time_cap_min=f"{proxy.get('time_cap_s', 3600.0) / 60:g}",
            whitelist=p.recipe_whitelist(),
            explorer_report="\n\n".join(reports) or "no exploration yet",
            leaderboard=p.results_table([_row(a) for a in state.leaderboard()[:10]]),
            last_results=p.results_table([_row(a) for a in last], empty="no batch has run yet"),
        )

    async def turn(self, ctx: Context) -> None:
        state = ctx.state
        client = ctx.llm(self.name)
        system = p.render("planner_system")
        known = list(state.archs)
        parse = lambda text: parse_planner(text, n_parallel=n_parallel(state), known_arch_ids=known)  # noqa: E731
        try:
            decision, _, _ = await ask_parsed(client, self.name, system, state.history(self.name),
                                              self.turn_prompt(state), parse, state.unconsumed(self.name))
        except Unusable as exc:
            await ctx.emit(m.AgentOutputRejected(agent=self.name, reason=exc.reason, attempts=exc.attempts),
                           ctx.last_response_id)
            return
        await self.emit_decision(ctx, decision, ctx.last_response_id)


def _row(arch: Arch) -> p.ResultRow:
    return p.ResultRow(arch_id=arch.arch_id, status=arch.status, val_metric=arch.proxy_metric, params=arch.params,
                       reason=arch.rejected or arch.proxy_reason)
