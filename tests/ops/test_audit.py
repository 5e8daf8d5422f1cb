"""The LLM decision log: pairing, order, effects, totals, filters, and how it prints."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from agentnas.bus import messages as m
from agentnas.ops.audit import (
    AuditError,
    agent_totals,
    audit_records,
    elide,
    render_audit,
)
from agentnas.store.log import EventLog

RUN = "r1"
PLANNER = m.Sender(agent="planner")
EXECUTOR = m.Sender(agent="code_executor")
TRAINER = m.Sender(agent="trainer")
SYSTEM_PLANNER = "You plan architectures. " * 3
LONG_USER = "head-marker " + "x" * 5000 + " tail-marker"


def ev(payload, sender, cause=None):
    return m.make_event(payload, run_id=RUN, sender=sender, causation_id=cause.id if cause else None)


def request(call_id, agent, messages, template="", cause=None, **kw):
    sender = m.Sender(agent=agent)
    return ev(
        m.LlmRequested(call_id=call_id, agent=agent, provider="anthropic", model="claude-x",
                       messages=messages, template=template, **kw),
        sender, cause,
    )


def response(req, content="", **kw):
    p = req.payload
    return ev(m.LlmResponded(call_id=p.call_id, agent=p.agent, content=content, **kw), req.sender, req)


def build_log(path):
    """planner call 1 -> proposals -> code executor call 2 (error) and 3 (ok) -> implemented,
    validation; planner call 4 shares call 1's conversation; call 5 never answered."""
    events = [ev(m.RunRequested(task="addigits"), PLANNER), ev(m.RunStarted(), PLANNER)]
    sys_msg = {"role": "system", "content": SYSTEM_PLANNER}
    user1 = {"role": "user", "content": LONG_USER, "source": "user"}
    q1 = request("c-plan-1", "planner", [sys_msg, user1], template="planner_turn")
    a1 = response(q1, "<action>EXPERIMENT</action>", stop_reason="end_turn",
                  input_tokens=1000, output_tokens=200, latency_s=2.5, cost_usd=0.01)
    proposed = ev(m.ExperimentProposed(batch=1, proposals=[
        m.Proposal(arch_id="arch_001", description="a small CNN"),
        m.Proposal(arch_id="arch_002", description="an MLP"),
    ]), PLANNER, a1)
    # The code executor answers the proposal: one provider error, then a working answer.
    q2 = request("c-exec-1", "code_executor", [{"role": "user", "content": "write arch_001", "source": "user"}],
                 template="code_executor_write", cause=proposed)
    a2 = response(q2, error="anthropic: claude-x: overloaded (after 3 attempts)")
    q3 = request("c-exec-2", "code_executor", [{"role": "user", "content": "write arch_001", "source": "user"}],
                 template="code_executor_write", cause=proposed)
    a3 = response(q3, "class Architecture: ...", input_tokens=300, output_tokens=150, latency_s=1.0, cost_usd=0.002)
    validate = ev(m.EvaluationRequested(eval_id="ev-val-1", request="validate", task="addigits",
                                        model_source="class Architecture: ...", arch_id="arch_001"), EXECUTOR, a3)
    progress = ev(m.EvaluationProgress(eval_id="ev-val-1", epoch=1, epochs=1, train_loss=1.0), TRAINER, validate)
    done = ev(m.EvaluationCompleted(eval_id="ev-val-1", status="ok", request="validate", arch_id="arch_001",
                                    val_metric=0.5), TRAINER, validate)
    implemented = ev(m.ArchitectureImplemented(arch_id="arch_001", source="...", attempts=1,
                                               validation_eval_id="ev-val-1"), EXECUTOR, a3)
    summary_step = ev(m.ExplorationStepped(step=3, code="print(1)", output="1"), PLANNER, a1)
    # Same conversation continued: system and first user message repeat.
    q4 = request("c-plan-2", "planner", [sys_msg, user1, {"role": "assistant", "content": "<action>EXPERIMENT</action>",
                                                          "source": "planner"},
                                         {"role": "user", "content": "results of batch 1", "source": "user"}],
                 template="planner_turn", cause=done)
    a4 = response(q4, "<action>STOP</action>", input_tokens=1500, output_tokens=50, latency_s=1.5, cost_usd=0.02)
    stopped = ev(m.PhaseStopped(phase=1, reason="planner STOP", arch_ids=["arch_001"]), PLANNER, a4)
    q5 = request("c-plan-3", "planner", [{"role": "system", "content": SYSTEM_PLANNER},
                                         {"role": "user", "content": "summarise", "source": "user"}])
    other_run = m.make_event(m.LlmRequested(call_id="c-other", agent="evolver", provider="p", model="m",
                                            messages=[]), run_id="r2", sender=PLANNER)
    events += [q1, a1, proposed, q2, a2, q3, a3, validate, progress, done, implemented, summary_step,
               q4, a4, stopped, q5, other_run]
    with EventLog(path) as log:
        log.append(events)
    return EventLog(path, readonly=True)


@pytest.fixture
def log(tmp_path):
    event_log = build_log(tmp_path / "events.sqlite")
    yield event_log
    event_log.close()


def render(event_log, run_id=RUN, **kw):
    out = io.StringIO()
    console = Console(file=out, width=100)
    render_audit(event_log, run_id, agent=kw.pop("agent", None), full=kw.pop("full", False), console=console, **kw)
    return out.getvalue()


# --- records ---------------------------------------------------------------------------------


def test_calls_are_paired_by_call_id_in_request_order(log):
    records = audit_records(log, RUN)
    assert [r.call_id for r in records] == ["c-plan-1", "c-exec-1", "c-exec-2", "c-plan-2", "c-plan-3"]
    assert [r.index for r in records] == [1, 2, 3, 4, 5]
    first = records[0]
    assert (first.agent, first.provider, first.model, first.template) == ("planner", "anthropic", "claude-x", "planner_turn")
    assert first.messages[1]["content"] == LONG_USER  # records keep everything; only printing elides
    assert (first.answer, first.stop_reason, first.input_tokens, first.output_tokens) == (
        "<action>EXPERIMENT</action>", "end_turn", 1000, 200)
    assert (first.latency_s, first.cost_usd, first.error, first.answered) == (2.5, 0.01, "", True)


def test_error_and_missing_response_are_kept(log):
    records = {r.call_id: r for r in audit_records(log, RUN)}
    failed = records["c-exec-1"]
    assert failed.answered and failed.answer == "" and "overloaded" in failed.error
    pending = records["c-plan-3"]
    assert not pending.answered and pending.error == "" and pending.caused == []


def test_caused_lists_descendants_with_key_fields(log):
    records = {r.call_id: r for r in audit_records(log, RUN)}
    planner = records["c-plan-1"].caused
    assert planner[0] == "experiment.proposed batch 1: arch_001 (a small CNN), arch_002 (an MLP)"
    # The calls the proposal led to are named, one level down, and not descended into.
    assert "  llm.requested call #2 by code_executor (claude-x)" in planner
    assert "  llm.requested call #3 by code_executor (claude-x)" in planner
    assert not any("architecture.implemented" in line for line in planner)
    assert any(line.startswith("exploration.stepped step 3 ok") for line in planner)

    executor = records["c-exec-2"].caused
    assert executor[0] == "evaluation.requested ev-val-1 validate arch_001 (phase 1)"
    assert "  evaluation.completed ev-val-1 arch_001 validate ok val 0.5" in executor
    assert not any("evaluation.progress" in line for line in executor)  # noise is not listed
    assert "architecture.implemented arch_001 (attempts 1, validated by ev-val-1)" in executor
    assert records["c-exec-1"].caused == []
    assert records["c-plan-2"].caused == ["phase.stopped phase 1 (planner STOP): full training of the top 1: arch_001"]


def test_cause_names_the_event_that_led_to_the_call(log):
    records = {r.call_id: r for r in audit_records(log, RUN)}
    assert records["c-exec-1"].cause == "experiment.proposed batch 1: arch_001 (a small CNN), arch_002 (an MLP)"
    assert records["c-plan-2"].cause == "evaluation.completed ev-val-1 arch_001 validate ok val 0.5"
    assert records["c-plan-1"].cause == ""


def test_agent_filter_keeps_run_numbering(log):
    records = audit_records(log, RUN, agent="code_executor")
    assert [(r.index, r.call_id) for r in records] == [(2, "c-exec-1"), (3, "c-exec-2")]


def test_unknown_agent_names_the_agents_present(log):
    with pytest.raises(AuditError, match=r"agent 'evolver'.*agents present: code_executor, planner"):
        audit_records(log, RUN, agent="evolver")
    assert issubclass(AuditError, ValueError)


def test_unknown_run_is_an_error(log):
    with pytest.raises(AuditError, match="run 'nope' does not exist"):
        audit_records(log, "nope")


def test_totals_per_agent(log):
    totals = {t.agent: t for t in agent_totals(audit_records(log, RUN))}
    assert list(totals) == ["planner", "code_executor"]
    p, e = totals["planner"], totals["code_executor"]
    assert (p.calls, p.errors, p.input_tokens, p.output_tokens) == (3, 0, 2500, 250)
    assert p.cost_usd == pytest.approx(0.03) and p.latency_s == pytest.approx(4.0)
    assert (e.calls, e.errors, e.input_tokens, e.output_tokens) == (2, 1, 300, 150)


def test_response_without_request_still_shows(tmp_path):
    with EventLog(tmp_path / "e.sqlite") as w:
        w.append([ev(m.RunStarted(), PLANNER),
                  ev(m.LlmResponded(call_id="lone", agent="planner", content="hi", input_tokens=5), PLANNER)])
    with EventLog(tmp_path / "e.sqlite", readonly=True) as r:
        (record,) = audit_records(r, RUN)
    assert (record.call_id, record.answer, record.model, record.messages, record.answered) == ("lone", "hi", "?", [], True)


# --- printing --------------------------------------------------------------------------------


def test_render_shows_calls_answers_effects_and_totals(log):
    text = render(log)
    assert "\x1b[" not in text  # no colour codes when not a terminal
    assert "LLM decision log of run r1: 5 calls" in text
    assert "call #1  planner  anthropic/claude-x  template planner_turn" in text
    assert "answer (stop: end_turn):" in text and "<action>EXPERIMENT</action>" in text
    assert "tokens in 1,000 out 200   latency 2.50 s   cost $0.0100" in text
    assert "error: anthropic: claude-x: overloaded (after 3 attempts)" in text
    assert "no response recorded" in text
    assert "asked after: experiment.proposed batch 1: arch_001 (a small CNN), arch_002 (an MLP)" in text
    assert "caused:" in text and "  experiment.proposed batch 1: arch_001 (a small CNN), arch_002 (an MLP)" in text
    totals = text[text.index("totals"):]
    for row in ("planner", "code_executor", "all"):
        assert row in totals
    assert "$0.0320" in totals  # 0.01 + 0.002 + 0.02


def test_render_elides_long_content_unless_full(log):
    short = render(log)
    assert "head-marker" in short and "tail-marker" in short
    assert "characters elided" in short and "x" * 2000 not in short
    assert all(len(line) <= 100 for line in short.splitlines())
    assert not any(line.endswith(" ") for line in short.splitlines() if "totals" not in line)
    full = render(log, full=True)
    assert "characters elided" not in full
    assert "x" * 2000 in "".join(full.split())  # rich wraps and indents at 100 columns


def test_render_shows_system_prompt_once_and_collapses_repeats(log):
    text = render(log, full=True)
    assert text.count("You plan architectures.") == 3  # once, three repeats in one message
    assert "messages 1-2 as in call #1" in text
    assert "system: unchanged since call #1" in text  # call 5 starts a new conversation
    assert text.count("head-marker") == 1
    assert "results of batch 1" in text


def test_render_filters_by_agent(log):
    text = render(log, agent="code_executor")
    assert "2 calls by code_executor" in text
    assert "call #2  code_executor" in text and "call #1 " not in text
    assert "You plan architectures" not in text


def test_render_run_without_llm_calls(tmp_path):
    with EventLog(tmp_path / "e.sqlite") as w:
        w.append([ev(m.RunStarted(), PLANNER)])
    with EventLog(tmp_path / "e.sqlite", readonly=True) as r:
        assert render(r).strip() == f"no LLM calls in run {RUN}"


def test_markup_in_llm_text_is_printed_literally(tmp_path):
    with EventLog(tmp_path / "e.sqlite") as w:
        q = request("c1", "planner", [{"role": "user", "content": "use [bold]x[/bold] and [/]"}])
        w.append([q, response(q, "list[int] [red]")])
    with EventLog(tmp_path / "e.sqlite", readonly=True) as r:
        text = render(r)
    assert "use [bold]x[/bold] and [/]" in text and "list[int] [red]" in text


def test_elide_keeps_head_and_tail():
    text = "a" * 10 + "b" * 100 + "c" * 10
    out = elide(text, 20)
    assert out.startswith("a" * 10) and out.endswith("c" * 10) and "100 characters elided" in out
    assert elide("short", 20) == "short" and elide(text, 0) == text


def test_terminal_output_is_styled(log):
    out = io.StringIO()
    render_audit(log, RUN, agent=None, full=False,
                 console=Console(file=out, width=100, force_terminal=True, color_system="standard"))
    assert "\x1b[" in out.getvalue() and "call #1" in out.getvalue()
