"""Publishing events: one subject per (run, kind), the envelope id as JetStream's message id."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from nats.js import JetStreamContext

from agentnas.bus import messages, subjects


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
