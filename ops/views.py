"""How events and folded state look in a terminal."""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.table import Table

from agentnas.store.log import Row
from agentnas.store.projection import RunState

_MAX_FIELD = 80


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= _MAX_FIELD else text[: _MAX_FIELD - 3] + "..."


def event_line(row: Row) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(row.time)) + f".{int(row.time * 1000) % 1000:03d}"
    sender = json.loads(row.sender)
    payload = json.loads(row.payload)
    payload.pop("kind", None)
    fields = " ".join(f"{k}={_short(v)}" for k, v in payload.items())
    return f"{row.seq:>7} {stamp} [bold]{row.kind}[/bold] ({sender.get('agent', '?')}) {fields}"


def render_state(console: Console, state: RunState) -> None:
    console.print(f"[bold]run {state.run_id}[/bold]: {state.status}" + (f" ({state.failure})" if state.failure else ""))
    if state.task:
        console.print(f"task {state.task}, phases {', '.join(map(str, state.phases))}")
    console.print(
        f"events {state.n_events}; evaluations requested {state.evals_requested}, "
        f"in flight {len(state.in_flight)}, completed {len(state.completed)}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(state.evals_by_status.items())) + ")" if state.evals_by_status else "")
    )
    for phase, c in sorted(state.phase_counters.items()):
        console.print(
            f"phase {phase}: budget used {c.budget_used}, ok {c.successes}, failed {c.failures}, "
            f"since improvement {c.since_improvement}, best " + ("-" if c.best_val is None else f"{c.best_val:.4g}")
        )
    if state.stopped:
        console.print(f"search stopped: {state.stopped}")
    if state.seed_arch:
        console.print(f"seed: {state.seed_arch} (wave-1 validation {state.seed_val_metric:.4g})")
    if state.llm_calls:
        console.print(
            f"LLM calls {state.llm_calls} (errors {state.llm_errors}), tokens in {state.input_tokens} "
            f"out {state.output_tokens}, cost ${state.cost_usd:.4f}"
        )
    if state.leaderboard:
        table = Table("rank", "arch", "phase", "request", "val metric", "params", title="leaderboard")
        for i, e in enumerate(state.leaderboard, 1):
            table.add_row(str(i), e.arch_id or e.eval_id, str(e.phase), e.request, f"{e.val_metric:.4g}", str(e.params or "-"))
        console.print(table)
    if state.agents:
        table = Table("agent", "instance", "status", "restarts", "last seen", title="agents")
        for a in state.agents.values():
            table.add_row(a.role, a.instance, a.status, str(a.restarts), time.strftime("%H:%M:%S", time.localtime(a.last_seen)))
        console.print(table)
