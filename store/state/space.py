"""The Phase 1.5 and 2 section: the Modularizer's rewrites, the slot plan, its alternatives,
the seed-reproduction gate and the accepted space.

Evaluations are matched by their arch id: `modular-<n>` (the n-th rewrite's equivalence
check), `plan<p>-<slot>-<k>` (a validation of alternative k of a slot), `plan<p>-seed`
(the gate: the assembled seed configuration against the seed).
"""

from __future__ import annotations

import msgspec

from agentnas.bus import messages as m
from agentnas.store.state.evals import EvalRecord


class Check(msgspec.Struct, frozen=True, kw_only=True):
    """One evaluation asked for by this phase and its outcome."""

    eval_id: str
    source: str
    status: str = ""  # "" while it runs
    reason: str = ""
    traceback: str = ""


def modular_arch(attempt: int) -> str:
    return f"modular-{attempt}"


def alternative_arch(plan: int, slot: str, index: int) -> str:
    return f"plan{plan}-{slot}-{index}"


def gate_arch(plan: int) -> str:
    return f"plan{plan}-seed"


def alternative_key(slot: str, index: int) -> str:
    return f"{slot}:{index}"


class SpaceSection(msgspec.Struct, frozen=True, kw_only=True):
    rewrites: tuple[Check, ...] = ()  # the Modularizer's equivalence checks, in order
    modularized: m.ModularizerFinished | None = None
    plan: m.SlotPlanProposed | None = None  # the current plan
    plans: int = 0
    implemented: dict[str, m.AlternativeImplemented] = {}  # "<slot>:<k>" of the current plan
    dropped: dict[str, m.AlternativeDropped] = {}
    validations: dict[str, tuple[Check, ...]] = {}  # "<slot>:<k>" -> its validations, in order
    gate: Check | None = None
    rejections: tuple[m.SpaceRejected, ...] = ()
    accepted: m.SpaceAccepted | None = None

    def resolved(self, slot: str, index: int) -> bool:
        key = alternative_key(slot, index)
        return key in self.implemented or key in self.dropped


def _with_check(checks: tuple[Check, ...], done: m.EvaluationCompleted) -> tuple[Check, ...]:
    return tuple(msgspec.structs.replace(c, status=done.status, reason=done.reason, traceback=done.traceback)
                 if c.eval_id == done.eval_id and not c.status else c for c in checks)


def fold_space(section: SpaceSection, env: m.Envelope, record: EvalRecord | None) -> SpaceSection:
    match env.payload:
        case m.ModularizerFinished() if section.modularized is None:
            return msgspec.structs.replace(section, modularized=env.payload)
        case m.SlotPlanProposed(plan=plan) if plan > section.plans:
            return msgspec.structs.replace(section, plan=env.payload, plans=plan, implemented={}, dropped={},
                                           validations={}, gate=None)
        case m.AlternativeImplemented(plan=plan, slot=slot, index=k) if plan == section.plans:
            return msgspec.structs.replace(section, implemented={**section.implemented,
                                                                 alternative_key(slot, k): env.payload})
        case m.AlternativeDropped(plan=plan, slot=slot, index=k) if plan == section.plans:
            return msgspec.structs.replace(section, dropped={**section.dropped, alternative_key(slot, k): env.payload})
        case m.SpaceAccepted() if section.accepted is None:
            return msgspec.structs.replace(section, accepted=env.payload)
        case m.SpaceRejected():
            return msgspec.structs.replace(section, rejections=(*section.rejections, env.payload))
        case m.EvaluationRequested(eval_id=eval_id, arch_id=arch, model_source=source):
            check = Check(eval_id=eval_id, source=source)
            if arch.startswith("modular-"):
                return msgspec.structs.replace(section, rewrites=(*section.rewrites, check))
            if arch == gate_arch(section.plans):
                return msgspec.structs.replace(section, gate=check)
            prefix = f"plan{section.plans}-"
            if arch.startswith(prefix) and section.plan is not None:
                slot, _, index = arch[len(prefix):].rpartition("-")
                key = alternative_key(slot, int(index)) if index.isdigit() else ""
                if key:
                    checks = (*section.validations.get(key, ()), check)
                    return msgspec.structs.replace(section, validations={**section.validations, key: checks})
        case m.EvaluationCompleted(eval_id=eval_id) as done if record is not None:
            if any(c.eval_id == eval_id for c in section.rewrites):
                return msgspec.structs.replace(section, rewrites=_with_check(section.rewrites, done))
            if section.gate is not None and section.gate.eval_id == eval_id and not section.gate.status:
                return msgspec.structs.replace(section, gate=_with_check((section.gate,), done)[0])
            for key, checks in section.validations.items():
                if any(c.eval_id == eval_id for c in checks):
                    return msgspec.structs.replace(section, validations={**section.validations,
                                                                         key: _with_check(checks, done)})
    return section
