"""`run`'s live status: how long ago each service was heard of, and a silent one as a fault."""

import time

import msgspec
from rich.console import Console

from agentnas.bus import messages as m
from agentnas.ops.progress import SILENT_S, Follower
from agentnas.store.log import EventLog


def system_event(payload, instance, at):
    env = m.make_event(payload, run_id="_system", sender=m.Sender(agent=payload.role, instance=instance))
    return msgspec.structs.replace(env, time=at)


def test_a_silent_service_is_a_paused_line_and_the_others_show_their_age(tmp_path):
    now = time.time()
    with EventLog(tmp_path / "events.sqlite") as log:
        log.append([
            system_event(m.AgentStarted(role="planner", pid=1, host="h"), "h:1", now - SILENT_S - 30),
            system_event(m.AgentStarted(role="trainer", pid=2, host="h"), "h:2", now - 100),
            system_event(m.AgentHeartbeat(role="trainer"), "h:2", now - 5),
            system_event(m.AgentStarted(role="evolver", pid=3, host="h"), "h:3", now - 200),
            system_event(m.AgentStopped(role="evolver"), "h:3", now - 150),  # stopped on purpose: not silent
        ])
    console = Console(record=True, width=100)
    follower = Follower(tmp_path / "events.sqlite", "r1", tmp_path, console)
    follower.check_faults()
    (silent,) = follower.faults
    assert silent.startswith("planner: not heard from since ") and f"over {SILENT_S:.0f} s" in silent
    follower.check_faults()  # the same silence is said once, not every poll
    printed = console.export_text()
    assert printed.count("not heard from") == 1 and "paused: planner: not heard from" in printed
    lines = [t.plain for t in follower.render().renderables]
    (ages,) = [line for line in lines if line.startswith("  heard ")]
    assert "trainer 5s" in ages and "planner" in ages and "evolver" not in ages
