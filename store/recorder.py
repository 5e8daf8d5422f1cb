"""The recorder: the only writer of the SQLite log.

A durable consumer on EVENTS; each batch of delivered messages is inserted in one transaction and
acked only after the commit, so a crash anywhere replays the batch, and the unique message
id turns the replay into a no-op.

Retention of the EVENTS stream is the recorder's job too, because only it knows what the
log has committed: every `sweep_s` it purges from EVENTS the events of runs that ended more
than `retention_s` ago, and the `_system` run's events, each purge bounded by its consumer's
ack floor (every message at or below it is committed). Nothing else ever removes an event,
so the stream never loses one the log does not hold. Events of unknown kinds are stored as they came (the
log must not lose a newer agent's facts); bytes that are not an envelope at all are
terminated and recorded as `message.rejected`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sqlite3
import time
from contextlib import AsyncExitStack
from pathlib import Path

import msgspec
import structlog
from nats.js import api

from agentnas.bus import messages, subjects
from agentnas.bus.config import BusConfig
from agentnas.bus.connect import close, connect, ensure_streams
from agentnas.bus.health import Health
from agentnas.bus.publish import heartbeat, publish
from agentnas.store.log import EventLog

log = structlog.get_logger("agentnas.recorder")

_wire = msgspec.json.Decoder(messages._WireEnvelope)
_encoder = msgspec.json.Encoder()

CONSUMER = api.ConsumerConfig(
    durable_name=subjects.RECORDER_DURABLE,
    # Explicit acks: AckAll would be cheaper but acking a new delivery after a restart would
    # also ack what the killed recorder had received and not committed.
    ack_policy=api.AckPolicy.EXPLICIT,
    # A killed recorder's unacked batch comes back after this long; replays are no-ops,
    # so a short wait costs nothing and shortens recovery.
    ack_wait=10.0,
    max_deliver=-1,  # the log must get everything; never give up on a message
    max_ack_pending=20_000,  # bounds what sits in our memory uncommitted
    deliver_policy=api.DeliverPolicy.ALL,
)


async def subscribe(js, on_message):
    """Bind to the durable push consumer (created on first use).

    Push delivery into a callback that only appends to a buffer costs far less per message
    in nats-py than pull fetches (which schedule a task per message), and batches still form
    naturally: whatever arrived while the last batch was committing is the next batch.
    """
    return await js.subscribe(
        subjects.EVENTS_SUBJECTS,
        durable=subjects.RECORDER_DURABLE,
        stream=subjects.EVENTS_STREAM,
        config=CONSUMER,
        cb=on_message,
        manual_ack=True,
        flow_control=True,
        idle_heartbeat=5.0,
    )


def rows_from_messages(msgs: list) -> tuple[list[tuple], list]:
    """Split a fetched batch into log rows and undecodable messages."""
    rows, bad = [], []
    for msg in msgs:
        try:
            w = _wire.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            bad.append((msg, str(exc)))
            continue
        rows.append(
            (
                w.id,
                w.run_id,
                w.kind,
                w.schema,
                w.time,
                w.causation_id,
                _encoder.encode(w.sender).decode(),
                bytes(w.payload).decode(),
            )
        )
    return rows, bad


def rejection_row(msg, error: str) -> tuple:
    parts = msg.subject.split(".")
    run_id = parts[2] if len(parts) > 2 and subjects.valid_run_id(parts[2]) else subjects.SYSTEM_RUN
    event = messages.make_event(
        messages.MessageRejected(
            subject=msg.subject, error=error[:500], data_prefix=msg.data[:200].decode("utf-8", "replace")
        ),
        run_id=run_id,
        sender=messages.Sender(agent="recorder", instance=socket.gethostname()),
        # The stream sequence makes the rejection idempotent across redeliveries.
        id=f"rejected-{msg.metadata.sequence.stream}",
    )
    return (
        event.id,
        event.run_id,
        event.kind,
        event.schema,
        event.time,
        None,
        _encoder.encode(event.sender).decode(),
        messages.encode_payload(event.payload).decode(),
    )


async def commit_batch(event_log: EventLog, msgs: list) -> None:
    rows, bad = rows_from_messages(msgs)
    for msg, error in bad:
        log.warning("undecodable message terminated", subject=msg.subject, error=error[:200])
        rows.append(rejection_row(msg, error))
    event_log.append_rows(rows)
    # Ack only after the commit: a crash before this line means redelivery, not loss.
    # Undecodable messages are in the log as `message.rejected`, so they are acked too.
    for msg in msgs:
        await msg.ack()


def free_mb(folder: Path) -> float:
    try:
        return round(shutil.disk_usage(folder).free / 2**20, 1)
    except OSError:
        return -1.0


async def purge_committed(js, event_log: EventLog, *, retention_s: float, now: float | None = None) -> list[str]:
    """Purge what the log holds and no live reader needs from EVENTS; returns the runs purged."""
    info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.RECORDER_DURABLE)
    below = info.ack_floor.stream_seq + 1  # purge removes sequences below this one
    if below <= 1:
        return []
    now = time.time() if now is None else now
    runs = event_log.runs_to_purge(ended_before=now - retention_s)
    for run_id in runs:
        await js.purge_stream(subjects.EVENTS_STREAM, subject=subjects.run_events_filter(run_id), seq=below)
    await js.purge_stream(subjects.EVENTS_STREAM, subject=subjects.run_events_filter(subjects.SYSTEM_RUN), seq=below)
    if runs:
        event_log.mark_purged(runs, now)
        log.info("ended runs purged from the stream", runs=len(runs))
    return runs


async def record(
    url: str,
    log_file: Path,
    *,
    bus: BusConfig = BusConfig(),
    stop: asyncio.Event,
    batch: int = 2000,
    ready: asyncio.Event | None = None,
    retention_s: float | None = None,
    sweep_s: float = 60.0,
    health: Health | None = None,
) -> None:
    """Run the recorder until `stop` is set."""
    sender = messages.Sender(agent="recorder", instance=f"{socket.gethostname()}:{os.getpid()}")
    async with AsyncExitStack() as stack:
        health = health or Health(None, "recorder")
        nc = await connect(url, bus, name="agentnas-recorder", health=health)
        stack.push_async_callback(close, nc)
        js = nc.jetstream()
        await ensure_streams(js)
        event_log = EventLog(log_file)
        stack.callback(event_log.close)
        buffer: list = []
        arrived = asyncio.Event()

        async def on_message(msg) -> None:
            buffer.append(msg)
            if len(buffer) >= batch:
                arrived.set()

        sub = await subscribe(js, on_message)
        await publish(
            js,
            messages.make_event(
                messages.AgentStarted(role="recorder", pid=os.getpid(), host=socket.gethostname()),
                run_id=subjects.SYSTEM_RUN,
                sender=sender,
            ),
        )
        log.info("recorder started", log=str(log_file), url=url)
        beat = asyncio.create_task(heartbeat(js, sender, "recorder", stop))
        stack.callback(beat.cancel)
        if ready is not None:
            ready.set()
        retention = bus.events_retention_s if retention_s is None else retention_s
        next_sweep = time.monotonic() + min(sweep_s, 5.0)
        failing = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + sweep_s
                try:
                    await purge_committed(js, event_log, retention_s=retention)
                except Exception as exc:  # retention can wait for the next sweep
                    log.warning("retention sweep failed", error=str(exc) or type(exc).__name__)
            if len(buffer) < batch:
                try:
                    await asyncio.wait_for(arrived.wait(), timeout=0.02)
                except asyncio.TimeoutError:
                    pass
            arrived.clear()
            if not buffer:
                continue  # nothing arrived: normal
            msgs = buffer[:]
            buffer.clear()
            try:
                await commit_batch(event_log, msgs)
                if failing:
                    health.clear()
                failing = 0.0
            except sqlite3.OperationalError as exc:
                # e.g. "database or disk is full": keep the batch (it is not acked, so nothing
                # is lost), say so once per try, and try again after a pause
                failing = min(max(failing * 2, 1.0), 30.0)
                log.error("cannot write the event log; will retry", error=str(exc), log=str(log_file),
                          free_mb=free_mb(log_file.parent), retry_in_s=failing)
                health.fault(f"cannot write the event log {log_file} ({exc}; {free_mb(log_file.parent)} MB free "
                             f"in {log_file.parent}); retrying, nothing is lost: free space there to go on")
                buffer[:0] = msgs
                await asyncio.sleep(failing)
        await sub.unsubscribe()  # no new deliveries; commit what already arrived
        if buffer:
            await commit_batch(event_log, buffer[:])
        await publish(
            js,
            messages.make_event(
                messages.AgentStopped(role="recorder"), run_id=subjects.SYSTEM_RUN, sender=sender
            ),
        )
        log.info("recorder stopped")
