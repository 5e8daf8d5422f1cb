"""The Code Executor role: proposal -> `Architecture` source + training config, validated.

Per proposed architecture: write the code (LLM; or take the source a rule-based planner
gave), request a `validate` evaluation from the trainers, and on failure ask for a fix with
the truncated traceback (bugs only, never the design), up to `code_retries` times. Success
-> `architecture.implemented` + a `proxy` evaluation; final failure ->
`architecture.rejected` (which uses budget). Every step is derived from the log.
"""

from __future__ import annotations

import json
from pathlib import Path

import structlog

from agentnas.agents import prompts as p
from agentnas.agents.conversation import Unusable, ask_parsed
from agentnas.agents.evaluations import evaluation
from agentnas.agents.protocol import parse_code, referenced_arch_ids
from agentnas.agents.runtime import Context, Work
from agentnas.agents.slot_alternatives import alternatives_due
from agentnas.bus import messages as m
from agentnas.bus.config import Config
from agentnas.store.state import Arch, RunState

log = structlog.get_logger("agentnas.code_executor")

TRACEBACK_CHARS = 3000


def max_attempts(state: RunState) -> int:
    return 1 + state.settings.phase1.code_retries


class CodeExecutorRole:
    name = "code_executor"

    def __init__(self, config: Config, home: Path) -> None:
        self.config, self.home = config, home

    def due(self, state: RunState) -> list[Work]:
        return self.phase1_due(state) + alternatives_due(state)

    def phase1_due(self, state: RunState) -> list[Work]:
        work = []
        for arch in state.phase1.archs.values():
            if arch.implemented or arch.rejected or arch.proxy_eval_id:
                continue
            if state.phase1.stopped is not None and not arch.attempts:
                continue  # the phase ended before this one was started
            last = arch.attempts[-1] if arch.attempts else None
            key = f"{state.run_id}:{arch.arch_id}"
            if last is None or (last.status and last.status != "ok" and len(arch.attempts) < self.limit(state, arch)):
                work.append(Work(key=f"{key}:attempt:{len(arch.attempts) + 1}", run_id=state.run_id,
                                 action=lambda ctx, a=arch.arch_id: self.attempt(ctx, a)))
            elif last.status == "ok":
                work.append(Work(key=f"{key}:accept", run_id=state.run_id,
                                 action=lambda ctx, a=arch.arch_id: self.accept(ctx, a)))
            elif last.status:
                work.append(Work(key=f"{key}:reject", run_id=state.run_id,
                                 action=lambda ctx, a=arch.arch_id: self.reject(ctx, a)))
        return work

    @staticmethod
    def limit(state: RunState, arch: Arch) -> int:
        # Code the planner wrote itself cannot be fixed by us: one attempt.
        return 1 if arch.proposal.source else max_attempts(state)

    async def attempt(self, ctx: Context, arch_id: str) -> None:
        state = ctx.state
        arch = state.phase1.archs[arch_id]
        if arch.proposal.source:
            source, recipe = arch.proposal.source, arch.proposal.recipe
            causation = None
        else:
            try:
                source, recipe = await self.write_code(ctx, arch)
            except Unusable as exc:
                await ctx.emit(m.AgentOutputRejected(agent=self.name, reason=exc.reason, attempts=exc.attempts),
                               ctx.last_response_id)
                await ctx.emit(m.ArchitectureRejected(arch_id=arch_id, reason=f"unusable answers: {exc.reason}",
                                                      attempts=len(arch.attempts) + 1))
                return
            causation = ctx.last_response_id
        await ctx.emit(evaluation(state, arch_id=arch_id, request="validate", source=source,
                                  recipe=recipe or arch.proposal.recipe, phase=1, attempt=len(arch.attempts) + 1),
                       causation)

    async def write_code(self, ctx: Context, arch: Arch) -> tuple[str, dict | str]:
        state = ctx.state
        task, archs = state.settings.task, state.phase1.archs
        referenced = {a: archs[a].source for a in referenced_arch_ids(arch.proposal.description, archs)
                      if a in archs and archs[a].source}
        recipe = arch.proposal.recipe if isinstance(arch.proposal.recipe, str) else json.dumps(arch.proposal.recipe)
        implement = p.render(
            "code_executor_implement", arch_id=arch.arch_id, description=arch.proposal.description,
            task=p.task_block(task, task.blind), input_shape=p.batch_shape(task.input_shape),
            output_shape=p.batch_shape(task.output_shape), max_params="no fixed limit",
            memory_cap_mb=f"{state.settings.proxy.memory_cap_mb:g}",
            recipe=recipe, referenced_code=p.referenced_code_block(referenced), whitelist=p.recipe_whitelist())
        # The conversation: the implement prompt, then one (answer, fix prompt) pair per failed attempt.
        history: list[tuple[str, str]] = []
        prompt = implement
        for number, attempt in enumerate(arch.attempts, 1):
            history.append((prompt.text, _answer_text(attempt.source, attempt.recipe)))
            prompt = p.render("code_executor_fix", arch_id=arch.arch_id, attempt=number + 1,
                              max_attempts=max_attempts(state), reason=attempt.reason or attempt.status,
                              source=attempt.source, traceback=(attempt.traceback or "")[-TRACEBACK_CHARS:] or "none")
        client = ctx.llm(self.name)
        answer, _, _ = await ask_parsed(client, self.name, p.render("code_executor_system"), history, prompt, parse_code)
        return answer.source, answer.recipe

    async def accept(self, ctx: Context, arch_id: str) -> None:
        state = ctx.state
        arch = state.phase1.archs[arch_id]
        last = arch.attempts[-1]
        recipe = last.recipe if isinstance(last.recipe, dict) else {}
        implemented = await ctx.emit(m.ArchitectureImplemented(arch_id=arch_id, source=last.source, recipe=recipe,
                                                               attempts=len(arch.attempts), validation_eval_id=last.eval_id))
        await ctx.emit(evaluation(state, arch_id=arch_id, request="proxy", source=last.source, recipe=last.recipe,
                                  phase=1), implemented.id)

    async def reject(self, ctx: Context, arch_id: str) -> None:
        arch = ctx.state.phase1.archs[arch_id]
        last = arch.attempts[-1]
        await ctx.emit(m.ArchitectureRejected(arch_id=arch_id, reason=f"{last.status}: {last.reason}"[:300],
                                              attempts=len(arch.attempts)))


def _answer_text(source: str, recipe: dict | str) -> str:
    """The answer as the conversation remembers it: rebuilt from the attempt, identically every time."""
    config = recipe if isinstance(recipe, str) else json.dumps(recipe, indent=2, sort_keys=True)
    return f"```python\n{source.rstrip()}\n```\n\n```json\n{config}\n```"
