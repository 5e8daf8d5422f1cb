from pathlib import Path

import msgspec
import pytest

from agentnas.bus.space import load_space
from agentnas.bus import messages as m
from agentnas.bus import subjects

SENDER = m.Sender(agent="test", instance="t1")
SPACE = load_space(Path(__file__).parents[1] / "fixtures" / "space_example.json")

EXAMPLES = [
    m.RunRequested(task="addigits", phases=(1,), config={"phase1": {"budget": 5}}),
    m.RunStarted(),
    m.RunFinished(summary={"best": 1.5}),
    m.RunFailed(reason="budget exhausted"),
    m.AgentStarted(role="planner", pid=1, host="h"),
    m.AgentStopped(role="planner"),
    m.AgentHeartbeat(role="planner", busy=True),
    m.ServiceExited(service="recorder", pid=3, returncode=-9, uptime_s=1.0),
    m.ServiceRestarted(service="recorder", pid=4, attempt=1, backoff_s=0.5),
    m.EvaluationRequested(eval_id="e1", request="proxy", task="addigits", model_source="class Architecture: ..."),
    m.EvaluationStarted(eval_id="e1", device="cpu", worker="w1"),
    m.EvaluationProgress(eval_id="e1", epoch=1, epochs=3, train_loss=0.5, val_metric=12.0),
    m.EvaluationCompleted(eval_id="e1", status="ok", val_metric=10.0, params=1000),
    m.LlmRequested(call_id="c1", agent="planner", provider="anthropic", model="m", messages=[{"role": "user", "content": "hi"}]),
    m.LlmResponded(call_id="c1", agent="planner", content="hello", input_tokens=3, output_tokens=1),
    m.MessageRejected(subject="agentnas.evt.r.x", error="bad"),
    m.ExplorationRequested(question="class balance?"),
    m.ExplorationStepped(step=1, code="print(1)", output="1"),
    m.ExplorationReported(report="balanced", steps=2),
    m.ExperimentProposed(batch=1, proposals=[m.Proposal(arch_id="arch_001", description="resnet", recipe={"lr": 0.1})]),
    m.ArchitectureImplemented(arch_id="arch_001", source="class Architecture: ...", recipe={"lr": 0.1}),
    m.ArchitectureRejected(arch_id="arch_002", reason="shape", attempts=10),
    m.BatchSummarized(batch=1, summary="wider helped"),
    m.PhaseStopped(phase=1, reason="planner", arch_ids=["arch_001"]),
    m.SeedSelected(arch_id="arch_001", source="...", recipe={}, val_metric=3.2, eval_id="e9"),
    m.AgentOutputRejected(agent="planner", reason="no action tag", attempts=3),
    m.UncleanShutdown(pid=12, url="nats://127.0.0.1:4222", since=1.0),
    m.EvaluationInterrupted(eval_id="e1", reason="worker killed from outside", attempt=1, retry_in_s=5.0),
    m.PhaseStarted(phase="1.5"),
    m.ModularizerFinished(outcome="accepted", source="class Architecture: ...", attempts=2, eval_id="e3"),
    m.SlotPlanProposed(plan=1, space=SPACE, notes=["slot 'x': 9 alternatives, kept the first 8"]),
    m.AlternativeImplemented(plan=1, slot="stem", index=1, source="class SLOT_stem_1: ..."),
    m.AlternativeDropped(plan=1, slot="stem", index=2, reason="rejected: shape", attempts=11),
    m.SpaceAccepted(plan=1, space=SPACE, size=120, eval_id="e4"),
    m.SpaceRejected(plan=1, reason="the seed configuration does not reproduce the seed"),
    m.ConfigurationsProposed(algorithm="re", proposals=[m.ProposedConfiguration(
        index=0, config_id="cfg_0123456789ab", key="stem=0|lr=1.0", choices=(0,), lr_index=2, origin="seed")]),
]


def test_every_kind_has_an_example_and_round_trips():
    assert {m.tag_of(p) for p in EXAMPLES} == set(m.KINDS)
    for payload in EXAMPLES:
        env = m.make_event(payload, run_id="r1", sender=SENDER, causation_id="c0")
        back = m.decode(m.encode(env))
        assert back == env
        assert back.kind == m.tag_of(payload)


def test_tags_are_stable():
    # The log stores these forever: renaming one is a breaking change, so this list only grows.
    assert sorted(m.KINDS) == sorted([
        "run.requested", "run.started", "run.finished", "run.failed",
        "agent.started", "agent.stopped", "agent.heartbeat",
        "service.exited", "service.restarted",
        "evaluation.requested", "evaluation.started", "evaluation.progress", "evaluation.completed",
        "llm.requested", "llm.responded", "message.rejected",
        "exploration.requested", "exploration.stepped", "exploration.reported", "experiment.proposed",
        "architecture.implemented", "architecture.rejected", "batch.summarized", "phase.stopped",
        "seed.selected", "agent.output_rejected",
        "system.unclean_shutdown", "evaluation.interrupted", "phase.started", "modularizer.finished",
        "slot_plan.proposed", "alternative.implemented", "alternative.dropped", "space.accepted", "space.rejected",
        "configurations.proposed",
    ])


def test_unknown_kind_decodes_to_unknown_payload_and_re_encodes_unchanged():
    env = m.make_event(m.RunStarted(), run_id="r1", sender=SENDER)
    raw = m.encode(env).replace(b'"run.started"', b'"future.kind"')
    back = m.decode(raw)
    assert isinstance(back.payload, m.UnknownPayload)
    assert back.kind == "future.kind"
    assert m.decode(m.encode(back)).payload == back.payload


def test_new_fields_from_a_newer_writer_are_ignored():
    env = m.make_event(m.RunFailed(reason="x"), run_id="r1", sender=SENDER)
    data = msgspec.json.decode(m.encode(env))
    data["payload"]["added_in_v2"] = [1, 2]
    data["added_to_envelope"] = True
    back = m.decode(msgspec.json.encode(data))
    assert back.payload == m.RunFailed(reason="x")


@pytest.mark.parametrize("data", [b"not json", b"{}", b'{"id": 1}', b"[1,2]"])
def test_garbage_is_undecodable(data):
    with pytest.raises(m.UndecodableMessage):
        m.decode(data)


def test_known_kind_with_wrong_payload_type_is_undecodable():
    env = m.make_event(m.RunFailed(reason="x"), run_id="r1", sender=SENDER)
    bad = m.encode(env).replace(b'"reason":"x"', b'"reason":5')
    with pytest.raises(m.UndecodableMessage, match="run.failed"):
        m.decode(bad)


def test_payloads_are_frozen():
    payload = m.RunFailed(reason="x")
    with pytest.raises(AttributeError):
        payload.reason = "y"


def test_subjects_carry_run_and_kind():
    assert subjects.event_subject("r1", "evaluation.requested") == "agentnas.evt.r1.evaluation.requested"
    for bad in ["", "a.b", "a b", "*", ">", "x" * 65]:
        with pytest.raises(ValueError):
            subjects.event_subject(bad, "run.started")
