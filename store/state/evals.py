"""The evaluations section of a run's state: every evaluation from request to result.

Shared by every phase: a phase section knows which evaluations are its own (by arch id or
eval id) and reads their outcome here or from the completed event itself. Progress is
kept too (the latest epoch and validation metric), for the terminal and the dashboard.
"""

from __future__ import annotations

import math

import msgspec

from agentnas.bus import messages as m


class EvalRecord(msgspec.Struct, frozen=True, kw_only=True):
    eval_id: str
    arch_id: str = ""
    request: str = ""
    phase: int = 1
    requested_at: float = 0.0
    started_at: float | None = None
    status: str = ""  # "" until completed; then ok | rejected | oom | timeout | error
    reason: str = ""
    epoch: int = 0  # latest progress
    epochs: int = 0
    progress_metric: float | None = None
    val_metric: float | None = None
    test_metric: float | None = None
    params: int | None = None
    flops: int | None = None
    device_time_s: float = 0.0
    wall_time_s: float = 0.0
    weights_path: str = ""
    completed_at: float | None = None
    choices: tuple[int, ...] | None = None  # gdas: the argmax configuration

    @property
    def done(self) -> bool:
        return bool(self.status)

    @property
    def succeeded(self) -> bool:
        """ok with a finite validation metric: the only result that may count as a success.

        (A trainer never reports ok with a non-finite metric; a log that holds one is treated
        as a failure everywhere, so budget and patience agree in every view.)"""
        return self.status == "ok" and self.val_metric is not None and math.isfinite(self.val_metric)


class Evaluations(msgspec.Struct, frozen=True, kw_only=True):
    records: dict[str, EvalRecord] = {}
    by_status: dict[str, int] = {}

    @property
    def in_flight(self) -> list[EvalRecord]:
        return [r for r in self.records.values() if r.started_at is not None and not r.done]

    @property
    def queued(self) -> list[EvalRecord]:
        return [r for r in self.records.values() if r.started_at is None and not r.done]

    def leaderboard(self, size: int = 10) -> list[EvalRecord]:
        """Successful proxy and wave-1 results, best first (every metric is an error)."""
        board = [r for r in self.records.values() if r.succeeded and r.request in ("proxy", "final_wave1")]
        return sorted(board, key=lambda r: (r.val_metric, r.eval_id))[:size]


def _put(section: Evaluations, record: EvalRecord, **changes) -> Evaluations:
    return msgspec.structs.replace(section, records={**section.records, record.eval_id: record}, **changes)


def fold_evals(section: Evaluations, env: m.Envelope) -> Evaluations:
    match env.payload:
        case m.EvaluationRequested(eval_id=eval_id, arch_id=arch_id, request=request, phase=phase):
            if eval_id in section.records:
                return section
            return _put(section, EvalRecord(eval_id=eval_id, arch_id=arch_id, request=request, phase=phase,
                                            requested_at=env.time))
        case m.EvaluationStarted(eval_id=eval_id):
            old = section.records.get(eval_id) or EvalRecord(eval_id=eval_id)
            if old.done or old.started_at is not None:
                return section
            return _put(section, msgspec.structs.replace(old, started_at=env.time))
        case m.EvaluationProgress(eval_id=eval_id, epoch=epoch, epochs=epochs, val_metric=val):
            old = section.records.get(eval_id)
            if old is None or old.done or epoch < old.epoch:
                return section
            return _put(section, msgspec.structs.replace(old, epoch=epoch, epochs=epochs, progress_metric=val,
                                                         started_at=old.started_at or env.time))
        case m.EvaluationCompleted() as done:
            old = section.records.get(done.eval_id) or EvalRecord(eval_id=done.eval_id, arch_id=done.arch_id,
                                                                   request=done.request, phase=done.phase)
            if old.done:
                return section  # a second completion of the same evaluation changes nothing
            record = msgspec.structs.replace(
                old, status=done.status, reason=done.reason, val_metric=done.val_metric,
                test_metric=done.test_metric, params=done.params, flops=done.flops,
                device_time_s=done.device_time_s, wall_time_s=done.wall_time_s, weights_path=done.weights_path,
                epoch=done.epochs_done or old.epoch, completed_at=env.time,
                choices=tuple(done.choices) if done.choices is not None else None)
            counts = {**section.by_status, done.status: section.by_status.get(done.status, 0) + 1}
            return _put(section, record, by_status=counts)
    return section
