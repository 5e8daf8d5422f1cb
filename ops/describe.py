"""The one formatter of events as text: `events`, `run`'s progress and `audit` all use it.

`describe(env)` is one line that starts with the event's kind and says what happened in
words; kinds without a special case show their first fields. Multi-line values are folded
onto the line and long ones shortened, so a line never carries a Python dict or a block of
code.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from agentnas.bus import messages as m

FIELD = 60  # characters kept of one text field
STAGES = {"1": "Phase 1 (LLM seed search)", "1.5": "Phase 1.5 (Modularizer)", "2": "Phase 2 (slotted space)",
          "3": "Phase 3 (search in the space)", "final": "final training (wave 2) and the result"}


def short(value: Any, limit: int = FIELD) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def describe(env: m.Envelope, calls: dict[str, int] | None = None) -> str:
    """One line for an event: its kind and the fields that say what happened.

    `calls` numbers LLM calls (call id -> 1-based index) where the caller knows them."""
    calls = calls or {}
    ev = _local_id(env)
    match env.payload:
        case m.RunRequested(task=task, phases=phases):
            return f"run.requested task {task}, phases {', '.join(map(str, phases))}"
        case m.RunFinished(summary=summary):
            return "run.finished" + (f": {_summary_text(summary)}" if summary else "")
        case m.RunFailed(reason=reason):
            return f"run.failed: {short(reason, 200)}"
        case m.ExperimentProposed(batch=batch, proposals=proposals):
            ids = ", ".join(f"{p.arch_id} ({short(p.description, 40)})" for p in proposals) or "none"
            return f"experiment.proposed batch {batch}: {ids}"
        case m.ArchitectureImplemented(arch_id=arch, attempts=n, validation_eval_id=ev):
            return f"architecture.implemented {arch} (attempts {n}" + (f", validated by {ev})" if ev else ")")
        case m.ArchitectureRejected(arch_id=arch, attempts=n, reason=reason):
            return f"architecture.rejected {arch} after {n} attempts: {short(reason)}"
        case m.EvaluationRequested(request=req, arch_id=arch, phase=phase):
            return f"evaluation.requested {ev} {req} {arch or '-'} (phase {phase})"
        case m.EvaluationStarted(device=device, attempt=attempt):
            return f"evaluation.started {ev} on {device}" + (f" (delivery {attempt})" if attempt > 1 else "")
        case m.EvaluationProgress(epoch=epoch, epochs=epochs, val_metric=val):
            return f"evaluation.progress {ev} epoch {epoch}/{epochs} val {metric(val)}"
        case m.EvaluationCompleted(status=status, arch_id=arch, val_metric=val, reason=reason,
                                   request=req, reused_from=reused):
            detail = f" val {val:.4g}" if val is not None else ""
            detail += f": {short(reason)}" if reason and status != "ok" else ""
            detail += f" (recorded result of {reused}, not trained again)" if reused else ""
            return f"evaluation.completed {ev} {arch or '-'} {req} {status}{detail}"
        case m.ExplorationRequested(question=question):
            return f"exploration.requested: {short(question)}"
        case m.ExplorationStepped(step=step, status=status, output=output):
            return f"exploration.stepped step {step} {status}: {short(output)}"
        case m.ExplorationReported(steps=steps, report=report):
            return f"exploration.reported after {steps} steps: {short(report)}"
        case m.BatchSummarized(batch=batch, summary=summary):
            return f"batch.summarized batch {batch}: {short(summary)}"
        case m.PhaseStopped(phase=phase, reason=reason, arch_ids=ids):
            what = f"full training of the top {len(ids)}: {', '.join(ids)}" if ids else "nothing to train fully"
            return f"phase.stopped phase {phase} ({reason}): {what}"
        case m.SeedSelected(arch_id=arch, val_metric=val):
            return f"seed.selected {arch} val {val:.4g}"
        case m.AgentOutputRejected(agent=agent, attempts=n, reason=reason):
            return f"agent.output_rejected {agent} after {n} attempts: {short(reason)}"
        case m.LlmRequested(call_id=call_id, agent=agent, model=model):
            return f"llm.requested call #{calls.get(call_id, '?')} by {agent} ({model})"
        case m.LlmResponded(call_id=call_id, agent=agent, error=error, output_tokens=out):
            failed = f" error: {short(error)}" if error else f", {out} tokens out"
            return f"llm.responded call #{calls.get(call_id, '?')} by {agent}{failed}"
        case m.AgentStarted(role=role, pid=pid, host=host):
            return f"agent.started {role} (pid {pid} on {host})"
        case m.ServiceExited(service=service, returncode=code, uptime_s=up):
            return f"service.exited {service} with code {code} after {up:.1f} s"
        case m.PhaseStarted(phase=stage):
            return f"phase.started: {STAGES.get(stage, stage)}"
        case m.ModularizerFinished(outcome=outcome, reason=reason, attempts=n):
            return f"modularizer.finished {outcome} after {n} rewrites: {short(reason)}"
        case m.SlotPlanProposed(plan=plan, space=space, notes=notes):
            pending = sum(1 for slot in space.slots for a in slot.alternatives[1:] if not a.source)
            return (f"slot_plan.proposed plan {plan}: {len(space.slots)} slots, "
                    f"{sum(len(slot.alternatives) for slot in space.slots)} choices ({pending} to write)"
                    + (f"; {short('; '.join(notes))}" if notes else ""))
        case m.AlternativeImplemented(slot=slot, index=k, attempts=n):
            return f"alternative.implemented {slot}[{k}] (attempts {n})"
        case m.AlternativeDropped(slot=slot, index=k, reason=reason):
            return f"alternative.dropped {slot}[{k}]: {short(reason)}"
        case m.SpaceAccepted(plan=plan, space=space, size=size):
            return f"space.accepted plan {plan}: {len(space.slots)} slots, {size:,} configurations"
        case m.SpaceRejected(plan=plan, reason=reason):
            return f"space.rejected plan {plan}: {short(reason, 200)}"
        case m.ConfigurationsProposed(algorithm=algorithm, proposals=proposals):
            ids = ", ".join(f"{p.config_id} ({p.origin})" for p in proposals[:4])
            more = f" and {len(proposals) - 4} more" if len(proposals) > 4 else ""
            return f"configurations.proposed by {algorithm}: {ids}{more}"
        case m.EvaluationInterrupted(reason=reason, retry_in_s=delay):
            return f"evaluation.interrupted {ev}: {short(reason)}; retried in {delay:g} s"
        case m.UncleanShutdown(pid=pid):
            return f"system.unclean_shutdown: the previous agentnas (pid {pid}) was killed, not stopped"
        case m.UnknownPayload(kind=kind):
            return f"{kind} (unknown kind)"
    fields = msgspec.structs.asdict(env.payload) if isinstance(env.payload, msgspec.Struct) else {}
    fields.pop("kind", None)
    shown = " ".join(f"{k}={short(v, 30)}" for k, v in list(fields.items())[:4])
    return f"{env.kind} {shown}".rstrip()


def _local_id(env: m.Envelope) -> str:
    """An evaluation's id without the run id it starts with (the line is about that run)."""
    eval_id = getattr(env.payload, "eval_id", "")
    prefix = f"{env.run_id}-"
    return eval_id[len(prefix):] if isinstance(eval_id, str) and eval_id.startswith(prefix) else eval_id


def _summary_text(summary: dict[str, Any]) -> str:
    return ", ".join(f"{k} {metric(v) if isinstance(v, float) else short(v, 40)}" for k, v in summary.items())
