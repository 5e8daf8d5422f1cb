"""Phase 1.5, the Modularizer: the seed rewritten with one class per stage, proven equal.

Without it the slotted space fragments into single layers and the search stalls
(PROTOCOL.md). It runs when the seed is a *block stack*: its top-level `forward` calls at
least `MIN_PRIMITIVES` primitive layers directly (convolutions, normalisations,
activations, pooling, linear layers created in `__init__` as `self.x = nn.<Layer>(...)`,
or `F.<activation>` calls) and they are most of its calls. A seed already built from
stage modules is used as it is (`skipped`).

A rewrite is accepted only when the trainer's `equivalence` check passes (same parameter
count, same sorted shapes, same construction order, the original's weights transplanted,
eval-mode outputs allclose); each failure goes back to the LLM, up to `retries` times;
then Phase 2 starts from the unmodified seed and the log says why (`failed`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import structlog

from agentnas.agents import prompts as p
from agentnas.agents.conversation import Unusable, ask_parsed
from agentnas.agents.evaluations import evaluation
from agentnas.agents.protocol import parse_rewrite
from agentnas.agents.runtime import Context, Work
from agentnas.bus import messages as m
from agentnas.bus.config import Config
from agentnas.store.state import RunState
from agentnas.store.state.space import modular_arch

log = structlog.get_logger("agentnas.modularizer")

STAGE = "1.5"
MIN_PRIMITIVES = 4
PRIMITIVE_LAYERS = ("Conv", "BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "ReLU", "GELU", "SiLU", "ELU",
                    "LeakyReLU", "Tanh", "Sigmoid", "Mish", "Hardswish", "MaxPool", "AvgPool", "AdaptiveAvgPool",
                    "AdaptiveMaxPool", "Dropout", "Linear")
PRIMITIVE_FUNCTIONS = ("relu", "gelu", "silu", "elu", "leaky_relu", "tanh", "sigmoid", "mish", "max_pool1d",
                       "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
                       "dropout", "batch_norm", "layer_norm", "hardswish")
TRACEBACK_CHARS = 2000


def is_block_stack(source: str) -> tuple[bool, str]:
    """(block stack?, why), from the seed's source alone."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return False, f"the seed does not parse ({exc.msg})"
    arch = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Architecture"), None)
    methods = {f.name: f for f in arch.body if isinstance(f, ast.FunctionDef)} if arch else {}
    if "__init__" not in methods or "forward" not in methods:
        return False, "the seed has no Architecture.__init__ and forward to read"
    primitives = set()
    for node in ast.walk(methods["__init__"]):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            layer = _called_name(node.value.func)
            for target in node.targets:
                if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and target.value.id == "self" and layer.startswith(PRIMITIVE_LAYERS)):
                    primitives.add(target.attr)
    direct = other = 0
    for node in ast.walk(methods["forward"]):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
            direct += func.attr in primitives
            other += func.attr not in primitives
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "F":
            direct += func.attr in PRIMITIVE_FUNCTIONS
    if direct >= MIN_PRIMITIVES and direct > other:
        return True, f"forward calls {direct} primitive layers directly and {other} other modules"
    return False, f"forward calls {direct} primitive layers directly and {other} other modules: already modular"


def _called_name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


class ModularizerRole:
    name = "modularizer"
    uses_llm = True

    def __init__(self, config: Config, home: Path) -> None:
        self.config, self.home = config, home

    def due(self, state: RunState) -> list[Work]:
        settings = state.settings
        seed = state.phase1.seed
        if not settings.runs_phase(2) or seed is None or state.space.modularized is not None:
            return []
        run = state.run_id
        if state.costs.current != STAGE:
            return [Work(key=f"{run}:modular:start", run_id=run, action=start_stage)]
        stack, why = is_block_stack(seed.source)
        if not self.uses_llm or not stack:
            reason = why if stack is False else "no LLM for this role: the seed is used as written"
            return [Work(key=f"{run}:modular:skip", run_id=run,
                         action=lambda ctx, r=reason: self.finish(ctx, "skipped", seed.source, r))]
        rewrites = state.space.rewrites
        last = rewrites[-1] if rewrites else None
        limit = 1 + settings.modularizer.retries
        if last is None or (last.status and last.status != "ok" and len(rewrites) < limit):
            return [Work(key=f"{run}:modular:attempt:{len(rewrites) + 1}", run_id=run, action=self.attempt)]
        if last.status == "ok":
            return [Work(key=f"{run}:modular:accept", run_id=run,
                         action=lambda ctx: self.finish(ctx, "accepted", last.source, "equivalence check passed",
                                                        eval_id=last.eval_id))]
        if last.status:
            reason = f"{len(rewrites)} rewrites failed the equivalence check; the last: {last.reason}"
            return [Work(key=f"{run}:modular:give-up", run_id=run,
                         action=lambda ctx: self.finish(ctx, "failed", seed.source, reason))]
        return []

    async def finish(self, ctx: Context, outcome: str, source: str, reason: str, eval_id: str = "") -> None:
        log.info("modularizer finished", outcome=outcome, reason=reason)
        await ctx.emit(m.ModularizerFinished(outcome=outcome, source=source, reason=reason[:500],
                                             attempts=len(ctx.state.space.rewrites), eval_id=eval_id))

    async def attempt(self, ctx: Context) -> None:
        state = ctx.state
        seed = state.phase1.seed
        task = state.settings.task
        limit = 1 + state.settings.modularizer.retries
        history: list[tuple[str, str]] = []
        prompt = p.render("modularizer_rewrite", task=p.task_block(task, task.blind), source=seed.source.rstrip())
        for number, rewrite in enumerate(state.space.rewrites, 1):
            history.append((prompt.text, f"```python\n{rewrite.source.rstrip()}\n```"))
            prompt = p.render("modularizer_fix", attempt=number, max_attempts=limit, reason=rewrite.reason or rewrite.status,
                              traceback=(rewrite.traceback or "")[-TRACEBACK_CHARS:])
        client = ctx.llm(self.name)
        try:
            source, _, _ = await ask_parsed(client, self.name, p.render("modularizer_system"), history, prompt,
                                            parse_rewrite, state.llm.unconsumed(self.name))
        except Unusable as exc:
            await ctx.emit(m.AgentOutputRejected(agent=self.name, reason=exc.reason, attempts=exc.attempts),
                           ctx.last_response_id)
            await self.finish(ctx, "failed", seed.source, f"unusable answers: {exc.reason}")
            return
        number = len(state.space.rewrites) + 1
        await ctx.emit(equivalence_check(state, modular_arch(number), source, seed.source, attempt=number),
                       ctx.last_response_id)


class RuleModularizerRole(ModularizerRole):
    """No LLM: the seed goes to Phase 2 as written (the rule-based planner writes stages already)."""

    uses_llm = False


def equivalence_check(state: RunState, arch_id: str, source: str, reference: str, attempt: int = 1
                      ) -> m.EvaluationRequested:
    """Does `source` compute what `reference` computes, with the same weights (the trainer decides)?"""
    settings = state.settings
    options = m.EquivalenceOptions(rtol=settings.modularizer.rtol, atol=settings.modularizer.atol)
    recipe = state.phase1.seed.recipe if state.phase1.seed else {}
    return evaluation(state, arch_id=arch_id, request="equivalence", source=source, recipe=recipe, phase=2,
                      attempt=attempt, reference_source=reference, equivalence=options)


async def start_stage(ctx: Context) -> None:
    await ctx.emit(m.PhaseStarted(phase=STAGE))
