"""One recording model client for every agent, and `make_client`, which builds it.

`RecordingClient` is an autogen `ChatCompletionClient` that wraps a provider client from
autogen-ext (Anthropic, or any OpenAI-compatible server by base URL) or a replay source,
and turns every call into two events through the agent's `emit` callback:
`LlmRequested` before the call, `LlmResponded` after it (content, stop reason, the
provider's own token counts, latency, cost; or the error once retries are spent).

Transient provider errors (429, 5xx, 529, connection failures) are retried here with
exponential backoff (the SDKs' own retries are off so that every attempt is ours and
logged); a call ends in exactly one `LlmResponded`. A `Ledger` keeps the run's tokens and
cost and refuses a call once a configured cap is reached.

The top of the LLM layer: settings, errors and the ledger live in `llm_settings`, provider
clients in `providers`, recorded answers in `replay`; none of them imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import msgspec
import structlog
from autogen_core import CancellationToken, FunctionCall, Image
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from agentnas.agents.llm_settings import Ledger, LlmError, LlmSettings, OnDivergence
from agentnas.agents.providers import GENERIC_MODEL_INFO, describe, is_transient, live_client
from agentnas.agents.replay import RecordedCall, ReplayDivergence, ReplaySource
from agentnas.bus import messages as m

log = structlog.get_logger("agentnas.llm")

Emit = Callable[[m.Kind], Awaitable[None]]
_FINISH_REASONS = {"stop", "length", "function_calls", "content_filter", "unknown"}


# --- messages and results as plain data ------------------------------------------------------


def _part(part: Any) -> Any:
    if isinstance(part, str):
        return part
    if isinstance(part, Image):
        return {"type": "image", "base64": part.to_base64()}
    if isinstance(part, FunctionCall):
        return {"type": "function_call", "id": part.id, "name": part.name, "arguments": part.arguments}
    return {"type": type(part).__name__, "repr": repr(part)}


def message_to_dict(message: LLMMessage) -> dict[str, Any]:
    """An autogen message as the plain dict stored in `LlmRequested.messages`."""
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": message.content}
    if isinstance(message, UserMessage):
        content = message.content if isinstance(message.content, str) else [_part(p) for p in message.content]
        return {"role": "user", "content": content, "source": message.source}
    if isinstance(message, AssistantMessage):
        content = message.content if isinstance(message.content, str) else [_part(p) for p in message.content]
        out: dict[str, Any] = {"role": "assistant", "content": content, "source": message.source}
        if message.thought:
            out["thought"] = message.thought
        return out
    if isinstance(message, FunctionExecutionResultMessage):
        results = [
            {"call_id": r.call_id, "name": r.name, "content": r.content, "is_error": r.is_error}
            for r in message.content
        ]
        return {"role": "tool", "content": results}
    return {"role": "unknown", "content": repr(message)}


def result_text(result: CreateResult) -> str:
    """The content stored in `LlmResponded`; tool calls are kept as a JSON list."""
    if isinstance(result.content, str):
        return result.content
    return json.dumps([_part(call) for call in result.content])


def result_from_record(response: m.LlmResponded) -> CreateResult:
    """Rebuild the CreateResult of a recorded answer (replay)."""
    reason = response.stop_reason if response.stop_reason in _FINISH_REASONS else "unknown"
    content: str | list[FunctionCall] = response.content
    if reason == "function_calls":
        calls = json.loads(response.content)
        content = [FunctionCall(id=c["id"], name=c["name"], arguments=c["arguments"]) for c in calls]
    return CreateResult(
        finish_reason=reason,  # type: ignore[arg-type]
        content=content,
        usage=RequestUsage(prompt_tokens=response.input_tokens, completion_tokens=response.output_tokens),
        cached=True,
    )


# --- the recording client ------------------------------------------------------------------

# Prompt template of the calls made inside `using_template(...)`; a context variable so
# that concurrent calls of one agent each keep their own.
_template: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "agentnas_llm_template", default=("", "")
)

class RecordingClient(ChatCompletionClient):
    """Records every call as events; answers from `inner` (live) or from `replay`.

    With `replay`, each call is served from the recording and checked against it; on a
    divergence it stops (ReplayDivergence) or, with `on_divergence="live"`, hands over to
    `inner` for this call and every later one. Replayed answers are emitted as events with
    provider "replay", the recorded token counts, latency 0 and cost 0 (nothing was spent);
    `emit_replayed=False` serves them silently (resuming a run from its own log). Replayed
    tokens count toward the token cap (a re-executed run stops where the original did);
    a cancelled call leaves its `LlmRequested` without an answer.

    `count_tokens`/`remaining_tokens` are rough (characters / 4): usage that matters comes
    from the provider's answers, and no tokenizer is downloaded.
    """

    def __init__(
        self,
        *,
        agent: str,
        provider: str,
        model: str,
        emit: Emit,
        ledger: Ledger,
        inner: ChatCompletionClient | None = None,
        replay: ReplaySource | None = None,
        on_divergence: OnDivergence = "stop",
        emit_replayed: bool = True,
        parameters: Mapping[str, Any] | None = None,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        context_tokens: int = 200_000,
        call_ids: Callable[[list[dict]], str] | None = None,
    ) -> None:
        if inner is None and replay is None:
            raise ValueError("RecordingClient needs a live client, a replay source, or both")
        if replay is not None and on_divergence == "live" and inner is None:
            raise ValueError("on_divergence='live' needs a live client to hand over to")
        self.agent = agent
        self.provider = provider
        self.model = model
        self.ledger = ledger
        self._emit = emit
        self._inner = inner
        self._replay = replay
        self._on_divergence = on_divergence
        self._emit_replayed = emit_replayed
        self._parameters = dict(parameters or {})
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._context_tokens = context_tokens
        self._spent = RequestUsage(prompt_tokens=0, completion_tokens=0)
        # Deterministic call ids (from the caller's work and the messages) make a request published
        # again after a bus fault a duplicate that the stream and the log drop; else random ids.
        self._call_ids = call_ids

    @property
    def replaying(self) -> bool:
        return self._replay is not None

    @contextlib.contextmanager
    def using_template(self, name: str, template_hash: str = "") -> Iterator[None]:
        """Calls made inside the block record this prompt template's name and hash."""
        token = _template.set((name, template_hash))
        try:
            yield
        finally:
            _template.reset(token)

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        self.ledger.check()
        wire = [message_to_dict(msg) for msg in messages]
        params = self._request_parameters(tools, tool_choice, json_output, extra_create_args)
        if self._replay is not None:
            served = await self._serve(wire, params, extra_create_args.get("model"))
            if served is not None:
                return await self._replayed(served, wire, params)
        assert self._inner is not None
        model = str(extra_create_args.get("model", self.model))
        call_id = await self._requested(self.provider, model, wire, params)
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                result = await self._inner.create(
                    messages,
                    tools=tools,
                    tool_choice=tool_choice,
                    json_output=json_output,
                    extra_create_args=extra_create_args,
                    cancellation_token=cancellation_token,
                )
                break
            except Exception as exc:  # noqa: BLE001 - every failure becomes an event
                if is_transient(exc) and attempt < self._max_retries:
                    delay = min(self._backoff_s * 2**attempt, self._max_backoff_s)
                    attempt += 1
                    log.warning(
                        "llm.retry", agent=self.agent, call_id=call_id, attempt=attempt,
                        delay_s=delay, error=describe(exc),
                    )
                    await asyncio.sleep(delay)
                    continue
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                message = f"{self.provider}: {model}: {describe(exc)}{tries}"
                await self._emit(m.LlmResponded(call_id=call_id, agent=self.agent, content="", error=message))
                raise LlmError(message) from exc
        latency = time.monotonic() - started
        usage = result.usage
        cost = self.ledger.charge(model, usage.prompt_tokens, usage.completion_tokens)
        self._spent = RequestUsage(
            prompt_tokens=self._spent.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self._spent.completion_tokens + usage.completion_tokens,
        )
        await self._emit(
            m.LlmResponded(
                call_id=call_id,
                agent=self.agent,
                content=result_text(result),
                stop_reason=result.finish_reason,
                input_tokens=usage.prompt_tokens,
                output_tokens=usage.completion_tokens,
                latency_s=round(latency, 3),
                cost_usd=cost,
            )
        )
        return result

    def _request_parameters(
        self,
        tools: Sequence[Tool | ToolSchema],
        tool_choice: Any,
        json_output: Any,
        extra: Mapping[str, Any],
    ) -> dict[str, Any]:
        params = {**self._parameters, **{k: v for k, v in extra.items() if k != "model"}}
        if tools:
            params["tools"] = [t.schema["name"] if isinstance(t, Tool) else t["name"] for t in tools]
            params["tool_choice"] = tool_choice if isinstance(tool_choice, str) else tool_choice.name
        if json_output is not None:
            params["json_output"] = json_output if isinstance(json_output, bool) else json_output.__name__
        return msgspec.json.decode(msgspec.json.encode(params, enc_hook=repr))  # plain data only

    async def _requested(self, provider: str, model: str, wire: list[dict], params: dict) -> str:
        call_id = self._call_ids(wire) if self._call_ids is not None else m.new_id()
        name, digest = _template.get()
        await self._emit(
            m.LlmRequested(
                call_id=call_id, agent=self.agent, provider=provider, model=model,
                messages=wire, parameters=params, template=name, template_hash=digest,
            )
        )
        return call_id

    async def _serve(self, wire: list[dict], params: dict, model: Any) -> RecordedCall | None:
        """The recorded call for this request; None once handed over to the live client."""
        assert self._replay is not None
        try:
            return self._replay.serve(self.agent, wire, model=model)
        except ReplayDivergence as exc:
            if self._on_divergence == "live":
                log.warning("llm.replay_handover", agent=self.agent, divergence=str(exc))
                self._replay = None
                return None
            call_id = await self._requested("replay", str(model or self.model), wire, params)
            await self._emit(m.LlmResponded(call_id=call_id, agent=self.agent, content="", error=str(exc)))
            raise

    async def _replayed(self, served: RecordedCall, wire: list[dict], params: dict) -> CreateResult:
        recorded = served.response
        self.ledger.charge(served.request.model, recorded.input_tokens, recorded.output_tokens, free=True)
        if self._emit_replayed:
            params = {**params, "replayed_call_id": served.request.call_id}
            call_id = await self._requested("replay", served.request.model, wire, params)
            await self._emit(msgspec.structs.replace(recorded, call_id=call_id, latency_s=0.0, cost_usd=0.0))
        if recorded.error:
            raise LlmError(recorded.error)
        return result_from_record(recorded)

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        """No token streaming: one call, then the whole text as one chunk and the result."""
        result = await self.create(
            messages, tools=tools, tool_choice=tool_choice, json_output=json_output,
            extra_create_args=extra_create_args, cancellation_token=cancellation_token,
        )
        if isinstance(result.content, str) and result.content:
            yield result.content
        yield result

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()

    def actual_usage(self) -> RequestUsage:
        """Tokens this client spent with a provider (replayed answers excluded)."""
        return self._spent

    def total_usage(self) -> RequestUsage:
        """The run's tokens as the ledger counts them (seeded from the log, replays included)."""
        return RequestUsage(prompt_tokens=self.ledger.input_tokens, completion_tokens=self.ledger.output_tokens)

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        text = json.dumps([message_to_dict(msg) for msg in messages], default=repr)
        return len(text) // 4 + 1  # rough on purpose: no tokenizer download

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return max(0, self._context_tokens - self.count_tokens(messages, tools=tools))

    @property
    def model_info(self) -> ModelInfo:
        return self._inner.model_info if self._inner is not None else GENERIC_MODEL_INFO

    @property
    def capabilities(self) -> Any:  # deprecated in autogen; same data as model_info
        return self.model_info


def make_client(
    settings: LlmSettings,
    agent: str,
    emit: Emit,
    ledger: Ledger,
    replay: ReplaySource | None = None,
    call_ids: Callable[[list[dict]], str] | None = None,
) -> RecordingClient:
    """The recording client of one agent. `replay` lets agents share one loaded source."""
    if settings.replaying and replay is None:
        replay = ReplaySource.from_spec(settings.replay_path, settings.replay_run or None)
    needs_live = replay is None or settings.on_divergence == "live"
    return RecordingClient(
        agent=agent,
        provider=settings.provider,
        model=settings.model,
        emit=emit,
        ledger=ledger,
        inner=live_client(settings) if needs_live else None,
        replay=replay,
        on_divergence=settings.on_divergence,
        parameters={"temperature": settings.temperature, "max_tokens": settings.max_tokens},
        max_retries=settings.max_retries,
        backoff_s=settings.backoff_s,
        call_ids=call_ids,
    )
