"""How events and folded state look in a terminal."""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentnas.ops.describe import describe
from agentnas.store.log import Row, row_to_envelope
from agentnas.store.state import RunState

def event_line(row: Row) -> str:
    """`events`: sequence number, time, sender and the event described (ops/describe.py)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(row.time)) + f".{int(row.time * 1000) % 1000:03d}"
    sender = json.loads(row.sender)
    env = row_to_envelope(row)
    return f"{row.seq:>7} {stamp} ({sender.get('agent', '?')}) {escape(describe(env))}"


def render_state(console: Console, state: RunState) -> None:
    console.print(f"[bold]run {state.run_id}[/bold]: {state.status}" + (f" ({state.failure})" if state.failure else ""))
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
    if state.agents:
        table = Table("agent", "instance", "status", "restarts", "last seen", title="agents")
        for a in state.agents.values():
            table.add_row(a.role, a.instance, a.status, str(a.restarts), time.strftime("%H:%M:%S", time.localtime(a.last_seen)))
        console.print(table)
