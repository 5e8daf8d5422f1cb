"""Agent cold start: how long an agent takes to catch up with its runs when it starts.

    python -m agentnas.ops.bench.agent_start [--finished-runs 200] [--events 1000000] [--active-events 2000]

A real nats-server holds a long history: `--events` events in `--finished-runs` finished
runs (each: requested, started, evaluations with per-epoch progress, heartbeats, finished)
and one active run. Nothing purges the stream here (no recorder), so this is the worst
case: an agent started within the retention window. The clock runs from the agent's first
connect to the moment its role is first asked what is due for the active run, which happens
only once that run is replayed to the end of the stream. Run it from another version's
checkout to compare (the role only reads `state.run_id`).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from pathlib import Path

from agentnas.bus import messages as m
from agentnas.bus.config import Config
from agentnas.bus.connect import close, connect, ensure_streams
from agentnas.bus.publish import publish_many
from agentnas.bus.server import NatsServer

SENDER = m.Sender(agent="bench", instance="b1")
ACTIVE = "active-run"


def run_events(run_id: str, n: int, *, finished: bool) -> list[m.Envelope]:
    events = [m.make_event(m.RunRequested(task="addigits", phases=(1,)), run_id=run_id, sender=SENDER),
              m.make_event(m.RunStarted(), run_id=run_id, sender=SENDER)]
    i = 0
    while len(events) < n - 1:
        i += 1
        eid = f"{run_id}-e{i}"
        events.append(m.make_event(m.EvaluationStarted(eval_id=eid, device="cpu", worker="w"), run_id=run_id,
                                   sender=SENDER))
        for epoch in range(1, 9):
            events.append(m.make_event(m.EvaluationProgress(eval_id=eid, epoch=epoch, epochs=8, train_loss=0.5,
                                                            val_metric=10.0), run_id=run_id, sender=SENDER))
        events.append(m.make_event(m.EvaluationCompleted(eval_id=eid, status="ok", val_metric=9.0, arch_id=f"a{i}"),
                                   run_id=run_id, sender=SENDER))
    events = events[:n - 1]
    if finished:
        events.append(m.make_event(m.RunFinished(), run_id=run_id, sender=SENDER))
    return events


class Probe:
    """A role that does nothing; it notes when it is first asked about the active run."""

    name = "planner"

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    def due(self, state) -> list:
        if state.run_id == ACTIVE:
            self.asked.set()
        return []


async def fill(url: str, finished_runs: int, total: int, active_events: int) -> float:
    nc = await connect(url)
    js = nc.jetstream()
    await ensure_streams(js)
    per_run = max(3, (total - active_events) // max(1, finished_runs))
    start = time.perf_counter()
    for r in range(finished_runs):
        await publish_many(js, run_events(f"old-{r:04d}", per_run, finished=True))
    await publish_many(js, run_events(ACTIVE, active_events, finished=False))
    elapsed = time.perf_counter() - start
    info = await js.stream_info("EVENTS")
    await close(nc)
    print(f"stream: {info.state.messages:,} events ({finished_runs} finished runs, 1 active run of "
          f"{active_events} events), published in {elapsed:.1f} s")
    return elapsed


async def cold_start(url: str, home: Path) -> float:
    from agentnas.agents.runtime import AgentService

    start = time.perf_counter()
    nc = await connect(url, name="bench-agent")
    js = nc.jetstream()
    role = Probe()
    service = AgentService(role, js, Config(), home)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(role.asked.wait(), 600)
    elapsed = time.perf_counter() - start
    stop.set()
    await task
    await close(nc)
    return elapsed


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats")
        url = server.start()
        try:
            await fill(url, args.finished_runs, args.events, args.active_events)
            times = [await cold_start(url, Path(tmp)) for _ in range(args.repeat)]
        finally:
            server.stop()
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print("| measure | seconds |")
    print("| --- | --- |")
    for i, seconds in enumerate(times, 1):
        print(f"| cold start {i}: connect, replay the active run, first `due` | {seconds:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finished-runs", type=int, default=200)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--active-events", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
