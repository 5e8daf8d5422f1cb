import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agentnas.bus import messages as m
from agentnas.bus import subjects
from agentnas.bus.publish import publish, publish_many
from agentnas.store.log import EventLog
from agentnas.store.log import load_run_state
from agentnas.store.recorder import record, rows_from_messages, subscribe
from tests.conftest import agentnas_cmd, wait_until

pytestmark = pytest.mark.integration
S = m.Sender(agent="test")


def count(path: Path, run_id: str) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


class RecorderTask:
    def __init__(self, url: str, path: Path):
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(record(url, path, stop=self.stop, ready=self.ready))

    async def __aenter__(self):
        await asyncio.wait_for(self.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc):
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


def start_recorder_process(url: str, home: Path) -> subprocess.Popen:
    return subprocess.Popen(
        agentnas_cmd("--home", str(home), "--log-format", "json", "recorder", "--nats-url", url),
        stdout=subprocess.DEVNULL, stderr=open(home / "recorder.err", "ab"),
    )


async def test_events_from_several_processes_land_exactly_once(js, nats_server, tmp_path):
    path = tmp_path / "events.sqlite"
    async with RecorderTask(nats_server.url, path):
        procs = [
            subprocess.Popen([sys.executable, "tests/publisher.py", nats_server.url, "multi", "700", f"p{i}"])
            for i in range(3)
        ]
        for p in procs:
            assert await asyncio.to_thread(p.wait, 60) == 0
        await wait_until(lambda: count(path, "multi") >= 2100, what="2100 rows")
        await asyncio.sleep(0.3)
    with EventLog(path, readonly=True) as log:
        rows = log.rows("multi")
    assert len(rows) == len({r.id for r in rows}) == 2100
    by_sender = {}
    for r in rows:
        by_sender.setdefault(r.sender, []).append(r.payload)
    assert len(by_sender) == 3
    # each publisher's events keep their order in the log
    for payloads in by_sender.values():
        assert [m.decode_payload("agent.heartbeat", p).detail for p in payloads] == [str(i) for i in range(700)]


async def test_a_redelivered_message_does_not_create_a_second_row(js, nats_server, tmp_path):
    path = tmp_path / "events.sqlite"
    events = [m.make_event(m.AgentHeartbeat(role="x", detail=str(i)), run_id="redeliver", sender=S) for i in range(20)]
    await publish_many(js, events)
    # Play a recorder that commits but crashes before acking: rows written, messages nak'ed.
    msgs = []

    async def take(msg):
        msgs.append(msg)

    sub = await subscribe(js, take)
    await wait_until(lambda: len(msgs) >= 20, what="first deliveries")
    rows, bad = rows_from_messages(msgs)
    assert len(rows) == 20 and not bad
    with EventLog(path) as log:
        log.append_rows(rows)
    for msg in msgs:
        await msg.nak()
    await sub.unsubscribe()
    async with RecorderTask(nats_server.url, path):
        await wait_until(lambda: count(path, subjects.SYSTEM_RUN) >= 1, what="recorder start event")
        for _ in range(100):
            info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.RECORDER_DURABLE)
            if info.num_ack_pending == 0 and info.num_pending == 0:
                break
            await asyncio.sleep(0.05)
    # Every delivery advances the consumer sequence: 20 first deliveries + 20 redeliveries (+ start event).
    assert info.delivered.consumer_seq >= 40 + 1
    assert count(path, "redeliver") == 20


async def test_kill_9_mid_stream_then_restart_loses_and_duplicates_nothing(js, nats_server, tmp_path):
    home = tmp_path
    path = home / "events.sqlite"
    total = 10_000
    events = [m.make_event(m.AgentHeartbeat(role="x", detail=str(i)), run_id="crash", sender=S) for i in range(total)]
    proc = start_recorder_process(nats_server.url, home)
    publisher = asyncio.create_task(publish_many(js, events, window=256))
    await wait_until(lambda: count(path, "crash") >= 1500, timeout=60, what="first rows")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = count(path, "crash")
    await publisher
    assert killed_at < total, "the recorder was killed after the stream ended; the test proved nothing"
    proc = start_recorder_process(nats_server.url, home)
    try:
        await wait_until(lambda: count(path, "crash") >= total, timeout=60, what="all rows")
        await asyncio.sleep(0.5)  # let any stray redelivery arrive
        with EventLog(path, readonly=True) as log:
            rows = log.rows("crash")
            state_before = load_run_state(log, "crash")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert len(rows) == total
    assert {r.id for r in rows} == {e.id for e in events}
    # The fold gives the same state after another restart of the recorder.
    proc = start_recorder_process(nats_server.url, home)
    try:
        await wait_until(lambda: count(path, subjects.SYSTEM_RUN) >= 4, what="restart recorded")
        with EventLog(path, readonly=True) as log:
            assert load_run_state(log, "crash") == state_before
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


async def test_unknown_kind_is_recorded_and_garbage_is_rejected(js, nats_server, tmp_path):
    path = tmp_path / "events.sqlite"
    env = m.make_event(m.RunStarted(), run_id="odd", sender=S)
    future = m.encode(env).replace(b'"run.started"', b'"planner.dreamed"')
    async with RecorderTask(nats_server.url, path):
        await js.publish(subjects.event_subject("odd", "planner.dreamed"), future)
        await js.publish(subjects.event_subject("odd", "run.started"), b"\x00 not json")
        await wait_until(lambda: count(path, "odd") >= 2, what="both rows")
    with EventLog(path, readonly=True) as log:
        kinds = [r.kind for r in log.rows("odd")]
        state = load_run_state(log, "odd")
    assert kinds == ["planner.dreamed", "message.rejected"]
    assert state.rejected_messages == 1 and state.n_events == 2


async def test_max_payload_allows_large_code(js, nats_server):
    source = "# " + "x" * (6 * 1024 * 1024)
    env = m.make_event(m.EvaluationRequested(eval_id="big", request="validate", task="addigits", model_source=source),
                       run_id="big", sender=S)
    assert await publish(js, env) > 0
    # and the request reached the trainers' work queue through the stream source
    async def queued():
        return (await js.stream_info(subjects.EVAL_STREAM)).state.messages
    for _ in range(100):
        if await queued() == 1:
            break
        await asyncio.sleep(0.05)
    assert await queued() == 1


async def stream_count(js, run_id: str) -> int:
    info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=subjects.run_events_filter(run_id))
    return sum((info.state.subjects or {}).values())


async def test_retention_purges_only_committed_events_of_ended_runs(js, nats_server, tmp_path):
    path = tmp_path / "events.sqlite"
    done = [m.make_event(m.RunRequested(task="t"), run_id="done", sender=S),
            m.make_event(m.RunFinished(), run_id="done", sender=S)]
    active = [m.make_event(m.RunRequested(task="t"), run_id="active", sender=S)]
    system = [m.make_event(m.AgentHeartbeat(role="x"), run_id=subjects.SYSTEM_RUN, sender=S)]
    async with RecorderTask(nats_server.url, path):
        await publish_many(js, done + active + system)
        await wait_until(lambda: count(path, "done") == 2 and count(path, "active") == 1, what="rows")
        await asyncio.sleep(0.5)  # the acks reach the server
    # the recorder is stopped: a late event of the ended run is in the stream, not in the log
    await publish(js, m.make_event(m.AgentHeartbeat(role="late"), run_id="done", sender=S))
    from agentnas.store.recorder import purge_committed

    with EventLog(path) as event_log:
        purged = await purge_committed(js, event_log, retention_s=0.0)
        assert purged == ["done"] and event_log.runs_to_purge(ended_before=1e12) == []
        assert await purge_committed(js, event_log, retention_s=0.0) == []  # nothing twice
    assert await stream_count(js, "done") == 1  # the uncommitted late event stays
    assert await stream_count(js, "active") == 1  # an active run is never purged
    assert await stream_count(js, subjects.SYSTEM_RUN) == 1  # the recorder's own start event, uncommitted
    # the log still holds everything
    assert count(path, "done") == 2 and count(path, "active") == 1


async def test_retention_waits_for_the_run_to_be_ended_long_enough(js, nats_server, tmp_path):
    path = tmp_path / "events.sqlite"
    async with RecorderTask(nats_server.url, path):
        await publish_many(js, [m.make_event(m.RunRequested(task="t"), run_id="done", sender=S),
                                m.make_event(m.RunFailed(reason="x"), run_id="done", sender=S)])
        await wait_until(lambda: count(path, "done") == 2, what="rows")
        await asyncio.sleep(0.5)
    from agentnas.store.recorder import purge_committed

    with EventLog(path) as event_log:
        assert await purge_committed(js, event_log, retention_s=3600.0) == []
    assert await stream_count(js, "done") == 2
