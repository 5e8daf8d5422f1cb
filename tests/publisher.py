"""Test helper run as a separate process: publish N heartbeat events for one run."""

import asyncio
import sys

from agentnas.bus import messages as m
from agentnas.bus.connect import close, connect
from agentnas.bus.publish import publish_many


async def main(url: str, run_id: str, n: int, agent: str) -> None:
    nc = await connect(url)
    js = nc.jetstream()
    sender = m.Sender(agent=agent, instance=agent)
    await publish_many(js, (m.make_event(m.AgentHeartbeat(role=agent, detail=str(i)), run_id=run_id, sender=sender) for i in range(n)))
    await close(nc)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
