"""The one place that builds evaluation requests and their ids.

An eval id names the run, the architecture and what is asked, so it is the same in the
original run, after a restart and in a re-execution: a request published twice is one
request (JetStream's duplicate window, the log's unique id, the trainers' results bucket).
"""

from __future__ import annotations

from typing import Any

from agentnas.bus import messages as m
from agentnas.store.state import RunState

FULL = ("final_wave1", "final_wave2")


def eval_id(run_id: str, arch_id: str, request: str, attempt: int = 0) -> str:
    """`<run>-<arch>-v<n>` for the n-th validation, `<run>-<arch>-proxy`, `<run>-<arch>-wave1` ..."""
    suffix = {"validate": f"v{attempt}", "equivalence": f"eq{attempt}", "final_wave1": "wave1",
              "final_wave2": "wave2"}.get(request, request)
    return f"{run_id}-{arch_id}-{suffix}"


def caps_for(state: RunState, request: str) -> m.Caps:
    proxy = state.settings.proxy
    if request in FULL:
        return m.Caps(time_s=proxy.full_time_cap_s, memory_mb=proxy.memory_cap_mb)
    if request in ("validate", "equivalence"):  # a cap on the whole job, in wall-clock seconds
        return m.Caps(time_s=proxy.validate_time_cap_s, memory_mb=proxy.memory_cap_mb)
    return m.Caps(time_s=proxy.time_cap_s, memory_mb=proxy.memory_cap_mb)


def evaluation(state: RunState, *, arch_id: str, request: m.EvalKind, source: str, recipe: dict[str, Any] | str,
               phase: int, attempt: int = 0, **extra: Any) -> m.EvaluationRequested:
    """An evaluation request of this run: its id, task, caps and seed come from the run's settings;
    `extra` sets the fields of particular kinds (reference_source, equivalence, space, gdas)."""
    settings = state.settings
    return m.EvaluationRequested(
        eval_id=eval_id(state.run_id, arch_id, request, attempt), request=request, task=settings.task_ref,
        model_source=source, recipe=recipe, caps=caps_for(state, request), seed=settings.seed, arch_id=arch_id,
        phase=phase, **extra)
