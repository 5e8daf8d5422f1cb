"""Bus and store throughput: events published -> committed in SQLite, and replay (fold) speed.

    python -m agentnas.ops.bench.bus_store [--events 50000] [--replay-events 100000]

End to end: a real nats-server, the recorder as its own process (as under `agentnas up`),
and one publisher with up to 512 acks outstanding; the clock runs from the first publish
to the moment the last row is committed. Replay: a 100,000-event run with a realistic mix
(evaluations with per-epoch progress, LLM calls, heartbeats), read from SQLite and folded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agentnas.bus import messages as m
from agentnas.bus.connect import close, connect, ensure_streams
from agentnas.bus.publish import publish_many
from agentnas.bus.server import NatsServer
from agentnas.store.log import EventLog
from agentnas.store.log import load_run_state

SENDER = m.Sender(agent="bench", instance="b1")


def realistic_events(run_id: str, n: int, seed: int = 0) -> list[m.Envelope]:
    rng = random.Random(seed)
    out: list[m.Envelope] = [m.make_event(m.RunRequested(task="addigits"), run_id=run_id, sender=SENDER)]
    i = 0
    while len(out) < n:
        i += 1
        eid = f"e{i}"
        out.append(m.make_event(m.EvaluationRequested(eval_id=eid, request="proxy", task="addigits",
                                                      model_source="class Architecture: pass\n" * 40), run_id=run_id, sender=SENDER))
        out.append(m.make_event(m.EvaluationStarted(eval_id=eid, device="cuda:0", worker="w"), run_id=run_id, sender=SENDER))
        for epoch in range(1, 11):
            out.append(m.make_event(m.EvaluationProgress(eval_id=eid, epoch=epoch, epochs=10, train_loss=rng.random(),
                                                         val_metric=rng.random() * 10), run_id=run_id, sender=SENDER))
        status = rng.choice(["ok"] * 8 + ["error", "oom"])
        out.append(m.make_event(m.EvaluationCompleted(eval_id=eid, status=status, val_metric=rng.random() * 10 if status == "ok" else None,
                                                      arch_id=f"arch_{i:03d}", params=100_000), run_id=run_id, sender=SENDER))
        out.append(m.make_event(m.LlmResponded(call_id=f"c{i}", agent="planner", content="x" * 500, input_tokens=2000,
                                               output_tokens=300, cost_usd=0.01), run_id=run_id, sender=SENDER))
        out.append(m.make_event(m.AgentHeartbeat(role="planner"), run_id=run_id, sender=SENDER))
    return out[:n]


def committed(path: Path, run_id: str) -> int:
    try:
        conn = sqlite3.connect(path)
        try:
            return conn.execute("SELECT count(*) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


async def end_to_end(n: int, workdir: Path) -> float:
    with NatsServer(workdir / "nats") as server:
        home = workdir / "home"
        home.mkdir()
        recorder = subprocess.Popen(
            [sys.executable, "-m", "agentnas.ops.cli", "--home", str(home), "--log-format", "json",
             "recorder", "--nats-url", server.url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            nc = await connect(server.url)
            js = nc.jetstream()
            await ensure_streams(js)
            path = home / "events.sqlite"
            while committed(path, "_system") < 1:  # recorder is up
                await asyncio.sleep(0.05)
            events = [m.make_event(m.AgentHeartbeat(role="bench", detail=str(i)), run_id="e2e", sender=SENDER) for i in range(n)]
            start = time.perf_counter()
            await publish_many(js, events)
            while committed(path, "e2e") < n:
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - start
            await close(nc)
        finally:
            recorder.send_signal(signal.SIGTERM)
            recorder.wait(10)
    return n / elapsed


def replay_speed(n: int, workdir: Path) -> tuple[float, float]:
    path = workdir / "replay.sqlite"
    with EventLog(path) as log:
        events = realistic_events("big", n)
        for i in range(0, n, 5000):
            log.append(events[i : i + 5000])
    with EventLog(path, readonly=True) as log:
        start = time.perf_counter()
        state = load_run_state(log, "big")
        elapsed = time.perf_counter() - start
    assert state.n_events == n
    return elapsed, n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--replay-events", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rate = asyncio.run(end_to_end(args.events, Path(tmp)))
        seconds, fold_rate = replay_speed(args.replay_events, Path(tmp))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'measure':<44}{'value':>14}  target")
    print(f"{'end to end, events/s (publish -> SQLite)':<44}{rate:>14,.0f}  >= 20,000")
    print(f"{f'replay of {args.replay_events:,} events, seconds':<44}{seconds:>14.3f}  < 1.0")
    print(f"{'replay, events folded/s':<44}{fold_rate:>14,.0f}")


if __name__ == "__main__":
    main()
