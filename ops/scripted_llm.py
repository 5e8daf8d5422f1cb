"""A local stand-in for LLM providers: the Anthropic Messages API and the OpenAI
chat-completions API, answering from a scripted transcript.

The real SDK clients talk to it through their base URL, so the tests and `agentnas demo
--scripted` exercise the same wire formats, headers and error shapes as production, with
no network and no key. It is never a provider of a real run: its answers are scripted.

Script: a list of rules, each one of
    {"agent": "planner", "reply": "text", "match": "optional substring"}
    {"agent": "planner", "status": 529}          # one provider error (429, 500, 503, 529)
    {"agent": "planner", "reply": "...", "delay_s": 30}   # answered after 30 s
Each agent's rules are served in order, one per request. A request names its agent with a
line `agentnas-agent: <name>` in the system prompt (or, failing that, the first message).
`match`, when given, must occur in the last user message. An unknown agent, an exhausted
script or a failed match is answered with HTTP 500, a clear body and `x-should-retry: false`
(and kept in `errors`).

Token counts are whitespace-separated words: input = system prompt + every message's text,
output = the reply, so tests can assert usage exactly.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

DEFAULT_MODELS = ("claude-sonnet-4-6", "local-model")
AGENT_MARKER = re.compile(r"^\s*agentnas-agent:\s*(\S+)\s*$", re.MULTILINE)

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    529: "overloaded_error",
}
_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
    529: "server_error",
}


def words(text: str) -> int:
    """The fake token count: whitespace-separated words."""
    return len(text.split())


def text_of(content: Any) -> str:
    """Plain text of a message's content in either API (a string or a list of blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif isinstance(block, dict) and isinstance(block.get("content"), (str, list)):
                parts.append(text_of(block["content"]))  # tool results
        return "\n".join(parts)
    return ""


@dataclass(frozen=True)
class Received:
    """One HTTP request the server received (for assertions such as 'no provider call')."""

    method: str
    path: str
    api: str  # anthropic | openai | unknown
    headers: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class _Rule:
    agent: str
    reply: str | None = None
    match: str | None = None
    status: int | None = None
    delay_s: float = 0.0  # wait this long before answering (a slow provider, for fault tests)


@dataclass
class _Parsed:
    model: str
    system: str
    messages: list[tuple[str, str]]  # (role, text)
    extra: dict[str, Any] = field(default_factory=dict)


def _rules(script: Iterable[dict[str, Any]]) -> dict[str, deque[_Rule]]:
    by_agent: dict[str, deque[_Rule]] = {}
    for number, raw in enumerate(script):
        unknown = set(raw) - {"agent", "reply", "match", "status", "delay_s"}
        if unknown or "agent" not in raw or ("reply" in raw) == ("status" in raw):
            raise ValueError(f"script rule {number}: need 'agent' and one of 'reply'/'status', got {sorted(raw)}")
        by_agent.setdefault(raw["agent"], deque()).append(_Rule(**raw))
    return by_agent


class ScriptedLlmServer:
    """Serve `script` on a free loopback port from a background thread."""

    def __init__(
        self,
        script: Iterable[dict[str, Any]],
        *,
        key: str = "test-key",
        models: Iterable[str] = DEFAULT_MODELS,
    ) -> None:
        self.key = key
        self.models = list(models)
        self.requests: list[Received] = []
        self.errors: list[str] = []  # script problems answered with HTTP 500
        self._script = _rules(script)
        self._lock = threading.Lock()
        self._counter = 0
        self._url = ""
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Root URL; the Anthropic SDK appends /v1/messages itself."""
        assert self._url, "server not started"
        return self._url

    @property
    def openai_base_url(self) -> str:
        """The OpenAI SDK expects the /v1 prefix in its base URL."""
        return self.base_url + "/v1"

    def start(self) -> "ScriptedLlmServer":
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        host, port = self._httpd.server_address[:2]
        self._url = f"http://{host}:{port}"  # kept after stop, for messages that name it
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "ScriptedLlmServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- script ----------------------------------------------------------------------

    def remaining(self, agent: str | None = None) -> int:
        with self._lock:
            if agent is not None:
                return len(self._script.get(agent, ()))
            return sum(len(q) for q in self._script.values())

    def calls(self, api: str | None = None) -> list[Received]:
        """Generation requests (not model look-ups), optionally of one API."""
        gen = [r for r in self.requests if r.method == "POST"]
        return [r for r in gen if api is None or r.api == api]

    def _next(self, parsed: _Parsed) -> tuple[int, str]:
        """(status, reply) for a generation request, or (500, problem) for a script error."""
        agent = _agent_of(parsed)
        last_user = next((t for role, t in reversed(parsed.messages) if role == "user"), "")
        with self._lock:
            self._counter += 1
            if agent is None:
                problem = "no 'agentnas-agent: <name>' line in the system prompt or first message"
            elif agent not in self._script:
                problem = f"no script for agent '{agent}'"
            elif not self._script[agent]:
                problem = f"script for agent '{agent}' is exhausted"
            else:
                # The first rule whose `match` fits (rules without one fit anything): an agent
                # working on several things at once (the Code Executor) is served per thing.
                queue = self._script[agent]
                rule = next((r for r in queue if r.match is None or r.match in last_user), None)
                if rule is None:
                    problem = (
                        f"agent '{agent}': no remaining rule matches the last user message"
                        f" {last_user[:120]!r}"
                    )
                else:
                    queue.remove(rule)
                    if rule.delay_s:
                        self._lock.release()  # other agents are served meanwhile
                        try:
                            time.sleep(rule.delay_s)
                        finally:
                            self._lock.acquire()
                    if rule.status is not None:
                        return rule.status, f"scripted error {rule.status}"
                    return 200, rule.reply or ""
            self.errors.append(problem)
            return 500, f"fake llm server: {problem}"


def _agent_of(parsed: _Parsed) -> str | None:
    for text in (parsed.system, parsed.messages[0][1] if parsed.messages else ""):
        found = AGENT_MARKER.search(text)
        if found:
            return found.group(1)
    return None


def _input_tokens(parsed: _Parsed) -> int:
    return words(parsed.system) + sum(words(text) for _, text in parsed.messages)


class _Handler(BaseHTTPRequestHandler):
    fake: ScriptedLlmServer  # set on the bound subclass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    # --- plumbing ----------------------------------------------------------------------

    def _api(self) -> str:
        if "x-api-key" in self.headers or "anthropic-version" in self.headers:
            return "anthropic"
        if "authorization" in self.headers:
            return "openai"
        return "unknown"

    def _send(self, status: int, body: dict[str, Any], *, retry: bool | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if retry is not None:
            self.send_header("x-should-retry", "true" if retry else "false")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(
        self, api: str, status: int, message: str, code: str | None = None, *, retry: bool | None = None
    ) -> None:
        if api == "openai":
            error = {"message": message, "type": _OPENAI_ERROR_TYPES.get(status, "server_error"), "code": code}
            self._send(status, {"error": error}, retry=retry)
        else:
            error = {"type": _ANTHROPIC_ERROR_TYPES.get(status, "api_error"), "message": message}
            self._send(status, {"type": "error", "error": error}, retry=retry)

    def _record(self, body: dict[str, Any] | None) -> tuple[str, str]:
        api = self._api()
        path = urlsplit(self.path).path
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.fake.requests.append(Received(self.command, path, api, headers, body))
        return api, path

    def _authorised(self, api: str) -> bool:
        bearer = self.headers.get("authorization") == f"Bearer {self.fake.key}"
        if api == "anthropic":
            # SDK 0.x sends x-api-key; 2.x sends the key as a bearer token
            ok = self.headers.get("x-api-key") == self.fake.key or bearer
            message = "invalid x-api-key"
        else:
            ok = bearer
            message = "Incorrect API key provided"
        if not ok:
            self._error(api, 401, message, "invalid_api_key")
        return ok

    # --- GET: model look-ups -------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        api, path = self._record(None)
        if not self._authorised(api):
            return
        if path == "/v1/models":
            self._send(200, self._model_list(api))
        elif path.startswith("/v1/models/"):
            name = path.removeprefix("/v1/models/")
            if name not in self.fake.models:
                self._error(api, 404, f"model: {name}", "model_not_found")
            else:
                self._send(200, _model_object(api, name))
        else:
            self._error(api, 404, f"no route GET {path}")

    def _model_list(self, api: str) -> dict[str, Any]:
        data = [_model_object(api, name) for name in self.fake.models]
        if api == "openai":
            return {"object": "list", "data": data}
        last = data[-1]["id"] if data else None
        first = data[0]["id"] if data else None
        return {"data": data, "has_more": False, "first_id": first, "last_id": last}

    # --- POST: generations ---------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("content-length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            body = None
        api, path = self._record(body)
        if not isinstance(body, dict):
            self._error(api, 400, "body is not a JSON object")
            return
        if not self._authorised(api):
            return
        if body.get("stream"):
            self._error(api, 400, "fake llm server: streaming is not supported")
            return
        if path == "/v1/messages":
            parsed = _parse_anthropic(body)
        elif path == "/v1/chat/completions":
            parsed = _parse_openai(body)
        else:
            self._error(api, 404, f"no route POST {path}")
            return
        if parsed.model not in self.fake.models:
            self._error(api, 404, f"model: {parsed.model}", "model_not_found")
            return
        status, text = self.fake._next(parsed)
        if status != 200:
            # A script problem is a test bug: tell the client not to retry it.
            script_error = status == 500 and text.startswith("fake llm server:")
            self._error(api, status, text, retry=False if script_error else None)
            return
        usage = (_input_tokens(parsed), words(text))
        if path == "/v1/messages":
            self._send(200, _anthropic_message(self.fake._counter, parsed.model, text, usage))
        else:
            self._send(200, _openai_completion(self.fake._counter, parsed.model, text, usage))


def _parse_anthropic(body: dict[str, Any]) -> _Parsed:
    messages = [(m.get("role", ""), text_of(m.get("content"))) for m in body.get("messages", [])]
    return _Parsed(model=str(body.get("model", "")), system=text_of(body.get("system", "")), messages=messages)


def _parse_openai(body: dict[str, Any]) -> _Parsed:
    system, messages = [], []
    for m in body.get("messages", []):
        if m.get("role") in ("system", "developer"):
            system.append(text_of(m.get("content")))
        else:
            messages.append((m.get("role", ""), text_of(m.get("content"))))
    return _Parsed(model=str(body.get("model", "")), system="\n".join(system), messages=messages)


def _model_object(api: str, name: str) -> dict[str, Any]:
    if api == "openai":
        return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
    return {"type": "model", "id": name, "display_name": name, "created_at": "2025-01-01T00:00:00Z"}


def _anthropic_message(n: int, model: str, text: str, usage: tuple[int, int]) -> dict[str, Any]:
    return {
        "id": f"msg_fake_{n:04d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }


def _openai_completion(n: int, model: str, text: str, usage: tuple[int, int]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fake-{n:04d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
    }


@contextmanager
def scripted_llm(
    script: Iterable[dict[str, Any]],
    key: str = "test-key",
    models: Iterable[str] = DEFAULT_MODELS,
) -> Iterator[ScriptedLlmServer]:
    """Start a fake provider for the block; yields the server (`.base_url`, `.requests`)."""
    server = ScriptedLlmServer(script, key=key, models=models).start()
    try:
        yield server
    finally:
        server.stop()

