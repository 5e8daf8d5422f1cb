"""The recording client against the real Anthropic and OpenAI SDKs (through autogen-ext),
talking to the local fake provider in ops/scripted_llm.py."""

from __future__ import annotations

import msgspec
import pytest
from autogen_core.models import SystemMessage, UserMessage
from structlog.testing import capture_logs

from agentnas.agents.llm import RecordingClient, make_client
from agentnas.agents.llm_settings import BudgetExceeded, Ledger, LlmError, LlmSettings, parse_provider
from agentnas.agents.providers import preflight
from agentnas.bus import messages as m
from agentnas.bus.config import LlmConfig
from agentnas.store.state import LlmSection, RunState
from agentnas.ops.scripted_llm import scripted_llm, words

KEY_ENV = "AGENTNAS_TEST_LLM_KEY"
SYSTEM = "You plan experiments.\nagentnas-agent: planner"
PRICES = {"claude-sonnet-4-6": (3.0, 15.0)}


class Events:
    """The agent's emit callback: keeps what it was given."""

    def __init__(self) -> None:
        self.items: list[m.Kind] = []

    async def __call__(self, payload: m.Kind) -> None:
        self.items.append(payload)

    def kinds(self) -> list[str]:
        return [m.tag_of(e) for e in self.items]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "test-key")


def conversation(text: str = "propose the first batch") -> list:
    return [SystemMessage(content=SYSTEM), UserMessage(content=text, source="user")]


def settings_for(server, provider: str = "anthropic", **changes) -> LlmSettings:
    base = server.base_url if provider == "anthropic" else server.openai_base_url
    model = "claude-sonnet-4-6" if provider == "anthropic" else "local-model"
    values = dict(
        provider=provider, model=model, base_url=base, api_key_env=KEY_ENV,
        backoff_s=0.01, max_retries=3, prices_usd_per_mtok=PRICES,
    )
    return LlmSettings(**{**values, **changes})


def client_for(settings: LlmSettings, events: Events, ledger: Ledger | None = None) -> RecordingClient:
    ledger = ledger or Ledger.for_settings(settings)
    return make_client(settings, "planner", events, ledger)


# --- calls through the real SDKs -------------------------------------------------------------


async def test_anthropic_call_records_request_then_response_with_usage_and_cost():
    reply = "EXPERIMENT with three small conv nets"
    with scripted_llm([{"agent": "planner", "reply": reply}]) as server:
        events = Events()
        client = client_for(settings_for(server), events)
        with client.using_template("planner_turn", "abc123"):
            result = await client.create(conversation())
        await client.close()

    assert result.content == reply
    assert events.kinds() == ["llm.requested", "llm.responded"]
    request, response = events.items
    assert request.call_id == response.call_id and request.agent == "planner"
    assert (request.provider, request.model) == ("anthropic", "claude-sonnet-4-6")
    assert request.messages == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "propose the first batch", "source": "user"},
    ]
    assert request.parameters == {"temperature": 1.0, "max_tokens": 16000}
    assert (request.template, request.template_hash) == ("planner_turn", "abc123")
    expected_in, expected_out = words(SYSTEM) + words("propose the first batch"), words(reply)
    assert (response.input_tokens, response.output_tokens) == (expected_in, expected_out)
    assert response.cost_usd == pytest.approx((expected_in * 3.0 + expected_out * 15.0) / 1e6)
    assert response.stop_reason == "stop" and response.error == "" and response.latency_s >= 0
    assert client.total_usage().prompt_tokens == expected_in
    assert client.actual_usage().completion_tokens == expected_out


async def test_anthropic_sampling_parameters_reach_the_wire_despite_the_sdk_dropping_them():
    script = [{"agent": "planner", "reply": "a"}, {"agent": "planner", "reply": "b"}]
    with scripted_llm(script) as server:
        default = client_for(settings_for(server), Events())
        await default.create(conversation())
        cool = client_for(settings_for(server, temperature=0.2), Events())
        await cool.create(conversation())
    first, second = (r.body for r in server.calls())
    assert "temperature" not in first  # 1.0 is the API default; newer models reject it
    assert second["temperature"] == 0.2 and second["max_tokens"] == 16000


async def test_openai_compatible_server_call_is_recorded_and_unpriced_model_costs_nothing():
    with scripted_llm([{"agent": "planner", "reply": "STOP now"}]) as server:
        events = Events()
        client = client_for(settings_for(server, "openai"), events)
        result = await client.create(conversation())
    assert result.content == "STOP now"
    request, response = events.items
    assert (request.provider, request.model) == ("openai", "local-model")
    assert response.output_tokens == 2 and response.cost_usd == 0.0
    body = server.calls("openai")[0].body
    assert body["model"] == "local-model" and body["max_tokens"] == 16000


async def test_template_is_only_recorded_inside_its_block():
    script = [{"agent": "planner", "reply": "x"}] * 2
    with scripted_llm(script) as server:
        events = Events()
        client = client_for(settings_for(server), events)
        with client.using_template("planner_turn", "h1"):
            await client.create(conversation())
        await client.create(conversation())
    assert [(e.template, e.template_hash) for e in events.items if isinstance(e, m.LlmRequested)] == [
        ("planner_turn", "h1"),
        ("", ""),
    ]


async def test_create_stream_yields_the_text_then_the_result():
    with scripted_llm([{"agent": "planner", "reply": "hello world"}]) as server:
        client = client_for(settings_for(server), Events())
        chunks = [c async for c in client.create_stream(conversation())]
    assert chunks[0] == "hello world" and chunks[-1].content == "hello world"


async def test_works_as_the_model_client_of_an_autogen_assistant_agent():
    from autogen_agentchat.agents import AssistantAgent

    with scripted_llm([{"agent": "planner", "reply": "EXPLORE: class balance?", "match": "start"}]) as server:
        events = Events()
        client = client_for(settings_for(server), events)
        agent = AssistantAgent("planner", model_client=client, system_message=SYSTEM)
        result = await agent.run(task="start the search")
    assert result.messages[-1].content == "EXPLORE: class balance?"
    assert events.kinds() == ["llm.requested", "llm.responded"]


# --- retries and failures --------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_overload_and_rate_limit_are_retried_and_recorded_as_one_call(provider):
    script = [
        {"agent": "planner", "status": 529},
        {"agent": "planner", "status": 429},
        {"agent": "planner", "reply": "finally"},
    ]
    with scripted_llm(script) as server:
        events = Events()
        client = client_for(settings_for(server, provider), events)
        with capture_logs() as logs:
            result = await client.create(conversation())
    assert result.content == "finally"
    assert events.kinds() == ["llm.requested", "llm.responded"]
    assert len(server.calls()) == 3
    retries = [e for e in logs if e["event"] == "llm.retry"]
    assert [r["attempt"] for r in retries] == [1, 2]
    assert "529" in retries[0]["error"] and "429" in retries[1]["error"]


async def test_retries_exhausted_record_the_error_and_raise_one_line():
    with scripted_llm([{"agent": "planner", "status": 529}] * 3) as server:
        events = Events()
        client = client_for(settings_for(server, max_retries=2), events)
        with pytest.raises(LlmError) as caught:
            await client.create(conversation())
    message = str(caught.value)
    assert "\n" not in message
    assert "HTTP 529 overloaded_error" in message and "after 3 attempts" in message
    assert events.kinds() == ["llm.requested", "llm.responded"]
    response = events.items[1]
    assert response.error == message and response.content == "" and response.output_tokens == 0
    assert len(server.calls()) == 3


async def test_a_refused_key_is_not_retried():
    with scripted_llm([{"agent": "planner", "reply": "never"}], key="the-real-key") as server:
        events = Events()
        client = client_for(settings_for(server), events)
        with pytest.raises(LlmError, match="HTTP 401 authentication_error"):
            await client.create(conversation())
    assert len(server.calls()) == 1
    assert events.items[1].error.startswith("anthropic: claude-sonnet-4-6: HTTP 401")


async def test_a_script_problem_of_the_fake_server_is_not_retried():
    with scripted_llm([{"agent": "planner", "reply": "x", "match": "batch 2"}]) as server:
        client = client_for(settings_for(server), Events())
        with pytest.raises(LlmError, match="no remaining rule matches the last user message 'batch 1 results'"):
            await client.create(conversation("batch 1 results"))
        with pytest.raises(LlmError, match="no script for agent 'explorer'"):
            await client.create([SystemMessage(content="agentnas-agent: explorer"), UserMessage(content="hi", source="o")])
    assert len(server.calls()) == 2 and len(server.errors) == 2 and server.remaining("planner") == 1


async def test_missing_key_variable_is_one_line_naming_it(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(LlmError, match=rf"^anthropic: \${KEY_ENV} is not set"):
        make_client(LlmSettings(api_key_env=KEY_ENV), "planner", Events(), Ledger())


# --- preflight ----------------------------------------------------------------------------------


async def test_preflight_passes_for_a_known_model_and_key():
    with scripted_llm([]) as server:
        await preflight(settings_for(server))
        await preflight(settings_for(server, "openai"))
    assert [(r.method, r.path) for r in server.requests] == [
        ("GET", "/v1/models/claude-sonnet-4-6"),
        ("GET", "/v1/models"),
    ]


async def test_preflight_refused_key_is_one_line():
    with scripted_llm([], key="another-key") as server:
        with pytest.raises(LlmError) as anth:
            await preflight(settings_for(server))
        with pytest.raises(LlmError) as oai:
            await preflight(settings_for(server, "openai"))
    assert str(anth.value) == f"anthropic: the API key in ${KEY_ENV} was refused (401)"
    assert str(oai.value).startswith(f"openai: the API key in ${KEY_ENV} was refused")


async def test_preflight_unknown_model_names_it():
    with scripted_llm([]) as server:
        with pytest.raises(LlmError, match=r"^anthropic: unknown model 'claude-nope' \(404"):
            await preflight(settings_for(server, model="claude-nope"))
        with pytest.raises(LlmError) as oai:
            await preflight(settings_for(server, "openai", model="qwen-huge"))
    assert str(oai.value) == (
        f"openai: model 'qwen-huge' is not served at {server.openai_base_url}"
        " (it serves: claude-sonnet-4-6, local-model)"
    )


async def test_preflight_missing_key_variable(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(LlmError, match=KEY_ENV):
        await preflight(LlmSettings(api_key_env=KEY_ENV))


# --- caps ----------------------------------------------------------------------------------------


async def test_token_cap_stops_the_next_call_before_it_is_made():
    script = [{"agent": "planner", "reply": "one two three"}] * 2
    with scripted_llm(script) as server:
        events = Events()
        settings = settings_for(server, token_cap=10)
        client = client_for(settings, events)
        await client.create(conversation())  # uses 9 + 3 tokens: the cap is now reached
        with pytest.raises(BudgetExceeded, match=r"^LLM token cap reached: 12 of 10 tokens used$"):
            await client.create(conversation())
    assert len(server.calls()) == 1
    assert events.kinds() == ["llm.requested", "llm.responded"]


async def test_cost_cap_counts_from_the_folded_log():
    with scripted_llm([{"agent": "planner", "reply": "x"}]) as server:
        settings = settings_for(server, cost_cap_usd=0.50)
        state = RunState(run_id="r1", llm=LlmSection(input_tokens=100_000, output_tokens=20_000, cost_usd=0.60))
        ledger = Ledger.for_settings(settings, state.llm)
        events = Events()
        client = client_for(settings, events, ledger)
        with pytest.raises(BudgetExceeded, match=r"cost cap reached: US\$0.6000 of US\$0.5000"):
            await client.create(conversation())
    assert server.calls() == [] and events.items == []
    assert client.total_usage().prompt_tokens == 100_000


def test_ledger_prices_dated_model_names_by_their_base_name():
    ledger = Ledger({"claude-sonnet-4-6": (3.0, 15.0)})
    assert ledger.price("claude-sonnet-4-6-20260101", 1_000_000, 0) == pytest.approx(3.0)
    assert ledger.charge("unknown-model", 10, 10) == 0.0
    assert ledger.charge("claude-sonnet-4-6", 0, 1_000_000, free=True) == 0.0
    assert (ledger.tokens, ledger.cost_usd) == (1_000_020, 0.0)


# --- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("anthropic", ("anthropic", "")),
        ("anthropic:claude-opus-4-5", ("anthropic", "claude-opus-4-5")),
        ("openai:qwen2.5-coder:7b", ("openai", "qwen2.5-coder:7b")),
        ("replay:/runs/events.sqlite#run-1", ("replay", "/runs/events.sqlite#run-1")),
    ],
)
def test_parse_provider(text, expected):
    assert parse_provider(text) == expected


@pytest.mark.parametrize("text", ["gemini:pro", "replay:", "replay:#run"])
def test_parse_provider_rejects_with_one_line(text):
    with pytest.raises(LlmError) as caught:
        parse_provider(text)
    assert "\n" not in str(caught.value)


def test_settings_from_config_apply_the_cli_choice():
    config = LlmConfig(base_url="http://gpu-box:8000/v1", token_cap=5000)
    local = LlmSettings.from_config(config, "openai:qwen")
    assert (local.provider, local.model, local.api_key_env) == ("openai", "qwen", "OPENAI_API_KEY")
    assert local.base_url == "http://gpu-box:8000/v1" and local.token_cap == 5000
    replay = LlmSettings.from_config(LlmConfig(), "replay:old.sqlite#r7", on_divergence="live")
    assert (replay.replay_path, replay.replay_run, replay.on_divergence) == ("old.sqlite", "r7", "live")
    assert (replay.provider, replay.model) == ("anthropic", "claude-sonnet-4-6")
    custom = LlmSettings.from_config(LlmConfig(api_key_env="MY_KEY"), "openai:x")
    assert custom.api_key_env == "MY_KEY"
    with pytest.raises(LlmError, match="on-divergence"):
        LlmSettings.from_config(LlmConfig(), on_divergence="maybe")  # type: ignore[arg-type]


def test_local_openai_server_needs_no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    settings = LlmSettings(provider="openai", model="m", base_url="http://127.0.0.1:1/v1", api_key_env=KEY_ENV)
    client = make_client(settings, "planner", Events(), Ledger())
    assert client.model_info["family"] == "unknown"


def test_events_are_plain_data_that_round_trip():
    request = m.LlmRequested(
        call_id="c", agent="planner", provider="anthropic", model="x",
        messages=[{"role": "user", "content": "hi", "source": "user"}], parameters={"temperature": 1.0},
    )
    assert msgspec.json.decode(msgspec.json.encode(request), type=m.LlmRequested) == request
