"""The LLM section of a run's state: the ledger and each agent's dialogue.

Every agent's conversation is rebuilt from its recorded calls (prompt, answer), the same
way in the original run, after a restart and in a re-execution. A turn is "consumed" once
the agent published a decision after it; an answered but unconsumed turn is reused after a
restart instead of asking the provider again.
"""

from __future__ import annotations

import msgspec

from agentnas.bus import messages as m


class LlmSection(msgspec.Struct, frozen=True, kw_only=True):
    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    # (prompt, answer) turns per agent, from the recorded calls
    dialogues: dict[str, tuple[tuple[str, str], ...]] = {}
    pending_calls: dict[str, tuple[str, str]] = {}  # call_id -> (agent, prompt)
    consumed: dict[str, int] = {}  # agent -> dialogue turns already acted upon by its events

    def unconsumed(self, agent: str) -> tuple[tuple[str, str], ...]:
        """Answered turns the agent has not acted upon yet (it died in between)."""
        return self.dialogues.get(agent, ())[self.consumed.get(agent, 0):]

    def history(self, agent: str, start: int = 0) -> tuple[tuple[str, str], ...]:
        return self.dialogues.get(agent, ())[start:self.consumed.get(agent, 0)]

    def turns(self, agent: str) -> int:
        return len(self.dialogues.get(agent, ()))


def consume(section: LlmSection, agent: str) -> LlmSection:
    """`agent` published a decision: every turn it has had so far is acted upon."""
    if agent not in section.dialogues:
        return section
    return msgspec.structs.replace(section, consumed={**section.consumed, agent: len(section.dialogues[agent])})


def fold_llm(section: LlmSection, env: m.Envelope) -> LlmSection:
    match env.payload:
        case m.LlmRequested(call_id=call_id, agent=agent, messages=messages):
            users = [msg for msg in messages if msg.get("role") == "user"]
            prompt = str(users[-1].get("content", "")) if users else ""
            return msgspec.structs.replace(section, pending_calls={**section.pending_calls, call_id: (agent, prompt)})
        case m.LlmResponded(call_id=call_id, content=content, error=error) as answer:
            section = msgspec.structs.replace(
                section, calls=section.calls + 1, errors=section.errors + (1 if error else 0),
                input_tokens=section.input_tokens + answer.input_tokens,
                output_tokens=section.output_tokens + answer.output_tokens,
                cost_usd=section.cost_usd + answer.cost_usd)
            if call_id not in section.pending_calls:
                return section
            agent, prompt = section.pending_calls[call_id]
            pending = {k: v for k, v in section.pending_calls.items() if k != call_id}
            if error:
                return msgspec.structs.replace(section, pending_calls=pending)
            turns = (*section.dialogues.get(agent, ()), (prompt, content))
            return msgspec.structs.replace(section, pending_calls=pending,
                                           dialogues={**section.dialogues, agent: turns})
    return section
