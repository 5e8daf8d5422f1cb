"""Bounded re-asks of unusable answers, through the real SDK against the fake provider."""

import json

import pytest

from agentnas.agents.conversation import Unusable, ask_parsed
from agentnas.agents.llm import make_client
from agentnas.agents.llm_settings import Ledger, LlmSettings
from agentnas.agents.prompts import Rendered
from agentnas.agents.protocol import parse_code, parse_planner
from agentnas.ops.scripted_llm import scripted_llm

SYSTEM = Rendered(text="agentnas-agent: planner\nYou plan.", template="planner_system", template_hash="h")
PROMPT = Rendered(text="turn 1", template="planner_turn", template_hash="h")
GOOD = "<action>EXPLORE</action>\n<question>How balanced are the labels?</question>"


class Events:
    def __init__(self):
        self.items = []

    async def __call__(self, payload):
        self.items.append(payload)


def client(server, emit):
    settings = LlmSettings(base_url=server.base_url, api_key_env="FAKE_KEY", max_retries=0)
    return make_client(settings, "planner", emit, Ledger())


def parse(text):
    return parse_planner(text, n_parallel=2, known_arch_ids=[])


@pytest.mark.parametrize("bad", [
    "I think we should try a ResNet.",                         # prose only
    '{"action": "EXPERIMENT", "proposals": []}',               # JSON where tags are expected
    "<action>DANCE</action>",                                  # unknown action
    "<question>no action tag</question>",                      # missing tags
])
async def test_a_malformed_answer_is_re_asked_then_accepted(monkeypatch, bad):
    monkeypatch.setenv("FAKE_KEY", "test-key")
    events = Events()
    with scripted_llm([{"agent": "planner", "reply": bad}, {"agent": "planner", "reply": GOOD}], key="test-key") as server:
        decision, answer, turns = await ask_parsed(client(server, events), "planner", SYSTEM, [], PROMPT, parse)
        second = server.calls()[1]
    assert decision.question.startswith("How balanced") and answer == GOOD
    assert [t[1] for t in turns] == [bad, GOOD]
    body = json.dumps(second.body)
    assert "turn 1" in body and json.dumps(bad)[1:-1] in body  # the re-ask continues the conversation


async def test_answers_that_stay_unusable_end_as_a_recorded_failure(monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "test-key")
    events = Events()
    script = [{"agent": "planner", "reply": "no idea"}] * 3
    with scripted_llm(script, key="test-key") as server:
        with pytest.raises(Unusable) as info:
            await ask_parsed(client(server, events), "planner", SYSTEM, [], PROMPT, parse)
        assert server.remaining() == 0
    assert info.value.attempts == 3 and "action" in info.value.reason.lower()
    assert sum(1 for e in events.items if type(e).__name__ == "LlmResponded") == 3


async def test_code_without_an_architecture_class_is_re_asked(monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "test-key")
    no_class = "```python\nimport torch\nclass Net(torch.nn.Module):\n    pass\n```"
    good = "```python\nimport torch\nfrom torch import nn\n\nclass Architecture(nn.Module):\n    def __init__(self):\n        super().__init__()\n\n    def forward(self, x):\n        return x\n```\n```json\n{\"epochs\": 2}\n```"
    with scripted_llm([{"agent": "planner", "reply": no_class}, {"agent": "planner", "reply": good}], key="test-key") as server:
        answer, _, _ = await ask_parsed(client(server, Events()), "planner", SYSTEM, [], PROMPT, parse_code)
    assert "class Architecture" in answer.source and answer.recipe == {"epochs": 2}


async def test_an_answer_already_in_the_log_is_not_asked_again(monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "test-key")
    with scripted_llm([], key="test-key") as server:
        decision, _, _ = await ask_parsed(client(server, Events()), "planner", SYSTEM, [], PROMPT, parse,
                                          answered=[("turn 1", GOOD)])
        assert server.calls() == []
    assert decision.question.startswith("How balanced")
