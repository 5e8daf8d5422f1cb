"""`agentnas audit RUN`: a run's LLM decision log, one call after another, readably.

Every LLM call is a pair of events (`llm.requested`, `llm.responded`) joined by
`call_id`. A call's effects are the events whose causation chain leads back to its
response (or to its request, for agents that cite the request). Records are built first
(`audit_records`, plain data, testable) and printed second (`render_audit`).

Repetition is collapsed without losing anything: an agent's system prompt is printed
once and then only when it changes, and the messages a call shares with the same
agent's previous call are named ("as in call #K") instead of printed again. Long
contents are elided in the middle unless `full` is set.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import msgspec
from rich.console import Console
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from agentnas.bus import messages as m
from agentnas.ops.describe import describe
from agentnas.store.log import EventLog

DEFAULT_WIDTH = 1200  # characters kept of one message or answer without --full
MAX_DEPTH = 4  # levels of the causation tree listed under a call
MAX_CAUSED = 40  # lines listed under one call; the rest are counted
# Listed nowhere (noise), though their descendants still are.
_QUIET = {"evaluation.progress", "agent.heartbeat"}


class AuditError(ValueError):
    """A bad audit request (unknown run or agent); the message is one line."""


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One LLM call of a run: request, answer, usage and what it caused."""

    index: int  # 1-based position among the run's calls, stable under --agent
    call_id: str
    agent: str
    provider: str
    model: str
    template: str
    messages: list[dict[str, Any]]
    parameters: dict[str, Any] = {}
    answer: str = ""
    stop_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    error: str = ""
    answered: bool = False  # False: a request with no recorded response (in flight or lost)
    time: float = 0.0  # of the request
    cause: str = ""  # one line: the event that led to the call
    caused: list[str] = []  # one line per event, indented two spaces per level below the first


class AgentTotals(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    calls: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_s: float


# --- records ---------------------------------------------------------------------------------


def audit_records(event_log: EventLog, run_id: str, agent: str | None = None) -> list[AuditRecord]:
    """Every LLM call of `run_id` in request order, optionally only `agent`'s."""
    if not event_log.run_exists(run_id):
        raise AuditError(f"run '{run_id}' does not exist in {event_log.path}")
    by_id: dict[str, m.Envelope] = {}
    children: dict[str, list[m.Envelope]] = defaultdict(list)
    requests: dict[str, m.Envelope] = {}  # call_id -> first llm.requested
    responses: dict[str, m.Envelope] = {}  # call_id -> first llm.responded
    order: list[str] = []  # call ids by first appearance (a lost request still shows)
    for env in event_log.events(run_id):
        by_id[env.id] = env
        if env.causation_id:
            children[env.causation_id].append(env)
        match env.payload:
            case m.LlmRequested(call_id=call_id) if call_id not in requests:
                requests[call_id] = env
                if call_id not in responses:
                    order.append(call_id)
            case m.LlmResponded(call_id=call_id) if call_id not in responses:
                responses[call_id] = env
                if call_id not in requests:
                    order.append(call_id)
    number = {call_id: i for i, call_id in enumerate(order, 1)}
    records = [
        _record(number[c], requests.get(c), responses.get(c), by_id, children, number) for c in order
    ]
    if agent is None:
        return records
    present = sorted({r.agent for r in records})
    if agent not in present:
        raise AuditError(
            f"agent '{agent}' made no LLM calls in run '{run_id}' "
            f"(agents present: {', '.join(present) or 'none'})"
        )
    return [r for r in records if r.agent == agent]


def _record(
    index: int,
    req_env: m.Envelope | None,
    resp_env: m.Envelope | None,
    by_id: dict[str, m.Envelope],
    children: dict[str, list[m.Envelope]],
    number: dict[str, int],
) -> AuditRecord:
    req = req_env.payload if req_env else None
    resp = resp_env.payload if resp_env else None
    assert req is not None or resp is not None
    roots = [e for e in (resp_env, req_env) if e is not None]
    skip = {e.id for e in roots}
    cause = ""
    if req_env is not None and req_env.causation_id:
        parent = by_id.get(req_env.causation_id)
        cause = describe(parent, number) if parent else f"event {req_env.causation_id} (not in this run)"
    return AuditRecord(
        index=index,
        call_id=req.call_id if req else resp.call_id,
        agent=req.agent if req else resp.agent,
        provider=req.provider if req else "?",
        model=req.model if req else "?",
        template=req.template if req else "",
        messages=list(req.messages) if req else [],
        parameters=dict(req.parameters) if req else {},
        answer=resp.content if resp else "",
        stop_reason=resp.stop_reason if resp else "",
        input_tokens=resp.input_tokens if resp else 0,
        output_tokens=resp.output_tokens if resp else 0,
        latency_s=resp.latency_s if resp else 0.0,
        cost_usd=resp.cost_usd if resp else 0.0,
        error=resp.error if resp else "",
        answered=resp is not None,
        time=(req_env or resp_env).time,  # type: ignore[union-attr]
        cause=cause,
        caused=_caused(roots, skip, children, number),
    )


def _caused(
    roots: list[m.Envelope],
    skip: set[str],
    children: dict[str, list[m.Envelope]],
    number: dict[str, int],
) -> list[str]:
    """Descendants of the call's events, depth first in log order. Another LLM call is
    listed but not descended into: its own record shows what it caused."""
    lines: list[str] = []
    hidden = 0
    seen = set(skip)

    def walk(parent_id: str, depth: int) -> None:
        nonlocal hidden
        for env in children.get(parent_id, ()):
            if env.id in seen:
                continue
            seen.add(env.id)
            shown = env.kind not in _QUIET
            if shown:
                if len(lines) < MAX_CAUSED:
                    lines.append("  " * (depth - 1) + describe(env, number))
                else:
                    hidden += 1
            if depth < MAX_DEPTH and not isinstance(env.payload, (m.LlmRequested, m.LlmResponded)):
                walk(env.id, depth + 1 if shown else depth)

    for root in roots:
        walk(root.id, 1)
    if hidden:
        lines.append(f"... and {hidden} more events")
    return lines


def agent_totals(records: Iterable[AuditRecord]) -> list[AgentTotals]:
    """Per agent, in order of first call: calls, errors, tokens, cost, latency."""
    acc: dict[str, list[float]] = {}
    for r in records:
        a = acc.setdefault(r.agent, [0, 0, 0, 0, 0.0, 0.0])
        a[0] += 1
        a[1] += 1 if r.error else 0
        a[2] += r.input_tokens
        a[3] += r.output_tokens
        a[4] += r.cost_usd
        a[5] += r.latency_s
    return [
        AgentTotals(agent=name, calls=int(a[0]), errors=int(a[1]), input_tokens=int(a[2]),
                    output_tokens=int(a[3]), cost_usd=a[4], latency_s=a[5])
        for name, a in acc.items()
    ]


# --- printing --------------------------------------------------------------------------------


def elide(text: str, width: int = DEFAULT_WIDTH) -> str:
    """Keep the head and the tail of `text`, at most `width` characters in all."""
    if width <= 0 or len(text) <= width:
        return text
    head = width // 2
    tail = width - head
    gone = len(text) - width
    return f"{text[:head]}\n[... {gone} characters elided; --full shows them ...]\n{text[-tail:]}"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p if isinstance(p, str) else json.dumps(p, default=str) for p in content)
    return json.dumps(content, default=str)


def _block(console: Console, text: str, indent: int, style: str = "") -> None:
    """Print `text` indented, cut at the console's width; characters are kept exactly
    (code stays copyable) and no line gets trailing padding."""
    room = max(20, console.width - indent)
    pad = " " * indent
    for line in text.split("\n"):
        line = line.rstrip()
        chunks = [line[i : i + room] for i in range(0, len(line), room)] or [""]
        for chunk in chunks:
            console.print(Text(pad + chunk, style=style), soft_wrap=True, highlight=False)


def _role(message: dict[str, Any]) -> str:
    role = str(message.get("role", "?"))
    source = message.get("source")
    return f"{role} ({source})" if source and source != role else role


def render_audit(
    event_log: EventLog,
    run_id: str,
    *,
    agent: str | None,
    full: bool,
    console: Console,
    width: int = DEFAULT_WIDTH,
) -> None:
    """Print the decision log of `run_id` (only `agent`'s calls if given)."""
    records = audit_records(event_log, run_id, agent)
    if not records:
        console.print(f"no LLM calls in run {run_id}", highlight=False, markup=False)
        return
    limit = 0 if full else width
    who = f" by {agent}" if agent else ""
    console.print(Text(f"LLM decision log of run {run_id}: {len(records)} calls{who}", style="bold"))
    last_system: dict[str, tuple[str, int]] = {}  # agent -> (system prompt, call shown in)
    last_messages: dict[str, tuple[list[dict[str, Any]], int]] = {}
    for record in records:
        _render_record(console, record, limit, last_system, last_messages)
    _render_totals(console, records)


def _render_record(
    console: Console,
    r: AuditRecord,
    limit: int,
    last_system: dict[str, tuple[str, int]],
    last_messages: dict[str, tuple[list[dict[str, Any]], int]],
) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(r.time))
    template = f"  template {r.template}" if r.template else ""
    console.print()
    title = f"call #{r.index}  {r.agent}  {r.provider}/{r.model}{template}  {stamp}"
    console.print(Rule(Text(title), align="left"))
    replayed = r.parameters.get("replayed_call_id")
    if replayed:
        console.print(Text(f"replayed from recorded call {replayed}", style="dim"))
    if r.cause:
        console.print(Text(f"asked after: {r.cause}", style="dim"))

    previous, prev_index = last_messages.get(r.agent, ([], 0))
    shared = 0
    while shared < min(len(previous), len(r.messages)) and previous[shared] == r.messages[shared]:
        shared += 1
    if all(msg.get("role") == "system" for msg in r.messages[:shared]):
        shared = 0  # only the system prompt repeats: say so below, in the system prompt's words
    if shared:
        span = "message 1" if shared == 1 else f"messages 1-{shared}"
        console.print(Text(f"{span} as in call #{prev_index}", style="dim"))
    for message in r.messages[shared:]:
        text = _content_text(message.get("content", ""))
        if message.get("role") == "system":
            seen = last_system.get(r.agent)
            if seen and seen[0] == text:
                console.print(Text(f"system: unchanged since call #{seen[1]}", style="dim"))
                continue
            last_system[r.agent] = (text, r.index)
        console.print(Text(_role(message) + ":", style="bold cyan"))
        _block(console, elide(text, limit), 4)
        if message.get("thought"):
            _block(console, "thought: " + elide(str(message["thought"]), limit), 4, style="dim")
    last_messages[r.agent] = (r.messages, r.index)

    if not r.answered:
        console.print(Text("no response recorded (the call was in flight or its answer was lost)", style="yellow"))
    elif r.error:
        console.print(Text(f"error: {r.error}", style="bold red"))
    else:
        stop = f" (stop: {r.stop_reason})" if r.stop_reason else ""
        console.print(Text(f"answer{stop}:", style="bold green"))
        _block(console, elide(r.answer, limit), 4)
    if r.answered and (r.input_tokens or r.output_tokens or not r.error):
        console.print(
            Text(
                f"tokens in {r.input_tokens:,} out {r.output_tokens:,}   "
                f"latency {r.latency_s:.2f} s   cost ${r.cost_usd:.4f}"
            )
        )
    if r.caused:
        console.print(Text("caused:", style="bold"))
        for line in r.caused:
            _block(console, line, 2)


def _render_totals(console: Console, records: list[AuditRecord]) -> None:
    totals = agent_totals(records)
    table = Table("agent", "calls", "errors", "tokens in", "tokens out", "cost", "latency", title="totals")
    for t in totals:
        table.add_row(t.agent, str(t.calls), str(t.errors), f"{t.input_tokens:,}", f"{t.output_tokens:,}",
                      f"${t.cost_usd:.4f}", f"{t.latency_s:.1f} s")
    if len(totals) > 1:
        table.add_row(
            "all", str(sum(t.calls for t in totals)), str(sum(t.errors for t in totals)),
            f"{sum(t.input_tokens for t in totals):,}", f"{sum(t.output_tokens for t in totals):,}",
            f"${sum(t.cost_usd for t in totals):.4f}", f"{sum(t.latency_s for t in totals):.1f} s",
            style="bold",
        )
    console.print()
    console.print(table)
