"""A recorded run's evaluation results, offered to its re-execution (trainer_daemon/recorded.py).

`agentnas run --llm replay:LOG#RUN` replays every LLM answer; with the results offered here,
the evaluations those answers ask for again are served from the recording too, so only what
the recording never asked for (a different Phase 3) is trained. `--retrain` trains everything.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from agentnas.bus import messages as m
from agentnas.store.log import EventLog
from agentnas.trainer_daemon.recorded import request_key, reusable


def recorded_results(path: str | Path, run_id: str) -> list[tuple[str, m.EvaluationCompleted]]:
    """(content key, result) of every evaluation of `run_id` in the log at `path` that its
    candidate decided; the first result per content key (as the recording's agents saw it)."""
    keys: dict[str, str] = {}
    results: dict[str, m.EvaluationCompleted] = {}
    with EventLog(path, readonly=True) as log:
        for env in log.events(run_id, kinds=["evaluation.requested", "evaluation.completed"]):
            p = env.payload
            if isinstance(p, m.EvaluationRequested):
                keys[p.eval_id] = request_key(p)
            elif isinstance(p, m.EvaluationCompleted) and p.eval_id in keys and reusable(p):
                # a result reused in the recording keeps naming where it was trained
                results.setdefault(keys[p.eval_id], msgspec.structs.replace(
                    p, reused_from=p.reused_from or f"{run_id}/{p.eval_id}"))
    return list(results.items())


def results_for_replay(llm: str | None) -> tuple[str, list[tuple[str, m.EvaluationCompleted]]]:
    """For `--llm replay:LOG[#RUN]` on an event log: the recorded run and its results; else ("", [])."""
    from agentnas.agents.llm_settings import parse_provider
    from agentnas.agents.replay import ReplaySource

    if not llm or not llm.startswith("replay:"):
        return "", []
    _, rest = parse_provider(llm)
    path, _, run = rest.partition("#")
    source = ReplaySource.from_spec(path, run or None)
    if not source.run_id:  # a JSONL transcript holds LLM calls only
        return "", []
    return source.run_id, recorded_results(path, source.run_id)
