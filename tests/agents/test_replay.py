"""Replay: answers served from a recorded run (SQLite log or JSONL transcript), checked
against the recorded requests; divergences stop the run or hand over to a live provider."""

from __future__ import annotations

import json

import pytest
from autogen_core.models import AssistantMessage, SystemMessage, UserMessage

from agentnas.agents.llm import RecordingClient, make_client
from agentnas.agents.llm_settings import Ledger, LlmError, LlmSettings
from agentnas.agents.providers import preflight
from agentnas.agents.replay import (
    RecordedCall,
    ReplayDivergence,
    ReplayError,
    ReplaySource,
    export_jsonl,
    recorded_calls,
)
from agentnas.bus import messages as m
from agentnas.store.log import EventLog
from agentnas.ops.scripted_llm import scripted_llm

KEY_ENV = "AGENTNAS_TEST_LLM_KEY"
RUN = "run-1"
SYSTEM = "You plan experiments.\nagentnas-agent: planner"
TURNS = ["task: addigits", "batch 1 results: arch_001 val 0.12", "batch 2 results: arch_004 val 0.09"]
REPLIES = ["EXPLORE: how balanced are the classes?", "EXPERIMENT arch_001 ...", "STOP arch_004"]


class Events:
    def __init__(self) -> None:
        self.items: list[m.Kind] = []

    async def __call__(self, payload: m.Kind) -> None:
        self.items.append(payload)


class LogEmit:
    """An agent's emit that lands straight in an event log (the recorder's job in a run)."""

    def __init__(self, log: EventLog, run_id: str, agent: str) -> None:
        self.log, self.run_id, self.agent = log, run_id, agent

    async def __call__(self, payload: m.Kind) -> None:
        self.log.append([m.make_event(payload, run_id=self.run_id, sender=m.Sender(agent=self.agent))])


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "test-key")


def live_settings(server, **changes) -> LlmSettings:
    return LlmSettings(base_url=server.base_url, api_key_env=KEY_ENV, backoff_s=0.01, **changes)


async def planner_session(client: RecordingClient, turns: list[str] = TURNS) -> list[str]:
    """A multi-turn conversation whose later requests carry the earlier answers."""
    history: list = [SystemMessage(content=SYSTEM)]
    answers = []
    for turn in turns:
        history.append(UserMessage(content=turn, source="orchestrator"))
        result = await client.create(history)
        answers.append(result.content)
        history.append(AssistantMessage(content=result.content, source="planner"))
    return answers


@pytest.fixture
async def recorded(tmp_path):
    """A log with one run: the planner's three calls through the fake Anthropic API."""
    path = tmp_path / "events.sqlite"
    script = [{"agent": "planner", "reply": r} for r in REPLIES]
    with scripted_llm(script) as server, EventLog(path) as log:
        settings = live_settings(server)
        client = make_client(settings, "planner", LogEmit(log, RUN, "planner"), Ledger.for_settings(settings))
        assert await planner_session(client) == REPLIES
    return path


def replay_settings(path, server=None, **changes) -> LlmSettings:
    live = dict(base_url=server.base_url) if server else {}
    return LlmSettings(replay_path=str(path), api_key_env=KEY_ENV, backoff_s=0.01, **live, **changes)


# --- serving ---------------------------------------------------------------------------------


async def test_replay_serves_the_recorded_answers_and_makes_no_provider_call(recorded):
    with scripted_llm([]) as server:
        events = Events()
        client = make_client(replay_settings(recorded, server), "planner", events, Ledger())
        assert await planner_session(client) == REPLIES
    assert server.requests == []
    with EventLog(recorded, readonly=True) as log:
        original = recorded_calls(log, RUN)
    requests = [e for e in events.items if isinstance(e, m.LlmRequested)]
    responses = [e for e in events.items if isinstance(e, m.LlmResponded)]
    assert [r.provider for r in requests] == ["replay"] * 3
    assert [r.parameters["replayed_call_id"] for r in requests] == [c.request.call_id for c in original]
    assert [r.messages for r in requests] == [c.request.messages for c in original]
    assert [(r.input_tokens, r.output_tokens) for r in responses] == [
        (c.response.input_tokens, c.response.output_tokens) for c in original
    ]
    assert all(r.cost_usd == 0.0 and r.latency_s == 0.0 for r in responses)
    assert original[0].response.cost_usd > 0  # the recording did cost money; the replay does not


async def test_replay_needs_no_key_and_preflight_checks_the_recording(recorded, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    await preflight(replay_settings(recorded))
    with pytest.raises(LlmError, match=r"^replay: cannot read .*missing.sqlite"):
        await preflight(replay_settings(recorded.parent / "missing.sqlite"))


async def test_tampered_request_is_a_divergence_that_shows_where(recorded):
    events = Events()
    client = make_client(replay_settings(recorded), "planner", events, Ledger())
    tampered = [TURNS[0], TURNS[1].replace("0.12", "0.13"), TURNS[2]]
    with pytest.raises(ReplayDivergence) as caught:
        await planner_session(client, tampered)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("replay diverged for agent 'planner' at call 2 of 3: message 3 (user) differs")
    assert "at character 33: recorded '...ch 1 results: arch_001 val 0.12' vs actual '...ch 1" in message
    assert message.endswith("arch_001 val 0.13'")
    # the failed call is in the log too: a request and an error response
    assert [m.tag_of(e) for e in events.items][-2:] == ["llm.requested", "llm.responded"]
    assert events.items[-1].error == message


async def test_tampered_transcript_is_caught(recorded, tmp_path):
    transcript = tmp_path / "calls.jsonl"
    assert export_jsonl(recorded, RUN, transcript) == 3
    lines = transcript.read_text().splitlines()
    first = json.loads(lines[0])
    first["request"]["messages"][1]["content"] = "task: cifar10"
    transcript.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    client = make_client(replay_settings(transcript), "planner", Events(), Ledger())
    with pytest.raises(ReplayDivergence, match=r"at call 1 of 3: message 1 \(user\) differs at character 6"):
        await planner_session(client)


async def test_asking_more_than_was_recorded_is_a_divergence(recorded):
    client = make_client(replay_settings(recorded), "planner", Events(), Ledger())
    with pytest.raises(ReplayDivergence, match=r"at call 4: the recording .* has only 3 call\(s\) for this agent"):
        await planner_session(client, [*TURNS, "batch 3 results: none"])


async def test_unknown_agent_is_a_divergence(recorded):
    client = make_client(replay_settings(recorded), "explorer", Events(), Ledger())
    with pytest.raises(ReplayDivergence, match="agent 'explorer' at call 1: .* has only 0 call"):
        await client.create([SystemMessage(content=SYSTEM), UserMessage(content="x", source="o")])


async def test_on_divergence_live_hands_over_and_stays_live(recorded):
    live_script = [{"agent": "planner", "reply": "EXPERIMENT arch_002"}, {"agent": "planner", "reply": "STOP"}]
    with scripted_llm(live_script) as server:
        events = Events()
        settings = replay_settings(recorded, server, on_divergence="live")
        client = make_client(settings, "planner", events, Ledger())
        answers = await planner_session(client, [TURNS[0], "batch 1 results: arch_001 failed", TURNS[2]])
    assert answers == [REPLIES[0], "EXPERIMENT arch_002", "STOP"]
    assert len(server.calls()) == 2  # the third turn matches nothing recorded any more: still live
    providers = [e.provider for e in events.items if isinstance(e, m.LlmRequested)]
    assert providers == ["replay", "anthropic", "anthropic"]
    assert not client.replaying


async def test_resuming_from_the_own_log_serves_answered_calls_silently(recorded):
    """A restarted agent: what the log already answers is not asked again, nor re-recorded."""
    with EventLog(recorded, readonly=True) as log:
        answered = recorded_calls(log, RUN, agent="planner")[:2]
    with scripted_llm([{"agent": "planner", "reply": "STOP arch_004"}]) as server:
        events = Events()
        settings = live_settings(server)
        client = make_client(settings, "planner", events, Ledger())
        client = RecordingClient(
            agent="planner", provider="anthropic", model=settings.model, emit=events, ledger=Ledger(),
            inner=client._inner, replay=ReplaySource(answered), on_divergence="live", emit_replayed=False,
        )
        assert await planner_session(client) == REPLIES
    assert len(server.calls()) == 1
    assert [m.tag_of(e) for e in events.items] == ["llm.requested", "llm.responded"]


async def test_a_recorded_failure_replays_as_the_same_error():
    request = m.LlmRequested(
        call_id="c1", agent="planner", provider="anthropic", model="claude-sonnet-4-6",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "go", "source": "o"}],
    )
    failed = m.LlmResponded(call_id="c1", agent="planner", content="", error="anthropic: HTTP 529 overloaded")
    source = ReplaySource([RecordedCall(agent="planner", request=request, response=failed)])
    events = Events()
    client = RecordingClient(agent="planner", provider="anthropic", model="m", emit=events, ledger=Ledger(), replay=source)
    with pytest.raises(LlmError, match="^anthropic: HTTP 529 overloaded$"):
        await client.create([SystemMessage(content=SYSTEM), UserMessage(content="go", source="o")])
    assert events.items[-1].error == "anthropic: HTTP 529 overloaded"


def test_a_named_model_must_match_the_recording():
    request = m.LlmRequested(call_id="c", agent="a", provider="p", model="claude-sonnet-4-6", messages=[])
    response = m.LlmResponded(call_id="c", agent="a", content="ok")
    source = ReplaySource([RecordedCall(agent="a", request=request, response=response)])
    with pytest.raises(ReplayDivergence, match="model: recorded 'claude-sonnet-4-6', actual 'gpt-x'"):
        source.serve("a", [], model="gpt-x")
    assert source.serve("a", []).response.content == "ok"  # unnamed: any model stands in
    assert source.remaining("a") == 0


def test_message_count_difference_names_the_extra_message():
    request = m.LlmRequested(
        call_id="c", agent="a", provider="p", model="x", messages=[{"role": "user", "content": "hello"}]
    )
    source = ReplaySource([RecordedCall(agent="a", request=request, response=m.LlmResponded(call_id="c", agent="a", content=""))])
    extra = [{"role": "user", "content": "hello"}, {"role": "user", "content": "and more"}]
    with pytest.raises(ReplayDivergence, match=r"recorded 1 messages, actual 2; message 1 \(new\): 'and more'"):
        source.serve("a", extra)


# --- sources -----------------------------------------------------------------------------------


def test_jsonl_export_and_import_round_trip(recorded, tmp_path):
    transcript = tmp_path / "calls.jsonl"
    export_jsonl(recorded, RUN, transcript)
    from_log = ReplaySource.from_log(recorded)
    from_file = ReplaySource.from_spec(transcript)
    assert from_file.calls == from_log.calls and len(from_file.calls) == 3
    assert from_log.origin == f"{recorded}#{RUN}"
    line = json.loads(transcript.read_text().splitlines()[0])
    assert set(line) == {"agent", "request", "response"} and line["request"]["kind"] == "llm.requested"


def _add_run(path, run_id: str, with_llm: bool = True) -> None:
    sender = m.Sender(agent="planner")
    events = [m.make_event(m.RunStarted(), run_id=run_id, sender=sender)]
    if with_llm:
        request = m.LlmRequested(call_id=f"{run_id}-c", agent="planner", provider="p", model="x", messages=[])
        events.append(m.make_event(request, run_id=run_id, sender=sender))
        response = m.LlmResponded(call_id=f"{run_id}-c", agent="planner", content="ok")
        events.append(m.make_event(response, run_id=run_id, sender=sender))
    with EventLog(path) as log:
        log.append(events)


def test_a_log_with_several_runs_needs_a_run_named(recorded):
    _add_run(recorded, "run-2")
    with pytest.raises(ReplayError) as caught:
        ReplaySource.from_log(recorded)
    assert str(caught.value) == (
        f"replay: {recorded} holds LLM calls of 2 runs (run-1, run-2); pick one with replay:{recorded}#RUN"
    )
    assert len(ReplaySource.from_spec(recorded, "run-2").calls) == 1


def test_unusable_sources_are_one_line_errors(recorded, tmp_path):
    _add_run(recorded, "quiet", with_llm=False)
    with pytest.raises(ReplayError, match="^replay: run 'quiet' in .* has no answered LLM calls$"):
        ReplaySource.from_log(recorded, "quiet")
    with pytest.raises(ReplayError, match=r"^replay: no run 'nope' in .* \(runs: run-1, quiet\)$"):
        ReplaySource.from_log(recorded, "nope")
    empty = tmp_path / "empty.sqlite"
    _add_run(empty, "r", with_llm=False)
    with pytest.raises(ReplayError, match="holds no LLM calls"):
        ReplaySource.from_spec(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"agent": "planner"}\n')
    with pytest.raises(ReplayError, match=r"^replay: .*bad.jsonl:1: not a recorded LLM call"):
        ReplaySource.from_spec(bad)
    good = tmp_path / "good.jsonl"
    export_jsonl(recorded, RUN, good)
    with pytest.raises(ReplayError, match="is a JSONL transcript"):
        ReplaySource.from_spec(good, "run-1")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\nnot a transcript\n")
    for run_id in (None, "run-1"):  # never "JSON is malformed": say what was expected
        with pytest.raises(ReplayError, match=r"^replay: .*notes.txt is neither an agentnas event log \(SQLite\) "
                                              r"nor a JSONL transcript.*expected an agentnas event log"):
            ReplaySource.from_spec(notes, run_id)
    good.write_text(good.read_text() + "oops\n")
    with pytest.raises(ReplayError, match=r"^replay: .*good.jsonl:\d+: not a JSON line"):
        ReplaySource.from_spec(good)


def test_unanswered_requests_are_skipped(recorded):
    with EventLog(recorded) as log:
        orphan = m.LlmRequested(call_id="killed", agent="planner", provider="p", model="x", messages=[])
        log.append([m.make_event(orphan, run_id=RUN, sender=m.Sender(agent="planner"))])
        calls = recorded_calls(log, RUN)
    assert [c.response.content for c in calls] == REPLIES
