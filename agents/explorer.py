"""The Data Explorer role: a code loop in the sandbox that ends with a report.

Each turn the LLM writes Python; it runs in a fresh sandboxed process (code_runner.py)
with the task's data read-only; its output, truncated, is the next message. A report is
refused before any code has run; after `explorer_max_steps` turns a report is demanded.
Every step is an `exploration.stepped` event, so a restarted explorer resumes the loop.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from agentnas.agents import prompts as p
from agentnas.agents.code_runner import run_code
from agentnas.agents.conversation import Unusable, ask_parsed
from agentnas.agents.protocol import Report, RunCode, parse_explorer
from agentnas.agents.runtime import Context, Work
from agentnas.bus import messages as m
from agentnas.bus.config import Config
from agentnas.store.state import RunState

log = structlog.get_logger("agentnas.explorer")


class ExplorerRole:
    name = "explorer"

    def __init__(self, config: Config, home: Path) -> None:
        self.config, self.home = config, home

    def due(self, state: RunState) -> list[Work]:
        exploring = state.phase1.exploring
        if exploring is None:
            return []
        index = len(state.phase1.explorations)
        return [Work(key=f"{state.run_id}:explore:{index}:{len(exploring.steps)}", run_id=state.run_id, action=self.step)]

    async def step(self, ctx: Context) -> None:
        """One turn: ask, then run the code (one `exploration.stepped`) or file the report."""
        state, settings = ctx.state, ctx.state.settings
        exploring = state.phase1.exploring
        max_steps = settings.phase1.explorer_max_steps
        output_chars = settings.phase1.explorer_output_chars
        steps = len(exploring.steps)
        if steps == 0:
            prompt = p.render("explorer_turn", task=p.task_block(settings.task, settings.task.blind),
                              question=exploring.question, max_steps=max_steps,
                              data_paths=settings.data_paths or "the folder in $AGENTNAS_DATA")
        else:
            last = exploring.steps[-1]
            prompt = p.render("explorer_output", step=last.step, status=last.status, output=last.output,
                              max_steps=max_steps, steps_left=max(0, max_steps - steps))
        client = ctx.llm(self.name)
        history = state.llm.history(self.name, exploring.dialogue_start)
        parse = lambda text: parse_explorer(text, steps_run=steps)  # noqa: E731
        try:
            action, _, _ = await ask_parsed(client, self.name, p.render("explorer_system", max_steps=max_steps,
                                                                         output_limit=output_chars),
                                            history, prompt, parse, state.llm.unconsumed(self.name))
        except Unusable as exc:
            await ctx.emit(m.ExplorationReported(report=f"(no report: {exc.reason})", steps=steps), ctx.last_response_id)
            return
        causation = ctx.last_response_id
        if isinstance(action, Report) or steps >= max_steps:
            text = action.text if isinstance(action, Report) else "(step limit reached before a report)"
            await ctx.emit(m.ExplorationReported(report=text, steps=steps), causation)
            return
        assert isinstance(action, RunCode)
        data_dir = settings.data_dir or None
        run = await run_code(action.code, data_dir=Path(data_dir) if data_dir else None,
                             scratch_root=self.home / "scratch", output_chars=output_chars)
        await ctx.emit(m.ExplorationStepped(step=steps + 1, code=action.code, output=run.output, status=run.status),
                       causation)
