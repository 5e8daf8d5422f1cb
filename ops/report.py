"""`agentnas report RUN`: a Markdown report of how the run found its network, with PNG figures.

Everything comes from the run's folded state (store/state), so a report can be written for
any run in the log, finished or not:
- best-so-far validation metric against evaluations used, Phase 1 and Phase 3 apart;
- metric against parameters and against FLOPs for every candidate, the Pareto front marked;
- the winner's slot choices against the seed's;
- a leaderboard, and time, device-hours, tokens and cost per stage.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import msgspec

from agentnas.bus import space as sp
from agentnas.ops.result import METRIC_WORDS, metric_text
from agentnas.store.state import EvalRecord, RunState

PHASE_COLOURS = {1: "#1f77b4", 3: "#d62728"}


class Point(msgspec.Struct, frozen=True, kw_only=True):
    """One candidate's proxy result."""

    arch_id: str
    phase: int
    val_metric: float
    params: int | None
    flops: int | None
    order: float  # completion time: the x axis of the best-so-far curve counts these in order


def points(state: RunState) -> list[Point]:
    found = [Point(arch_id=r.arch_id, phase=r.phase, val_metric=r.val_metric, params=r.params, flops=r.flops,
                   order=r.completed_at or 0.0)
             for r in state.evals.records.values() if r.request == "proxy" and r.succeeded]
    return sorted(found, key=lambda p: p.order)


def best_so_far(state: RunState) -> dict[int, list[tuple[int, float]]]:
    """Per phase, (evaluations used in the run, best validation so far), counting failures too."""
    proxies = sorted((r for r in state.evals.records.values() if r.request == "proxy" and r.done),
                     key=lambda r: r.completed_at or 0.0)
    curves: dict[int, list[tuple[int, float]]] = {}
    best: dict[int, float] = {}
    for used, record in enumerate(proxies, 1):
        if record.succeeded and record.val_metric < best.get(record.phase, math.inf):
            best[record.phase] = record.val_metric
        if record.phase in best:
            curves.setdefault(record.phase, []).append((used, best[record.phase]))
    return curves


def pareto(items: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (smaller is better on both)."""
    front = []
    for i, (x, y) in enumerate(items):
        if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(items) if j != i):
            front.append(i)
    return front


def _axes():
    """A figure and its axes, drawn off screen (matplotlib is imported only for a report)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, 4.0))


def _save(fig, ax, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _figure_best(state: RunState, path: Path, metric: str) -> bool:
    curves = best_so_far(state)
    if not curves:
        return False
    fig, ax = _axes()
    for phase, curve in sorted(curves.items()):
        xs, ys = zip(*curve)
        ax.step(xs, ys, where="post", color=PHASE_COLOURS.get(phase, "grey"), label=f"Phase {phase}")
    ax.set_xlabel("evaluations used (proxy runs, failures included)")
    ax.set_ylabel(f"best validation {METRIC_WORDS.get(metric, (metric, ''))[0]} so far (lower is better)")
    _save(fig, ax, path)
    return True


def _figure_cost(state: RunState, path: Path, metric: str, field: str, label: str) -> bool:
    found = [p for p in points(state) if getattr(p, field)]
    if not found:
        return False
    xy = [(float(getattr(p, field)), p.val_metric) for p in found]
    front = set(pareto(xy))
    fig, ax = _axes()
    for phase in sorted({p.phase for p in found}):
        chosen = [(x, y) for (x, y), p in zip(xy, found) if p.phase == phase]
        ax.scatter(*zip(*chosen), s=18, alpha=0.7, color=PHASE_COLOURS.get(phase, "grey"), label=f"Phase {phase}")
    line = sorted(xy[i] for i in front)
    ax.plot(*zip(*line), color="black", linewidth=1, marker="o", markerfacecolor="none", label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel(f"proxy validation {METRIC_WORDS.get(metric, (metric, ''))[0]} (lower is better)")
    _save(fig, ax, path)
    return True


def _leaderboard(state: RunState, metric: str, size: int = 15) -> list[str]:
    rows = ["| rank | architecture | phase | request | validation | parameters | FLOPs/sample |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    board: list[EvalRecord] = state.evals.leaderboard(size)
    for i, r in enumerate(board, 1):
        rows.append(f"| {i} | {r.arch_id} | {r.phase} | {r.request} | {metric_text(metric, r.val_metric)} | "
                    f"{_number(r.params)} | {_number(r.flops)} |")
    return rows


def _finalists(state: RunState, metric: str) -> list[str]:
    """Every architecture fully trained: wave-1 validation (what chose) beside wave-2 test."""
    result = state.result
    if result is None or not result.finalists:
        return []
    rows = ["| architecture | phase | wave-1 validation | wave-2 test | parameters |", "| --- | --- | --- | --- | --- |"]
    for f in result.finalists:
        name = f"**{f.arch_id}**" if f.arch_id == result.winner.arch_id else f.arch_id
        rows.append(f"| {name} | {f.phase} | {metric_text(metric, f.val_metric)} | "
                    f"{metric_text(metric, f.test_metric) if f.test_metric is not None else '- (no wave 2)'} | "
                    f"{_number(f.params)} |")
    return ["## Full training (every finalist)", "", *rows, ""]


def _number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _choices(state: RunState) -> list[str]:
    accepted, result = state.space.accepted, state.result
    if accepted is None or result is None or not result.winner.config_key:
        return []
    space = accepted.space
    config = sp.configuration_from_key(space, result.winner.config_key)
    seed = sp.seed_configuration(space)
    rows = ["| slot | the seed's choice | the winner's choice |", "| --- | --- | --- |"]
    for slot, k_seed, k_won in zip(space.slots, seed.choices, config.choices):
        mark = "" if k_seed == k_won else " **(changed)**"
        rows.append(f"| {slot.name} | {slot.alternatives[k_seed].description} | "
                    f"{slot.alternatives[k_won].description}{mark} |")
    rows.append(f"| learning rate | x{space.lr_multipliers[seed.lr_index]:g} | "
                f"x{space.lr_multipliers[config.lr_index]:g} |")
    return rows


def _stages(state: RunState) -> list[str]:
    rows = ["| stage | wall-clock | device-hours | evaluations | LLM tokens (in / out) | cost |",
            "| --- | --- | --- | --- | --- | --- |"]
    table = state.result.phases if state.result else state.costs.table(until=state.last_time)
    for p in table:
        rows.append(f"| {p.phase} | {p.wall_s / 60:.1f} min | {p.device_s / 3600:.4f} | {p.evaluations} | "
                    f"{p.input_tokens:,} / {p.output_tokens:,} | ${p.cost_usd:.4f} |")
    return rows


def write_report(state: RunState, out: Path) -> Path:
    """Write report.md and its figures into `out`; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    metric = state.settings.task.metric if state.settings else ""
    lines = [f"# Run {state.run_id}", ""]
    if state.settings:
        task = state.settings.task
        lines += [f"Task `{task.name}` ({'x'.join(map(str, task.input_shape))} -> "
                  f"{'x'.join(map(str, task.output_shape))}, loss {task.loss}, metric {metric}, lower is better); "
                  f"phases {', '.join(map(str, state.settings.phases))}; status **{state.status}**"
                  + (f" ({state.failure})" if state.failure else "") + ".", ""]
    if state.result:
        w = state.result.winner
        lines += ["## Result", "",
                  f"Winner **{w.arch_id}** (Phase {w.phase}): test {metric_text(metric, w.test_metric)} "
                  f"(wave 2, trained on train+valid), wave-1 validation {metric_text(metric, w.val_metric)}, "
                  f"{w.params or '?'} parameters, {w.flops or '?'} FLOPs per sample.", "",
                  f"Chosen by: {state.result.rule}.", ""]
        if state.result.seed:
            s = state.result.seed
            lines += [f"The seed {s.arch_id} (Phase {s.phase}): test {metric_text(metric, s.test_metric)}, "
                      f"wave-1 validation {metric_text(metric, s.val_metric)}.", ""]
    figures = [("best_so_far.png", "Best validation metric so far against evaluations used",
                lambda p: _figure_best(state, p, metric)),
               ("metric_vs_params.png", "Validation metric against parameters (Pareto front marked)",
                lambda p: _figure_cost(state, p, metric, "params", "parameters")),
               ("metric_vs_flops.png", "Validation metric against FLOPs per sample (Pareto front marked)",
                lambda p: _figure_cost(state, p, metric, "flops", "FLOPs per sample"))]
    for name, title, draw in figures:
        if draw(out / name):
            lines += [f"## {title}", "", f"![{title}]({name})", ""]
    choices = _choices(state)
    if choices:
        lines += ["## The winner's slot choices against the seed's", "", *choices, ""]
    if state.space.accepted:
        accepted = state.space.accepted
        lines += [f"The searched space has {len(accepted.space.slots)} slots and {accepted.size:,} configurations"
                  + (f" ({'; '.join(accepted.notes)})" if accepted.notes else "") + ".", ""]
    lines += _finalists(state, metric)
    lines += ["## Leaderboard (proxy and wave-1 validation)", "", *_leaderboard(state, metric), "",
              "## Time and cost per stage", "", *_stages(state), "",
              f"_Written {time.strftime('%Y-%m-%d %H:%M:%S')} from the event log by `agentnas report`._", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
