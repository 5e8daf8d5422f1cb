"""Provider knowledge: which autogen-ext client serves a provider, how its errors read (one
line; worth a retry or not), and whether the key and model are good before any training is
spent (`preflight`)."""

from __future__ import annotations

import os
from typing import Any

import anthropic
import openai
from autogen_core.models import ChatCompletionClient, ModelFamily, ModelInfo

from agentnas.agents.llm_settings import LlmError, LlmSettings
from agentnas.agents.replay import ReplaySource

# Statuses worth another attempt: timeouts, conflicts, rate limits, server errors, overload.
TRANSIENT_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

GENERIC_MODEL_INFO: ModelInfo = {
    "vision": False,
    "function_calling": True,
    "json_output": True,
    "family": ModelFamily.UNKNOWN,
    "structured_output": False,
    "multiple_system_messages": False,
}


def anthropic_model_info(model: str) -> ModelInfo:
    """Explicit model info: autogen-ext's table does not know every current Claude name."""
    family = ModelFamily.UNKNOWN
    for word, fam in (("opus", ModelFamily.CLAUDE_4_OPUS), ("sonnet", ModelFamily.CLAUDE_4_SONNET),
                      ("haiku", ModelFamily.CLAUDE_3_5_HAIKU)):
        if word in model:
            family = fam
    return {**GENERIC_MODEL_INFO, "vision": True, "family": family}  # type: ignore[typeddict-item]


class _SamplingInExtraBody:
    """anthropic >= 1.0 dropped temperature/top_p/top_k from `messages.create()`, but
    autogen-ext 0.7 still passes them; send them in `extra_body` (same wire payload).
    temperature 1.0 is the API default and is left out, since newer models reject it."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.messages = _MessagesWithSampling(client.messages)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _MessagesWithSampling:
    def __init__(self, messages: Any) -> None:
        self._messages = messages

    async def create(self, **kwargs: Any) -> Any:
        extra = dict(kwargs.pop("extra_body", None) or {})
        for name in ("temperature", "top_p", "top_k"):
            value = kwargs.pop(name, None)
            if value is not None and not (name == "temperature" and value == 1.0):
                extra[name] = value
        if extra:
            kwargs["extra_body"] = extra
        return await self._messages.create(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._messages, name)


def _api_key(settings: LlmSettings) -> str:
    key = os.environ.get(settings.api_key_env, "")
    if key:
        return key
    if settings.provider == "openai" and settings.base_url:
        return "none"  # local OpenAI-compatible servers usually take no key
    raise LlmError(
        f"{settings.provider}: ${settings.api_key_env} is not set"
        " (export the API key there, or name another variable in llm.api_key_env)"
    )


def live_client(settings: LlmSettings) -> ChatCompletionClient:
    """The autogen-ext client for the configured provider; SDK retries off (we retry)."""
    common: dict[str, Any] = {
        "model": settings.model,
        "api_key": _api_key(settings),
        "max_tokens": settings.max_tokens,
        "temperature": settings.temperature,
        "max_retries": 0,
        "timeout": settings.timeout_s,  # explicit: also skips the SDK's refusal of long non-streamed calls
    }
    if settings.base_url:
        common["base_url"] = settings.base_url
    if settings.provider == "anthropic":
        from autogen_ext.models.anthropic import AnthropicChatCompletionClient

        client = AnthropicChatCompletionClient(**common, model_info=anthropic_model_info(settings.model))
        client._client = _SamplingInExtraBody(client._client)  # see the class's docstring
        return client
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    return OpenAIChatCompletionClient(**common, model_info=GENERIC_MODEL_INFO)


# --- provider errors -------------------------------------------------------------------------


def describe(exc: BaseException) -> str:
    """One line about a provider error: HTTP status, the provider's error type and message."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else None
    kind = err.get("type", "") if isinstance(err, dict) else ""
    detail = err.get("message", "") if isinstance(err, dict) else ""
    if status is not None:
        text = f"HTTP {status}" + (f" {kind}" if kind else "") + (f": {detail}" if detail else "")
    elif isinstance(exc, (anthropic.APIConnectionError, openai.APIConnectionError)):
        text = f"connection failed: {exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:300]


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt: a connection failure, the provider's own advice, else the status."""
    if isinstance(exc, (anthropic.APIConnectionError, openai.APIConnectionError)):
        return True  # includes timeouts
    response = getattr(exc, "response", None)
    advice = response.headers.get("x-should-retry") if response is not None else None
    if advice in ("true", "false"):
        return advice == "true"  # the provider's own advice, as its SDKs follow it
    return getattr(exc, "status_code", None) in TRANSIENT_STATUS


# --- preflight -------------------------------------------------------------------------------


async def preflight(settings: LlmSettings) -> None:
    """Check the provider before any training is spent; raises LlmError with one line."""
    if settings.replaying:
        ReplaySource.from_spec(settings.replay_path, settings.replay_run or None)  # raises if unusable
        if settings.on_divergence != "live":
            return
    if settings.provider == "anthropic":
        await _preflight_anthropic(settings)
    else:
        await _preflight_openai(settings)


async def _preflight_anthropic(settings: LlmSettings) -> None:
    where = settings.base_url or "api.anthropic.com"
    client = anthropic.AsyncAnthropic(
        api_key=_api_key(settings), base_url=settings.base_url or None, max_retries=2, timeout=30.0
    )
    try:
        await client.models.retrieve(settings.model)
    except anthropic.AuthenticationError:
        raise LlmError(f"anthropic: the API key in ${settings.api_key_env} was refused (401)") from None
    except anthropic.PermissionDeniedError:
        raise LlmError(f"anthropic: the API key in ${settings.api_key_env} may not use this API (403)") from None
    except anthropic.NotFoundError:
        raise LlmError(f"anthropic: unknown model '{settings.model}' (404 from {where})") from None
    except anthropic.APIError as exc:
        raise LlmError(f"anthropic: cannot check model '{settings.model}' at {where}: {describe(exc)}") from None
    finally:
        await client.close()


async def _preflight_openai(settings: LlmSettings) -> None:
    where = settings.base_url or "api.openai.com"
    client = openai.AsyncOpenAI(
        api_key=_api_key(settings), base_url=settings.base_url or None, max_retries=2, timeout=30.0
    )
    try:
        served = [model.id async for model in client.models.list()]
    except openai.AuthenticationError:
        raise LlmError(f"openai: the API key in ${settings.api_key_env} was refused by {where} (401)") from None
    except openai.APIError as exc:
        raise LlmError(f"openai: cannot list the models at {where}: {describe(exc)}") from None
    finally:
        await client.close()
    if settings.model not in served:
        listed = ", ".join(served[:10]) + (", ..." if len(served) > 10 else "")
        raise LlmError(f"openai: model '{settings.model}' is not served at {where} (it serves: {listed or 'none'})")
