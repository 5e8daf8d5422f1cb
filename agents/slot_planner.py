"""Phase 2, the Slot Planner: the seed rewritten as a scaffold with slots, and the space built.

1. One LLM call (bounded re-asks for malformed or inconsistent answers) turns the seed as
   the Modularizer left it into a scaffold and 10-20 slots, each with the seed's own choice
   first (its class copied from the seed; Identity for glue slots) and 3-7 more ideas as
   descriptions. Identity and Zero are added where shapes allow; the caps (20 slots, 8
   alternatives) are applied and every trim is a note of `slot_plan.proposed`.
2. The Code Executor implements and validates each alternative (see code_executor.py);
   alternatives that never validate are dropped with an event.
3. The space is assembled from what validated (a slot left with fewer than 2 choices is
   frozen to the seed's), the learning-rate slot added, and the seed configuration must
   reproduce the seed (the trainer's `equivalence` check against the seed's code). Then
   `space.accepted`; or `space.rejected` with the reason and one more plan
   (`slots.phase_retries`), after which the run ends with the seed as its result.
`RuleSlotPlannerRole` builds the space for the rule-based planner's seeds without an LLM.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import structlog

from agentnas.agents import final
from agentnas.agents import prompts as p
from agentnas.agents.conversation import Unusable, ask_parsed
from agentnas.agents.modularizer import equivalence_check
from agentnas.agents.protocol import MalformedOutput, SlotPlanAnswer, parse_slot_plan
from agentnas.agents.runtime import Context, Work
from agentnas.bus import messages as m
from agentnas.bus import space as sp
from agentnas.bus.config import Config
from agentnas.store.state import RunState
from agentnas.store.state.space import alternative_key, gate_arch

log = structlog.get_logger("agentnas.slot_planner")

STAGE = "2"


# ---------------------------------------------------------------- building spaces (pure)


def _placeholder(slot: sp.Slot, index: int) -> str:
    """Stands in for an alternative not written yet, so the plan's structure can be checked."""
    args = "x" if slot.interface == "single" else "x, residual"
    return f"class SLOT_{slot.name}_{index}(nn.Module):\n    def forward(self, {args}):\n        return x\n"


def check_plan(space: sp.SlottedSpace, max_slots: int, max_alternatives: int) -> tuple[sp.SlottedSpace, list[str]]:
    """The plan's caps and structure (scaffold, shapes, interfaces, the seed's code), as check_space
    judges them; alternatives without a source yet are left out of the source checks."""
    stand_in = msgspec.structs.replace(space, slots=tuple(
        msgspec.structs.replace(slot, alternatives=tuple(
            a if a.source else msgspec.structs.replace(a, source=_placeholder(slot, k))
            for k, a in enumerate(slot.alternatives)))
        for slot in space.slots))
    capped, notes = sp.check_space(stand_in, max_slots=max_slots, max_alternatives=max_alternatives)
    kept = []
    for original, slot in zip(space.slots, capped.slots):
        kept.append(msgspec.structs.replace(original, alternatives=original.alternatives[:len(slot.alternatives)]))
    return msgspec.structs.replace(space, slots=tuple(kept)), notes


def space_from_answer(answer: SlotPlanAnswer, *, seed_source: str, seed_recipe: dict, seed_params: int | None,
                      task: str, lr_multipliers: tuple[float, ...], run_id: str, max_slots: int,
                      max_alternatives: int) -> tuple[sp.SlottedSpace, list[str]]:
    """The Slot Planner's JSON as a space (alternatives after the seed's have no source yet).

    Raises MalformedOutput with the reason (fed back to the LLM) when it is inconsistent."""
    slots = []
    for planned in answer.slots:
        if not planned.name.isidentifier():
            raise MalformedOutput(f"slot name {planned.name!r} is not a Python identifier")
        shell = sp.Slot(name=planned.name, class_name=f"SLOT_{planned.name}", description=planned.description,
                        input_shape=tuple(planned.input_shape), output_shape=tuple(planned.output_shape),
                        interface=planned.interface if planned.interface in ("single", "dual") else "single",
                        residual_shape=tuple(planned.residual_shape) if planned.residual_shape else None,
                        kind="glue" if planned.kind == "glue" else "module", seed_description=planned.seed_description,
                        alternatives=())
        if planned.interface not in ("single", "dual"):
            raise MalformedOutput(f"slot {planned.name}: interface must be single or dual, not {planned.interface!r}")
        if shell.kind == "glue":
            first = sp.offered_defaults(msgspec.structs.replace(shell, alternatives=()))
            if not first or first[0].role != "identity":
                raise MalformedOutput(f"glue slot {planned.name} must have equal input and output shapes")
            seed_choice = msgspec.structs.replace(first[0], role="identity")
        else:
            if not planned.seed_code.strip():
                raise MalformedOutput(f"module slot {planned.name} needs seed_code: the seed's own module as a class")
            try:
                code = sp.rename_alternative_class(planned.seed_code, f"SLOT_{planned.name}_0")
            except sp.SpaceError as exc:
                raise MalformedOutput(f"slot {planned.name}: seed_code: {exc}") from None
            seed_choice = sp.Alternative(description=planned.seed_description or "the seed's own module",
                                         source=code, role="seed")
        others = [sp.Alternative(description=d, source="") for d in planned.alternatives if d.strip()]
        slot = msgspec.structs.replace(shell, alternatives=(seed_choice, *others))
        slots.append(sp.with_defaults(slot, max_alternatives=max_alternatives))
    space = sp.SlottedSpace(task=task, scaffold_source=answer.scaffold_code, slots=tuple(slots),
                            lr_multipliers=lr_multipliers, seed_recipe=seed_recipe, seed_source=seed_source,
                            seed_params=seed_params, provenance=sp.Provenance(run_id=run_id, created_by="slot_planner"))
    try:
        return check_plan(space, max_slots, max_alternatives)
    except sp.SpaceError as exc:
        raise MalformedOutput(f"the slot plan is inconsistent: {exc}") from None


def with_alternative(space: sp.SlottedSpace, slot_index: int, source: str) -> tuple[sp.SlottedSpace, sp.Configuration]:
    """A one-off space in which slot `slot_index` offers only its seed choice and `source` (as
    alternative 1), every other slot only its seed choice: the network that validates `source`."""
    slots = []
    for i, slot in enumerate(space.slots):
        alternatives = slot.alternatives[:1]
        if i == slot_index:
            renamed = sp.rename_alternative_class(source, f"SLOT_{slot.name}_1")
            alternatives = (*alternatives, sp.Alternative(description="candidate", source=renamed))
        slots.append(msgspec.structs.replace(slot, alternatives=alternatives))
    trial = msgspec.structs.replace(space, slots=tuple(slots), lr_multipliers=(1.0,))
    choices = tuple(1 if i == slot_index else 0 for i in range(len(slots)))
    return trial, sp.Configuration(choices=choices, lr_index=0)


def final_space(state: RunState) -> tuple[sp.SlottedSpace, list[str]]:
    """The space from the current plan and what validated: dropped alternatives out, the rest
    renumbered, slots with fewer than 2 choices frozen, the run's lr multipliers."""
    plan = state.space.plan
    notes: list[str] = []
    slots = []
    for slot in plan.space.slots:
        kept = [slot.alternatives[0]]
        for k, alternative in enumerate(slot.alternatives[1:], 1):
            done = state.space.implemented.get(alternative_key(slot.name, k))
            if done is not None:
                kept.append(msgspec.structs.replace(alternative, source=done.source))
        kept = [msgspec.structs.replace(a, source=sp.rename_alternative_class(a.source, f"SLOT_{slot.name}_{i}"))
                for i, a in enumerate(kept)]
        if len(kept) < 2:
            notes.append(f"slot '{slot.name}': no alternative validated; frozen to the seed's choice")
        slots.append(msgspec.structs.replace(slot, alternatives=tuple(kept)))
    space = msgspec.structs.replace(plan.space, slots=tuple(slots),
                                    lr_multipliers=tuple(state.settings.slots.lr_multipliers))
    settings = state.settings.slots
    space, more = sp.check_space(space, max_slots=settings.max_slots, max_alternatives=settings.max_alternatives)
    return space, notes + more


def seed_source(state: RunState) -> str:
    """The code Phase 2 starts from: the Modularizer's accepted rewrite, or the seed itself."""
    modular = state.space.modularized
    return modular.source if modular is not None else state.phase1.seed.source


# ---------------------------------------------------------------- the role


class SlotPlannerRole:
    name = "slot_planner"

    def __init__(self, config: Config, home: Path) -> None:
        self.config, self.home = config, home

    def due(self, state: RunState) -> list[Work]:
        settings, space = state.settings, state.space
        if not settings.runs_phase(2) or space.modularized is None:
            return []
        run = state.run_id
        if space.accepted is not None:
            # a run that ends with Phase 2 hands over the seed (Phase 3 would search the space)
            return final.final_work(state, ready=max(settings.phases) == 2)
        tries = 1 + settings.slots.phase_retries
        if len(space.rejections) >= tries:
            return final.final_work(state, ready=True)  # no usable space: the seed is the result
        if state.costs.current != STAGE:
            return [Work(key=f"{run}:slots:start", run_id=run, action=start_stage)]
        if space.plan is None or len(space.rejections) >= space.plans:
            return [Work(key=f"{run}:slots:plan:{space.plans + 1}", run_id=run, action=self.plan)]
        plan = space.plan
        if not all(space.resolved(slot.name, k) for slot in plan.space.slots
                   for k in range(1, len(slot.alternatives))):
            return []  # the Code Executor is implementing alternatives
        if space.gate is None:
            return [Work(key=f"{run}:slots:gate:{space.plans}", run_id=run, action=self.gate)]
        if space.gate.status == "ok":
            return [Work(key=f"{run}:slots:accept:{space.plans}", run_id=run, action=self.accept)]
        if space.gate.status:
            reason = f"the seed configuration does not reproduce the seed: {space.gate.reason}"
            return [Work(key=f"{run}:slots:reject:{space.plans}", run_id=run,
                         action=lambda ctx, r=reason: self.reject(ctx, r))]
        return []

    async def plan(self, ctx: Context) -> None:
        state = ctx.state
        settings = state.settings
        seed = state.phase1.seed
        source = seed_source(state)
        reports = "\n\n".join(e.report for e in state.phase1.explorations if e.report)
        summaries = "\n\n".join(state.phase1.summaries)
        limit = settings.slots
        feedback = ""
        if state.space.rejections:
            feedback = (f"\n# Your previous plan was rejected\n\n{state.space.rejections[-1].reason}\n"
                        "Plan again so that every first choice reproduces the seed exactly.\n")
        prompt = p.render("slot_planner_plan", task=p.task_block(settings.task, settings.task.blind),
                          params=f"{seed.params:,}" if seed.params else "unknown", metric=f"{seed.val_metric:.4g}",
                          source=source.rstrip(), explorer_report=reports[:limit.explorer_report_chars] or "none",
                          summaries=summaries[-limit.summaries_chars:] or "none", feedback=feedback)

        def parse(text: str) -> tuple[sp.SlottedSpace, list[str]]:
            return space_from_answer(parse_slot_plan(text), seed_source=source, seed_recipe=seed.recipe,
                                     seed_params=seed.params, task=settings.task.name,
                                     lr_multipliers=tuple(limit.lr_multipliers), run_id=state.run_id,
                                     max_slots=limit.max_slots, max_alternatives=limit.max_alternatives)

        client = ctx.llm(self.name)
        try:
            (space, notes), _, _ = await ask_parsed(client, self.name, p.render("slot_planner_system"), [], prompt,
                                                    parse, state.llm.unconsumed(self.name))
        except Unusable as exc:
            await ctx.emit(m.AgentOutputRejected(agent=self.name, reason=exc.reason, attempts=exc.attempts),
                           ctx.last_response_id)
            await ctx.emit(m.SlotPlanProposed(plan=state.space.plans + 1, space=_empty(state), notes=[]))
            await ctx.emit(m.SpaceRejected(plan=state.space.plans + 1, reason=f"no usable slot plan: {exc.reason}"))
            return
        await ctx.emit(m.SlotPlanProposed(plan=state.space.plans + 1, space=space, notes=notes), ctx.last_response_id)

    async def gate(self, ctx: Context) -> None:
        state = ctx.state
        try:
            space, _ = final_space(state)
        except sp.SpaceError as exc:
            await self.reject(ctx, f"the space does not assemble: {exc}")
            return
        assembled = sp.assemble(space, sp.seed_configuration(space))
        await ctx.emit(equivalence_check(state, gate_arch(state.space.plans), assembled, seed_source(state),
                                         attempt=state.space.plans))

    async def accept(self, ctx: Context) -> None:
        state = ctx.state
        space, notes = final_space(state)
        await ctx.emit(m.SpaceAccepted(plan=state.space.plans, space=space, notes=[*state.space.plan.notes, *notes],
                                       size=sp.space_size(space), eval_id=state.space.gate.eval_id))

    async def reject(self, ctx: Context, reason: str) -> None:
        log.warning("slot plan rejected", reason=reason)
        await ctx.emit(m.SpaceRejected(plan=ctx.state.space.plans, reason=reason[:1000]))


class RuleSlotPlannerRole(SlotPlannerRole):
    """No LLM: the space of a rule-based planner's seed, built from the design it was written from."""

    async def plan(self, ctx: Context) -> None:
        from agentnas.agents.builtin_spaces import design_of, rule_space

        state = ctx.state
        seed = state.phase1.seed
        design = design_of(seed.source)
        number = state.space.plans + 1
        if design is None:
            await ctx.emit(m.SlotPlanProposed(plan=number, space=_empty(state), notes=[]))
            await ctx.emit(m.SpaceRejected(plan=number, reason="without an LLM only the rule-based planner's seeds "
                                                               "can be turned into a space"))
            return
        space = rule_space(design, state.settings.task)
        space = msgspec.structs.replace(space, seed_recipe=seed.recipe, seed_params=seed.params,
                                        lr_multipliers=tuple(state.settings.slots.lr_multipliers),
                                        provenance=sp.Provenance(run_id=state.run_id, created_by="rule_slot_planner"))
        limit = state.settings.slots
        space, notes = check_plan(space, limit.max_slots, limit.max_alternatives)
        await ctx.emit(m.SlotPlanProposed(plan=number, space=space, notes=notes))


def _empty(state: RunState) -> sp.SlottedSpace:
    """A placeholder plan (no slots) that a rejection can refer to."""
    return sp.SlottedSpace(task=state.settings.task.name, scaffold_source="", slots=())


async def start_stage(ctx: Context) -> None:
    await ctx.emit(m.PhaseStarted(phase=STAGE))
