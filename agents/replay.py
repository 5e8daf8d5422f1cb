"""The replay provider: each agent's LLM answers served, in order, from a recorded run.

A source is a run in an agentnas SQLite event log (`replay:PATH#RUN`) or an exported JSONL
transcript, one recorded call per line: {"agent", "request": LlmRequested, "response":
LlmResponded}. Each served answer is checked against its recorded request: the messages'
roles and contents (source names, call ids, parameters and templates are ignored), and the
model when the call names one. A mismatch, or an agent asking for more answers than were
recorded, is a `ReplayDivergence` whose one-line message says which agent, which call and
the first differing message, with an excerpt of both sides.

A replaying client still records every call (agents/llm.py): provider "replay", the
recorded model and token counts, latency 0 and cost 0 (nothing was spent), and
`parameters["replayed_call_id"]` naming the original call, so a re-executed run has a
full log of its own.

Calls that failed in the recording (an `LlmResponded` with an error) are replayed as the
same failure; requests that never got an answer (the agent was killed) are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from agentnas.agents.llm_settings import LlmError
from agentnas.bus import messages as m
from agentnas.store.log import EventLog, LogError

EXCERPT_CHARS = 60
_SQLITE_MAGIC = b"SQLite format 3\x00"


class ReplayError(LlmError):
    """The recording cannot be read, or holds no LLM calls (one line)."""


class ReplayDivergence(LlmError):
    """The run asked something the recording did not (one line, saying where)."""


class RecordedCall(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    request: m.LlmRequested
    response: m.LlmResponded


_call_decoder = msgspec.json.Decoder(RecordedCall)
_encoder = msgspec.json.Encoder()


def recorded_calls(log: EventLog, run_id: str, agent: str | None = None) -> list[RecordedCall]:
    """A run's answered LLM calls in request order (optionally one agent's)."""
    requests: list[m.LlmRequested] = []
    responses: dict[str, m.LlmResponded] = {}
    for event in log.events(run_id, kinds=["llm.requested", "llm.responded"]):
        payload = event.payload
        if isinstance(payload, m.LlmRequested) and (agent is None or payload.agent == agent):
            requests.append(payload)
        elif isinstance(payload, m.LlmResponded):
            responses.setdefault(payload.call_id, payload)
    return [
        RecordedCall(agent=req.agent, request=req, response=responses[req.call_id])
        for req in requests
        if req.call_id in responses
    ]


def export_jsonl(log: EventLog | str | Path, run_id: str, out_path: str | Path) -> int:
    """Write a run's answered LLM calls as a JSONL transcript; returns how many."""
    owned = not isinstance(log, EventLog)
    source = EventLog(log, readonly=True) if owned else log
    try:
        if not source.run_exists(run_id):
            raise ReplayError(f"no run '{run_id}' in {source.path}")
        calls = recorded_calls(source, run_id)
    finally:
        if owned:
            source.close()
    with open(out_path, "wb") as out:
        for call in calls:
            out.write(_encoder.encode(call) + b"\n")
    return len(calls)


class ReplaySource:
    """Recorded calls grouped by agent, each agent with its own cursor."""

    def __init__(self, calls: Iterable[RecordedCall], origin: str = "recording", run_id: str = "") -> None:
        self.origin = origin
        self.run_id = run_id  # the recorded run, when the source is an event log
        self._by_agent: dict[str, list[RecordedCall]] = {}
        for call in calls:
            self._by_agent.setdefault(call.agent, []).append(call)
        self._served: dict[str, int] = {}
        self._taken: dict[str, set[int]] = {}

    # --- loading -----------------------------------------------------------------------

    @classmethod
    def from_spec(cls, path: str | Path, run_id: str | None = None) -> "ReplaySource":
        """An SQLite log (recognised by its header) or else a JSONL transcript."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise ReplayError(f"replay: cannot read {path} ({exc.strerror})") from None
        if head == _SQLITE_MAGIC:
            return cls.from_log(path, run_id)
        source = cls.from_jsonl(path)  # one line if it is not a transcript either
        if run_id:
            raise ReplayError(f"replay: {path} is a JSONL transcript; it has no runs to pick (drop '#{run_id}')")
        return source

    @classmethod
    def from_log(cls, path: str | Path, run_id: str | None = None) -> "ReplaySource":
        try:
            log = EventLog(path, readonly=True)
        except LogError as exc:
            raise ReplayError(f"replay: {exc}") from None
        with log:
            runs = [r.run_id for r in log.runs()]
            if run_id is None:
                with_calls = [r for r in runs if log.rows(r, kinds=["llm.requested"], limit=1)]
                if not with_calls:
                    raise ReplayError(f"replay: {path} holds no LLM calls")
                if len(with_calls) > 1:
                    raise ReplayError(
                        f"replay: {path} holds LLM calls of {len(with_calls)} runs"
                        f" ({', '.join(with_calls)}); pick one with replay:{path}#RUN"
                    )
                run_id = with_calls[0]
            elif run_id not in runs:
                raise ReplayError(f"replay: no run '{run_id}' in {path} (runs: {', '.join(runs) or 'none'})")
            calls = recorded_calls(log, run_id)
        if not calls:
            raise ReplayError(f"replay: run '{run_id}' in {path} has no answered LLM calls")
        return cls(calls, origin=f"{path}#{run_id}", run_id=run_id)

    @classmethod
    def from_jsonl(cls, path: str | Path) -> "ReplaySource":
        calls = []
        try:
            lines = Path(path).read_bytes().splitlines()
        except OSError as exc:
            raise ReplayError(f"replay: cannot read {path} ({exc.strerror})") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                calls.append(_call_decoder.decode(line))
            except msgspec.ValidationError as exc:
                raise ReplayError(f"replay: {path}:{number}: not a recorded LLM call ({exc})") from None
            except msgspec.DecodeError:
                if not calls:  # not even the first line is JSON: some other kind of file
                    raise ReplayError(f"replay: {path} is neither an agentnas event log (SQLite) nor a JSONL "
                                      "transcript of recorded LLM calls; expected an agentnas event log (SQLite) "
                                      "or a JSONL transcript") from None
                raise ReplayError(f"replay: {path}:{number}: not a JSON line (a JSONL transcript holds one "
                                  "recorded LLM call per line)") from None
        if not calls:
            raise ReplayError(f"replay: {path} holds no LLM calls")
        return cls(calls, origin=str(path))

    # --- serving -----------------------------------------------------------------------

    @property
    def calls(self) -> list[RecordedCall]:
        return [call for calls in self._by_agent.values() for call in calls]

    def agents(self) -> list[str]:
        return list(self._by_agent)

    def remaining(self, agent: str) -> int:
        return len(self._by_agent.get(agent, ())) - self._served.get(agent, 0)

    def serve(self, agent: str, messages: list[dict[str, Any]], model: str | None = None) -> RecordedCall:
        """The agent's next recorded call, if `messages` (and `model`, when given) match it."""
        recorded = self._by_agent.get(agent, [])
        taken = self._taken.setdefault(agent, set())
        number = len(taken) + 1
        where = f"replay diverged for agent '{agent}' at call {number}"
        waiting = [i for i in range(len(recorded)) if i not in taken]
        if not waiting:
            raise ReplayDivergence(
                f"{where}: the recording ({self.origin}) has only {len(recorded)} call(s) for this agent"
            )
        # An agent may work on several things at once (the Code Executor implements a batch
        # concurrently), so its calls can arrive in another order than recorded: serve the
        # first unserved recorded call with the same request; report against the next in order.
        for index in waiting:
            if not _difference(recorded[index].request, messages, model):
                taken.add(index)
                self._served[agent] = len(taken)
                return recorded[index]
        problem = _difference(recorded[waiting[0]].request, messages, model)
        raise ReplayDivergence(f"{where} of {len(recorded)}: {problem}")


def _text(message: dict[str, Any]) -> str:
    content = message.get("content", "")
    return content if isinstance(content, str) else json.dumps(content, sort_keys=True)


def _excerpt(text: str, at: int) -> str:
    start = max(0, at - EXCERPT_CHARS // 2)
    piece = text[start : start + EXCERPT_CHARS]
    return ("..." if start else "") + repr(piece)[1:-1] + ("..." if start + EXCERPT_CHARS < len(text) else "")


def _difference(request: m.LlmRequested, messages: list[dict[str, Any]], model: str | None) -> str:
    """'' when the request matches the recording; else where and how it differs."""
    if model and model != request.model:
        return f"model: recorded '{request.model}', actual '{model}'"
    recorded = request.messages
    for index, (old, new) in enumerate(zip(recorded, messages)):
        if old.get("role") != new.get("role"):
            return f"message {index}: role recorded '{old.get('role')}', actual '{new.get('role')}'"
        old_text, new_text = _text(old), _text(new)
        if old_text != new_text:
            at = next(
                (i for i, (a, b) in enumerate(zip(old_text, new_text)) if a != b),
                min(len(old_text), len(new_text)),
            )
            return (
                f"message {index} ({new.get('role')}) differs at character {at}:"
                f" recorded '{_excerpt(old_text, at)}' vs actual '{_excerpt(new_text, at)}'"
            )
    if len(recorded) != len(messages):
        index = min(len(recorded), len(messages))
        longer = recorded if len(recorded) > len(messages) else messages
        side = "recorded only" if longer is recorded else "new"
        return (
            f"recorded {len(recorded)} messages, actual {len(messages)};"
            f" message {index} ({side}): '{_excerpt(_text(longer[index]), 0)}'"
        )
    return ""
