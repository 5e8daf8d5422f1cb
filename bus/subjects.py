"""The one table of NATS subjects and JetStream streams.

| subject                                 | stream | who publishes          | who consumes                      |
| --------------------------------------- | ------ | ---------------------- | --------------------------------- |
| agentnas.evt.<run_id>.<kind>            | EVENTS | every process          | recorder (durable `recorder`),    |
|                                         |        |                        | agents and `events --follow`      |
| agentnas.evt.<run_id>.evaluation.requested | EVENTS, sourced into EVAL | agents | trainer daemons (durable `trainers`) |
| agentnas.cmd.<agent>.<verb>             | -      | CLI, operators         | the named agent (request/reply)   |

Kinds contain dots (`evaluation.completed`), so a subject has the run id in the third
token and the kind after it. Run ids never contain dots, spaces, `*` or `>`.
EVAL is a work-queue stream whose only source is EVENTS filtered to evaluation
requests: one publish both records the request and queues it, so neither can be lost
without the other.
"""

from __future__ import annotations

import re

PREFIX = "agentnas"
EVENTS_STREAM = "EVENTS"
EVAL_STREAM = "EVAL"
RECORDER_DURABLE = "recorder"
TRAINERS_DURABLE = "trainers"

EVENTS_SUBJECTS = f"{PREFIX}.evt.>"
EVAL_REQUESTS_FILTER = f"{PREFIX}.evt.*.evaluation.requested"
# run.requested, run.started, run.finished, run.failed (and any later run.* kind) of every run
RUN_LIFECYCLE_FILTER = f"{PREFIX}.evt.*.run.>"
RUN_END_KINDS = ("run.finished", "run.failed")

# Supervisor and other events that belong to no run.
SYSTEM_RUN = "_system"

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def valid_run_id(run_id: str) -> bool:
    return bool(_RUN_ID.match(run_id))


def event_subject(run_id: str, kind: str) -> str:
    if not valid_run_id(run_id):
        raise ValueError(f"run id {run_id!r} must be 1-64 characters of letters, digits, _ or -")
    return f"{PREFIX}.evt.{run_id}.{kind}"


def run_events_filter(run_id: str) -> str:
    return f"{PREFIX}.evt.{run_id}.>"


def parse_event_subject(subject: str) -> tuple[str | None, str]:
    """`agentnas.evt.<run>.<kind>` -> (run id, kind); (None, "") for any other subject."""
    parts = subject.split(".", 3)
    if len(parts) < 4 or parts[0] != PREFIX or parts[1] != "evt":
        return None, ""
    return parts[2], parts[3]


def command_subject(agent: str, verb: str) -> str:
    return f"{PREFIX}.cmd.{agent}.{verb}"
