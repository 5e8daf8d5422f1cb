"""Time, device time, evaluations, tokens and cost per stage of the pipeline ("1" ... "final").

A stage begins with `phase.started` (Phase 1 with the run itself) and lasts until the next
one or the run's end; what happens meanwhile is charged to it.
"""

from __future__ import annotations

import msgspec

from agentnas.bus import messages as m


class Costs(msgspec.Struct, frozen=True, kw_only=True):
    current: str = ""
    since: float = 0.0
    stages: dict[str, m.PhaseCost] = {}

    def table(self, until: float) -> list[m.PhaseCost]:
        """Per stage, the current one counted up to `until`."""
        rows = dict(self.stages)
        if self.current:
            row = rows.get(self.current, m.PhaseCost(phase=self.current))
            rows[self.current] = msgspec.structs.replace(row, wall_s=round(row.wall_s + max(0.0, until - self.since), 3))
        return list(rows.values())


def _charge(costs: Costs, **amounts: float) -> Costs:
    if not costs.current:
        return costs
    row = costs.stages.get(costs.current, m.PhaseCost(phase=costs.current))
    row = msgspec.structs.replace(row, **{k: getattr(row, k) + v for k, v in amounts.items()})
    return msgspec.structs.replace(costs, stages={**costs.stages, costs.current: row})


def _enter(costs: Costs, stage: str, at: float) -> Costs:
    if costs.current:
        costs = _charge(costs, wall_s=max(0.0, at - costs.since))
    return msgspec.structs.replace(costs, current=stage, since=at)


def fold_costs(costs: Costs, env: m.Envelope, *, first_phase: str = "") -> Costs:
    match env.payload:
        case m.RunRequested() if first_phase and not costs.current:
            return _enter(costs, first_phase, env.time)
        case m.PhaseStarted(phase=stage) if stage != costs.current:
            return _enter(costs, stage, env.time)
        case m.RunFinished() | m.RunFailed() if costs.current:
            costs = _charge(costs, wall_s=max(0.0, env.time - costs.since))
            return msgspec.structs.replace(costs, current="", since=env.time)
        case m.EvaluationCompleted(device_time_s=device):
            return _charge(costs, device_s=device, evaluations=1)
        case m.LlmResponded(input_tokens=i, output_tokens=o, cost_usd=cost):
            return _charge(costs, input_tokens=i, output_tokens=o, cost_usd=cost)
    return costs
