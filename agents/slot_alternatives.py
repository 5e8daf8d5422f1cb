"""Phase 2 work of the Code Executor: every alternative of the slot plan, written and validated.

An alternative without a source is written by the LLM as the self-contained class
`SLOT_<slot>_<k>` (no constructor arguments, exact shapes), then validated in the seed
network: the seed configuration with only that slot switched to it, through the trainer's
`validate` request. A failure goes back with the traceback ("fix the bug, not the idea"),
up to `slots.code_retries` times; then the alternative is dropped with an event.
Alternatives that came with a source (Identity, Zero, the rule-based spaces) are validated
once: no LLM can fix them. Every step is derived from the log.
"""

from __future__ import annotations

import structlog

from agentnas.agents import prompts as p
from agentnas.agents.conversation import Unusable, ask_parsed
from agentnas.agents.evaluations import evaluation
from agentnas.agents.protocol import parse_slot_class
from agentnas.agents.runtime import Context, Work
from agentnas.agents.slot_planner import with_alternative
from agentnas.bus import messages as m
from agentnas.bus import space as sp
from agentnas.store.state import RunState
from agentnas.store.state.space import alternative_arch, alternative_key

log = structlog.get_logger("agentnas.code_executor")

AGENT = "code_executor"
TRACEBACK_CHARS = 3000


def alternatives_due(state: RunState) -> list[Work]:
    plan = state.space.plan
    if plan is None or state.space.accepted is not None or len(state.space.rejections) >= state.space.plans:
        return []
    work = []
    limit = 1 + state.settings.slots.code_retries
    for slot_index, slot in enumerate(plan.space.slots):
        for k in range(1, len(slot.alternatives)):
            if state.space.resolved(slot.name, k):
                continue
            given = bool(slot.alternatives[k].source)
            checks = state.space.validations.get(alternative_key(slot.name, k), ())
            last = checks[-1] if checks else None
            key = f"{state.run_id}:alt:{plan.plan}:{slot.name}:{k}"
            attempts = 1 if given else limit
            if last is None or (last.status and last.status != "ok" and len(checks) < attempts):
                work.append(Work(key=f"{key}:attempt:{len(checks) + 1}", run_id=state.run_id,
                                 action=lambda ctx, i=slot_index, k=k: attempt(ctx, i, k)))
            elif last.status == "ok":
                work.append(Work(key=f"{key}:accept", run_id=state.run_id,
                                 action=lambda ctx, s=slot.name, k=k, c=last, n=len(checks): ctx.emit(
                                     m.AlternativeImplemented(plan=plan.plan, slot=s, index=k,
                                                              source=_class_of(c.source, s, k), attempts=n))))
            elif last.status:
                reason = f"{last.status}: {last.reason}"[:300]
                work.append(Work(key=f"{key}:drop", run_id=state.run_id,
                                 action=lambda ctx, s=slot.name, k=k, r=reason, n=len(checks): ctx.emit(
                                     m.AlternativeDropped(plan=plan.plan, slot=s, index=k, reason=r, attempts=n))))
    return work


async def attempt(ctx: Context, slot_index: int, k: int) -> None:
    """Write (or take) the alternative's class and ask the trainers to validate it in the seed network."""
    state = ctx.state
    plan = state.space.plan
    slot = plan.space.slots[slot_index]
    alternative = slot.alternatives[k]
    checks = state.space.validations.get(alternative_key(slot.name, k), ())
    causation = None
    if alternative.source:
        source = alternative.source
    else:
        try:
            source = await write_class(ctx, slot, k, checks)
        except Unusable as exc:
            await ctx.emit(m.AgentOutputRejected(agent=AGENT, reason=exc.reason, attempts=exc.attempts),
                           ctx.last_response_id)
            await ctx.emit(m.AlternativeDropped(plan=plan.plan, slot=slot.name, index=k,
                                                reason=f"unusable answers: {exc.reason}"[:300], attempts=len(checks) + 1))
            return
        causation = ctx.last_response_id
    try:
        source = sp.rename_alternative_class(source, f"SLOT_{slot.name}_{k}")
        trial, config = with_alternative(plan.space, slot_index, source)
        assembled = sp.assemble(trial, config)
    except sp.SpaceError as exc:
        # the class cannot even be placed in the network: a failed attempt with the reason
        assembled = f"raise SyntaxError({str(exc)!r})\n"
    await ctx.emit(evaluation(state, arch_id=alternative_arch(plan.plan, slot.name, k), request="validate",
                              source=assembled, recipe=plan.space.seed_recipe, phase=2, attempt=len(checks) + 1),
                   causation)


async def write_class(ctx: Context, slot: sp.Slot, k: int, checks) -> str:
    state = ctx.state
    task = state.settings.task
    limit = 1 + state.settings.slots.code_retries
    residual = f" and residual of shape (batch, {', '.join(map(str, slot.residual_shape))})" \
        if slot.interface == "dual" and slot.residual_shape else ""
    prompt = p.render("code_executor_slot", task=p.task_block(task, task.blind), slot=slot.name,
                      slot_description=slot.description or slot.name, class_name=f"SLOT_{slot.name}_{k}",
                      arguments="x" if slot.interface == "single" else "x, residual",
                      input_shape=p.batch_shape(slot.input_shape), residual_line=residual,
                      output_shape=p.batch_shape(slot.output_shape), description=slot.alternatives[k].description,
                      seed_code=slot.alternatives[0].source.rstrip())
    history: list[tuple[str, str]] = []
    for number, check in enumerate(checks, 1):
        history.append((prompt.text, f"```python\n{_class_of(check.source, slot.name, k).rstrip()}\n```"))
        prompt = p.render("code_executor_slot_fix", attempt=number, max_attempts=limit, slot=slot.name,
                          reason=check.reason or check.status,
                          traceback=(check.traceback or "")[-TRACEBACK_CHARS:] or "no traceback")
    client = ctx.llm(AGENT)
    source, _, _ = await ask_parsed(client, AGENT, p.render("code_executor_system"), history, prompt, parse_slot_class)
    return source


def _class_of(assembled: str, slot: str, k: int) -> str:
    """The alternative's class as it was validated, cut out of the assembled network (its
    `# slot <name>: alternative 1` section, see with_alternative), so that nothing but the
    validation request has to carry it."""
    marker = f"# slot {slot}: alternative 1"
    start = assembled.find(marker)
    if start < 0:
        return assembled
    end = assembled.find("\n# slot ", start + len(marker))
    end = assembled.find("\nSLOT_", start) if end < 0 else end
    block = assembled[start + len(marker):end if end > 0 else None].strip("\n")
    return block.replace(f"SLOT_{slot}_1", f"SLOT_{slot}_{k}")
