"""What the LLM layer is set up with and may spend: `LlmSettings` (the `[llm]` section with
`--llm` on top), the `Ledger` of a run's tokens and cost with its caps, and the layer's errors.

The bottom of the LLM layer: plain data, no provider SDK. `replay`, `providers` and the
recording client (`llm`) import it; it imports none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

import msgspec
import structlog

from agentnas.bus.config import LlmConfig

log = structlog.get_logger("agentnas.llm")

OnDivergence = Literal["stop", "live"]
STANDARD_KEY_ENVS = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


class LlmError(RuntimeError):
    """A provider or configuration problem, in one line."""


class BudgetExceeded(LlmError):
    """The run's token or cost cap is reached; the call was not made."""


# --- settings ------------------------------------------------------------------------------


class LlmSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What an agent needs to build its client; `from_config` applies `--llm`."""

    provider: Literal["anthropic", "openai"] = "anthropic"  # the live provider
    model: str = "claude-sonnet-4-6"
    base_url: str = ""
    api_key_env: str = "ANTHROPIC_API_KEY"
    temperature: float = 1.0
    max_tokens: int = 16000
    max_retries: int = 5
    backoff_s: float = 1.0  # first retry's delay; doubles each retry, at most 30 s
    timeout_s: float = 600.0
    token_cap: int = 0  # 0 = no cap
    cost_cap_usd: float = 0.0
    prices_usd_per_mtok: dict[str, tuple[float, float]] = msgspec.field(
        default_factory=lambda: dict(LlmConfig().prices_usd_per_mtok)
    )
    replay_path: str = ""  # set: answers come from this recorded log or transcript
    replay_run: str = ""
    on_divergence: OnDivergence = "stop"  # live: hand over to the live provider

    @property
    def replaying(self) -> bool:
        return bool(self.replay_path)

    @classmethod
    def from_config(
        cls, config: LlmConfig, llm: str | None = None, on_divergence: OnDivergence = "stop"
    ) -> "LlmSettings":
        """The `[llm]` section, with `--llm PROVIDER[:MODEL]` (or `replay:PATH[#RUN]`) on top."""
        provider, rest = parse_provider(llm or config.provider)
        live, model = provider, rest or config.model
        replay_path = replay_run = ""
        if provider == "replay":
            replay_path, _, replay_run = rest.partition("#")
            # The live provider (for --on-divergence live) is the configured one.
            base = config.provider if not config.provider.startswith("replay:") else "anthropic"
            live, live_model = parse_provider(base)
            model = live_model or config.model
        if on_divergence not in ("stop", "live"):
            raise LlmError(f"--on-divergence must be 'stop' or 'live', not '{on_divergence}'")
        key_env = config.api_key_env
        if key_env in STANDARD_KEY_ENVS.values():
            key_env = STANDARD_KEY_ENVS[live]  # the default variable follows the provider
        return cls(
            provider=live,  # type: ignore[arg-type]
            model=model,
            base_url=config.base_url,
            api_key_env=key_env,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            max_retries=config.max_retries,
            token_cap=config.token_cap,
            cost_cap_usd=config.cost_cap_usd,
            prices_usd_per_mtok=dict(config.prices_usd_per_mtok),
            replay_path=replay_path,
            replay_run=replay_run,
            on_divergence=on_divergence,
        )


def parse_provider(text: str) -> tuple[str, str]:
    """`anthropic`, `anthropic:MODEL`, `openai[:MODEL]`, `replay:PATH[#RUN]` -> (provider, rest).

    rest is the model ("" = the configured one) or, for replay, `PATH[#RUN]`."""
    name, _, rest = text.strip().partition(":")
    if name == "replay":
        if not rest.partition("#")[0]:
            raise LlmError("replay needs a path: --llm replay:PATH[#RUN]")
        return name, rest
    if name not in STANDARD_KEY_ENVS:
        raise LlmError(
            f"unknown LLM provider '{text}' (use anthropic[:MODEL], openai:MODEL or replay:PATH[#RUN])"
        )
    return name, rest.strip()


# --- ledger --------------------------------------------------------------------------------


class SpentSoFar(Protocol):
    """The run's LLM totals as a fold of its log has them (any state with these attributes)."""

    @property
    def input_tokens(self) -> int: ...

    @property
    def output_tokens(self) -> int: ...

    @property
    def cost_usd(self) -> float: ...


class Ledger:
    """Running tokens and cost of a run, and its caps.

    Seed it from the folded log (`seed_from(state)`) so a restarted agent keeps counting;
    agents in other processes add to the same run, so re-seed when the state is re-folded.
    """

    def __init__(
        self,
        prices: Mapping[str, tuple[float, float]] | None = None,
        *,
        token_cap: int = 0,
        cost_cap_usd: float = 0.0,
    ) -> None:
        self.prices = dict(prices or {})
        self.token_cap = token_cap
        self.cost_cap_usd = cost_cap_usd
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self._unpriced: set[str] = set()

    @classmethod
    def for_settings(cls, settings: LlmSettings, state: SpentSoFar | None = None) -> "Ledger":
        ledger = cls(
            settings.prices_usd_per_mtok, token_cap=settings.token_cap, cost_cap_usd=settings.cost_cap_usd
        )
        if state is not None:
            ledger.seed_from(state)
        return ledger

    def seed_from(self, state: SpentSoFar) -> None:
        """Take the totals of the folded log (which already include this agent's calls)."""
        self.input_tokens = state.input_tokens
        self.output_tokens = state.output_tokens
        self.cost_usd = state.cost_usd

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def price(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """US$ for one call; a dated model name (`claude-x-20260101`) uses its base name's price."""
        rates = self.prices.get(model)
        if rates is None:
            prefixes = [name for name in self.prices if model.startswith(name)]
            rates = self.prices[max(prefixes, key=len)] if prefixes else None
        if rates is None:
            if model not in self._unpriced:
                self._unpriced.add(model)
                log.warning("llm.unpriced_model", model=model, note="cost counted as 0")
            return 0.0
        return (input_tokens * rates[0] + output_tokens * rates[1]) / 1e6

    def charge(self, model: str, input_tokens: int, output_tokens: int, *, free: bool = False) -> float:
        """Add one call; returns its cost (0 when `free`, e.g. a replayed answer)."""
        cost = 0.0 if free else self.price(model, input_tokens, output_tokens)
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cost_usd += cost
        return cost

    def check(self) -> None:
        """Raise BudgetExceeded when a cap is already reached, so no further call is made."""
        if self.token_cap and self.tokens >= self.token_cap:
            raise BudgetExceeded(f"LLM token cap reached: {self.tokens} of {self.token_cap} tokens used")
        if self.cost_cap_usd and self.cost_usd >= self.cost_cap_usd:
            raise BudgetExceeded(
                f"LLM cost cap reached: US${self.cost_usd:.4f} of US${self.cost_cap_usd:.4f} spent"
            )
