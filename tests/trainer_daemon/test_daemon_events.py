"""The daemon's mapping between bus messages and harness jobs/results (pure functions, no bus)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from agentnas.bus import messages as m
from agentnas.bus.space import load_space
from agentnas.trainer_daemon.daemon import completed_event, job_for, progress_event
from agentnas.trainer_daemon.job import Job, JobResult

SPACE = load_space(Path(__file__).parents[1] / "fixtures" / "space_example.json")


def request(kind: str, **fields) -> m.EvaluationRequested:
    return m.EvaluationRequested(eval_id=f"r-{kind}", request=kind, task="addigits", model_source="src",
                                 caps=m.Caps(time_s=60.0, memory_mb=512.0), seed=3, **fields)


def test_job_for_carries_the_new_request_fields():
    gdas = request("gdas", space=SPACE, gdas=m.GdasOptions(epochs=4, arch_lr=1e-3))
    job = job_for(gdas, Path("/w/run"))
    assert job.space == SPACE and job.gdas == m.GdasOptions(epochs=4, arch_lr=1e-3)
    assert job.time_cap_s == 60.0 and job.memory_cap_mb == 512.0 and job.seed == 3 and job.weights_dir == ""
    equivalence = request("equivalence", reference_source="orig", equivalence=m.EquivalenceOptions(atol=1e-4))
    job = job_for(equivalence, Path("/w/run"))
    assert job.reference_source == "orig" and job.equivalence.atol == 1e-4 and job.weights_dir == ""
    assert job_for(request("final_wave1"), Path("/w/run")).weights_dir == "/w/run"
    assert job_for(request("validate"), Path("/w/run")).weights_dir == ""


def test_a_job_with_a_space_survives_the_pipe_to_the_worker():
    job = job_for(request("gdas", space=SPACE, gdas=m.GdasOptions(epochs=2)), Path("/w"))
    assert msgspec.json.decode(msgspec.json.encode(job), type=Job) == job


def test_results_and_progress_reach_the_events():
    result = JobResult(status="ok", choices=[2, 0], max_abs_diff=3e-7, params=10)
    done = completed_event(request("gdas"), result, attempt=1, wall_s=1.5)
    assert done.choices == [2, 0] and done.max_abs_diff == 3e-7 and done.request == "gdas"
    progress = progress_event("r-gdas", {"epoch": 1, "epochs": 2, "train_loss": 0.5, "val_metric": None,
                                         "choices": [1, 0], "tau": 10.0, "device_time_s": 0.2})
    assert progress.choices == [1, 0] and progress.device_time_s == 0.2
    assert progress_event("r", {"epoch": 1, "epochs": 1, "train_loss": 0.1}).choices is None


def test_the_new_kinds_round_trip_through_envelopes():
    sender = m.Sender(agent="test")
    for payload in (request("gdas", space=SPACE, gdas=m.GdasOptions(epochs=2)),
                    request("equivalence", reference_source="orig"),
                    m.EvaluationCompleted(eval_id="x", status="ok", request="gdas", choices=[1, 2]),
                    m.EvaluationProgress(eval_id="x", epoch=1, epochs=2, train_loss=0.3, choices=[0, 1])):
        envelope = m.make_event(payload, run_id="run", sender=sender)
        assert m.decode(m.encode(envelope)).payload == payload
