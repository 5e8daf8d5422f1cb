"""One LLM turn through autogen-agentchat, with the conversation rebuilt from the log.

Agents keep no conversation in memory: each turn gets the history as (prompt, answer)
pairs reconstructed from events, so a restarted agent asks exactly what it would have
asked (and the recording client can serve answers already in the log). Unusable answers
are re-asked a bounded number of times inside the same conversation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import TextMessage
from autogen_core import CancellationToken
from autogen_core.model_context import UnboundedChatCompletionContext
from autogen_core.models import AssistantMessage, UserMessage

from agentnas.agents.llm import RecordingClient
from agentnas.agents.prompts import Rendered
from agentnas.agents.protocol import MalformedOutput, reask_message

T = TypeVar("T")
MAX_REASKS = 2


class Unusable(Exception):
    """The answers stayed unusable after the re-asks; `reason` is the last parser complaint."""

    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason, self.attempts = reason, attempts


async def ask(client: RecordingClient, agent: str, system: Rendered, history: Sequence[tuple[str, str]],
              prompt: Rendered) -> str:
    """Send `prompt` after `history` and return the answer text."""
    initial = []
    for user, answer in history:
        initial.append(UserMessage(content=user, source="user"))
        initial.append(AssistantMessage(content=answer, source=agent))
    assistant = AssistantAgent(agent, model_client=client, system_message=system.text,
                               model_context=UnboundedChatCompletionContext(initial_messages=initial))
    with client.using_template(prompt.template, prompt.template_hash):
        response = await assistant.on_messages([TextMessage(content=prompt.text, source="user")], CancellationToken())
    content = response.chat_message.content
    return content if isinstance(content, str) else str(content)


async def ask_parsed(client: RecordingClient, agent: str, system: Rendered, history: Sequence[tuple[str, str]],
                     prompt: Rendered, parse: Callable[[str], T],
                     answered: Sequence[tuple[str, str]] = ()) -> tuple[T, str, list[tuple[str, str]]]:
    """Ask and parse; on MalformedOutput re-ask (bounded). Returns (parsed, answer, turns added).

    `answered`: turns already in the log that the agent did not act upon (it was killed after
    the answer arrived); an identical prompt takes its recorded answer instead of a new call.
    """
    turns: list[tuple[str, str]] = []
    current = prompt
    leftover = list(answered)
    for attempt in range(1, MAX_REASKS + 2):
        if leftover and leftover[0][0] == current.text:
            answer = leftover.pop(0)[1]
        else:
            leftover = []
            answer = await ask(client, agent, system, [*history, *turns], current)
        try:
            return parse(answer), answer, [*turns, (current.text, answer)]
        except MalformedOutput as exc:
            turns.append((current.text, answer))
            if attempt > MAX_REASKS:
                raise Unusable(exc.reason, attempt) from None
            text = reask_message(exc, attempt, MAX_REASKS + 1)
            current = Rendered(text=text, template="shared_reask", template_hash="")
    raise AssertionError("unreachable")
