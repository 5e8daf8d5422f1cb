"""How events and folded state look in a terminal."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentnas.bus.health import faults
from agentnas.ops.describe import describe
from agentnas.ops.home import read_bus_file
from agentnas.ops.result import metric_text
from agentnas.store.log import Row, row_to_envelope
from agentnas.store.state import RunState

def event_line(row: Row) -> str:
    """`events`: sequence number, time, sender and the event described (ops/describe.py)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(row.time)) + f".{int(row.time * 1000) % 1000:03d}"
    sender = json.loads(row.sender)
    env = row_to_envelope(row)
    return f"{row.seq:>7} {stamp} ({sender.get('agent', '?')}) {escape(describe(env))}"


def render_state(console: Console, state: RunState, *, interrupted: bool = False, home: Path | None = None) -> None:
    shown = "interrupted" if interrupted else state.status
    console.print(f"[bold]run {state.run_id}[/bold]: {shown}" + (f" ({escape(state.failure)})" if state.failure else ""))
    if interrupted:
        where = f" --home {home}" if home else ""
        console.print(f"its processes are not running; continue it with `agentnas{where} run --resume {state.run_id}` "
                      f"(or `agentnas{where} up`)", highlight=False)
    if state.result is not None:
        w = state.result.winner
        console.print(f"result: {w.arch_id} (Phase {w.phase}), test {metric_text(state.result.metric, w.test_metric)}, "
                      f"wave-1 validation {metric_text(state.result.metric, w.val_metric)} (lower is better)",
                      highlight=False)
    if state.task:
        console.print(f"task {state.task}, phases {', '.join(map(str, state.phases))}")
    evals = state.evals
    console.print(
        f"events {state.n_events}; evaluations requested {len(evals.records)}, "
        f"running {len(evals.in_flight)}, queued {len(evals.queued)}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(evals.by_status.items())) + ")" if evals.by_status else "")
    )
    phase1 = state.phase1
    if state.settings is not None and state.settings.runs_phase(1) and (phase1.archs or phase1.explorations):
        s = state.settings.phase1
        best = "-" if phase1.best_proxy is None else f"{phase1.best_proxy:.4g}"
        console.print(
            f"phase 1: budget {phase1.budget_used}/{s.budget}, ok {phase1.successes}, "
            f"failed {phase1.budget_used - phase1.successes}, patience {phase1.since_improvement}/{s.patience}, "
            f"best proxy {best}")
        if phase1.stopped:
            console.print(f"phase 1 stopped: {phase1.stopped.reason}")
        if phase1.seed:
            console.print(f"seed: {phase1.seed.arch_id} (wave-1 validation {phase1.seed.val_metric:.4g})")
    llm = state.llm
    if llm.calls:
        console.print(
            f"LLM calls {llm.calls} (errors {llm.errors}), tokens in {llm.input_tokens} "
            f"out {llm.output_tokens}, cost ${llm.cost_usd:.4f}"
        )
    board = evals.leaderboard()
    if board:
        table = Table("rank", "arch", "phase", "request", "val metric", "params", title="leaderboard")
        for i, e in enumerate(board, 1):
            table.add_row(str(i), e.arch_id or e.eval_id, str(e.phase), e.request, f"{e.val_metric:.4g}",
                          str(e.params or "-"))
        console.print(table)
    space, found = state.space, state.search
    if space.modularized is not None:
        console.print(f"phase 1.5: {space.modularized.outcome} ({escape(space.modularized.reason)})", highlight=False)
    if space.plan is not None and space.accepted is None:
        total = sum(len(slot.alternatives) - 1 for slot in space.plan.space.slots)
        console.print(f"phase 2: plan {space.plans}, alternatives {len(space.implemented)} validated, "
                      f"{len(space.dropped)} dropped of {total}", highlight=False)
    if space.accepted is not None:
        console.print(f"space: {len(space.accepted.space.slots)} slots, {space.accepted.size:,} configurations",
                      highlight=False)
    if found.trials and state.settings is not None:
        s3 = state.settings.evolution
        console.print(f"phase 3 ({s3.algorithm}): budget {found.budget_used}/{s3.budget}, ok {found.successes}, "
                      f"patience {found.since_improvement}/{s3.patience}, best {metric_text('', found.best)}"
                      + (f"; stopped: {found.stopped.reason}" if found.stopped else ""), highlight=False)


def render_machinery(console: Console, home: Path, services: RunState | None, *, up: bool) -> None:
    """Faults of the machinery on this machine, and when each service was last heard of."""
    bus = read_bus_file(home)
    if up and bus is not None:
        console.print(f"system: up since {time.strftime('%H:%M:%S', time.localtime(bus.since))}, bus {bus.url}",
                      highlight=False)
    elif not up:
        console.print("system: not running on this home", highlight=False)
    for report in faults(home):
        since = time.strftime("%H:%M:%S", time.localtime(report.since))
        console.print(f"[red]paused[/red]: {report.service}: {escape(report.fault)} (since {since})", highlight=False)
    if services is not None and services.agents and up:
        now = time.time()
        table = Table("service", "instance", "status", "restarts", "last heard", title="services")
        latest: dict[str, object] = {}
        for agent in services.agents.values():  # the newest instance of each role
            if agent.role not in latest or agent.last_seen > latest[agent.role].last_seen:
                latest[agent.role] = agent
        for a in latest.values():
            table.add_row(a.role, a.instance, a.status, str(a.restarts), f"{now - a.last_seen:.0f} s ago")
        console.print(table)
