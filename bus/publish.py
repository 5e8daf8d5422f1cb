"""Publishing events: one subject per (run, kind), the envelope id as JetStream's message id;
what counts as a fault of the bus, and publishing through one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import structlog
from nats import errors as nats_errors
from nats.js import JetStreamContext
from nats.js import errors as js_errors

from agentnas.bus import messages, subjects

log = structlog.get_logger("agentnas.bus")


def headers_for(envelope: messages.Envelope) -> dict[str, str]:
    # JetStream drops a second publish with the same Nats-Msg-Id inside the duplicate window.
    return {"Nats-Msg-Id": envelope.id}


async def publish(js: JetStreamContext, envelope: messages.Envelope, timeout: float = 10.0) -> int:
    """Publish one event and wait for the stream's ack; returns the stream sequence."""
    ack = await js.publish(
        subjects.event_subject(envelope.run_id, envelope.kind),
        messages.encode(envelope),
        timeout=timeout,
        headers=headers_for(envelope),
    )
    return ack.seq


async def publish_many(
    js: JetStreamContext, envelopes: Iterable[messages.Envelope], window: int = 512
) -> None:
    """Publish in order with up to `window` acks outstanding; raises if any publish failed."""
    pending: list[asyncio.Future] = []
    for envelope in envelopes:
        pending.append(
            await js.publish_async(
                subjects.event_subject(envelope.run_id, envelope.kind),
                messages.encode(envelope),
                headers=headers_for(envelope),
            )
        )
        if len(pending) >= window:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


# --- faults of the bus ---------------------------------------------------------------------

_BUS_FAULTS = (
    nats_errors.TimeoutError, nats_errors.NoRespondersError, nats_errors.ConnectionClosedError,
    nats_errors.StaleConnectionError, nats_errors.OutboundBufferLimitError, nats_errors.ConnectionReconnectingError,
    nats_errors.ConnectionDrainingError, nats_errors.FlushTimeoutError, js_errors.NoStreamResponseError,
    js_errors.ServiceUnavailableError, asyncio.TimeoutError, ConnectionError,
)


def is_bus_fault(exc: BaseException) -> bool:
    """A fault of the machinery (server away, JetStream out of resources), not of the caller.

    Such a failure is retried, never charged to a candidate and never ends a run."""
    if isinstance(exc, _BUS_FAULTS):
        return True
    return isinstance(exc, js_errors.APIError) and (exc.code or 0) >= 500


async def publish_until_done(js: JetStreamContext, envelope: messages.Envelope, *, give_up_after_s: float = 600.0,
                             what: str = "event") -> int:
    """Publish, retrying through bus faults with backoff for up to `give_up_after_s`.

    The envelope id is JetStream's message id, so a publish that reached the stream before
    its ack was lost is dropped when it is sent again."""
    deadline = time.monotonic() + give_up_after_s
    delay = 0.5
    while True:
        try:
            return await publish(js, envelope)
        except Exception as exc:
            if not is_bus_fault(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("bus unavailable; publish will be retried", what=what, kind=envelope.kind,
                        retry_in_s=delay, error=str(exc) or type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def heartbeat(js: JetStreamContext, sender: messages.Sender, role: str, stop: asyncio.Event,
                    every_s: float = 15.0, detail=lambda: "") -> None:
    """`agent.heartbeat` to the `_system` run every `every_s` until `stop`: `status` shows how long
    ago each service was last heard of. A beat lost to a bus outage is not news."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return
        except asyncio.TimeoutError:
            pass
        text = detail()
        try:
            await publish(js, messages.make_event(messages.AgentHeartbeat(role=role, busy=bool(text), detail=text[:300]),
                                                  run_id=subjects.SYSTEM_RUN, sender=sender), timeout=5.0)
        except Exception as exc:
            log.warning("heartbeat not published", error=str(exc) or type(exc).__name__)
