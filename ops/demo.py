"""`agentnas demo`: the whole pipeline on a built-in task, small enough for a laptop CPU.

Phase 1 -> 1.5 -> 2 -> 3 -> final training, with real NATS, real sandboxed training and the
real agent processes, on `addigits` (three 8x8 digits, 28 classes), with budgets cut down so
that it ends in a few minutes on two cores. Then the report and the exported model.

- With no LLM configured (or `--llm none`): the rule-based roles (planner, modularizer, slot
  planner); the demo says so.
- `--scripted`: the LLM roles run for real, through the real Anthropic SDK, against a local
  server that answers from a bundled transcript (ops/demo_transcript.json); the demo says
  plainly that the answers are scripted.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path

import msgspec

from agentnas.bus.config import Config, config_to_toml

TASK = "addigits"
TRANSCRIPT = Path(__file__).with_name("demo_transcript.json")

# Small budgets: a full run in minutes on a 2-core CPU (the paper's are 160 evaluations a phase).
SMALL = {
    "phase1": {"budget": 3, "n_parallel": 2, "top_k_full": 2, "rule_epochs": 6, "code_retries": 1},
    "slots": {"code_retries": 1},
    "evolution": {"budget": 8, "population": 4, "init_single_mutations": 1, "init_double_mutations": 1,
                  "init_random": 1, "generations": 2, "top_k_full": 2},
    "trainer": {"concurrency": 2},
    "proxy": {"wave2": "reported"},  # wave 2 for the winner and the seed only (the demo's minutes)
}
SCRIPTED = {**SMALL, "phase1": {**SMALL["phase1"], "budget": 1, "n_parallel": 1, "top_k_full": 1}}


def demo_config(base: Config, *, scripted: bool, base_url: str = "") -> Config:
    """The user's configuration with the demo's small budgets (and the scripted provider) on top."""
    overrides = SCRIPTED if scripted else SMALL
    changes = {section: msgspec.structs.replace(getattr(base, section), **values)
               for section, values in overrides.items()}
    if scripted:
        changes["llm"] = msgspec.structs.replace(base.llm, provider="anthropic", model="claude-sonnet-4-6",
                                                 base_url=base_url, api_key_env="ANTHROPIC_API_KEY", max_retries=1)
    return msgspec.structs.replace(base, **changes)


def write_config(config: Config, home: Path) -> Path:
    """The demo's configuration as a file: every service started for it reads the same."""
    path = home / "demo.toml"
    path.write_text(config_to_toml(msgspec.structs.replace(config, home="")))
    return path


def scripted_provider(stack: ExitStack) -> str:
    """Start the local scripted provider; returns its base URL. The agents find the key it
    expects in their environment (inherited from this process)."""
    from agentnas.ops.scripted_llm import scripted_llm

    server = stack.enter_context(scripted_llm(json.loads(TRANSCRIPT.read_text()), key="scripted-demo"))
    os.environ["ANTHROPIC_API_KEY"] = "scripted-demo"
    return server.base_url
