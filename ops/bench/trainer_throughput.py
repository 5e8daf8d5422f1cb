"""Trainer throughput: the paper's one-candidate-at-a-time DataLoader harness against the
daemon with K concurrent sandboxed candidates and device-resident data.

    python -m agentnas.ops.bench.trainer_throughput [--device cpu|cuda:0] [--concurrency K]
        [--candidates N] [--baseline-candidates B] [--spares S] [--worker-jobs J]

Both sides train the same candidates (a small CNN on a 12x8x8, 3-class synthetic task,
batch 256, like the small-CNN row of the throughput anchor in BENCHMARKS.md) for the same
proxy epochs and validate after each epoch. The baseline runs in this process with no
sandbox (in its favour); the daemon side runs through the real bus: requests published,
results read back from `evaluation.completed`. Request-to-first-step is measured with an
idle daemon and warm workers, one request at a time. A third row is the ceiling for K at once
on this device: K bare long-lived processes training the same candidates with the data on the
device (no bus, no sandbox, no process starts), so "daemon / ceiling" shows what the daemon's
own machinery costs, apart from what the device allows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from agentnas.bus import messages as m
from agentnas.bus.config import TrainerConfig
from agentnas.bus.connect import close, connect, ensure_streams
from agentnas.bus.publish import publish
from agentnas.bus.server import NatsServer
from agentnas.trainer_daemon.reference_harness import (concurrent_resident_samples_per_s,
                                                       sequential_dataloader_samples_per_s)

CANDIDATE = """
import torch
from torch import nn

class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        w = {width}
        self.body = nn.Sequential(
            nn.Conv2d(12, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * w, 3)

    def forward(self, x):
        return self.head(self.body(x))
"""
FULL_EPOCHS = 10  # proxy: round(0.3 * 10) = 3 epochs
BATCH = 256


def write_task(folder: Path, n_train: int, n_valid: int) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_valid)):
        x = (rng.random((n, 12, 8, 8)) < 0.1).astype(np.float32)  # sparse one-hot-like planes
        y = (x[:, :6].sum(axis=(1, 2, 3)) > x[:, 6:].sum(axis=(1, 2, 3))).astype(np.int64) + (x[:, 0, 0, 0] > 0)
        np.save(folder / f"{split}_x.npy", x)
        np.save(folder / f"{split}_y.npy", np.minimum(y, 2))
    toml = folder / "bench.toml"
    files = "\n".join(f'{s}_{v} = "{s}_{v}.npy"' for s in ("train", "valid", "test") for v in "xy")
    toml.write_text(f'name = "bench"\ninput_shape = [12, 8, 8]\noutput_shape = [3]\nloss = "cross_entropy"\n'
                    f'metric = "error_pct"\n[files]\n{files}\n')
    return toml


async def daemon_side(source: str, task: Path, device: str, k: int, candidates: int, home: Path,
                      config: TrainerConfig) -> tuple[float, float, list[float]]:
    """Returns (training samples/s, evaluations/hour, request-to-first-step latencies)."""
    from agentnas.trainer_daemon.daemon import serve

    with NatsServer(home / "nats") as server:
        nc = await connect(server.url)
        js = nc.jetstream()
        await ensure_streams(js)
        done: dict[str, m.EvaluationCompleted] = {}

        async def on_event(msg) -> None:
            env = m.decode(msg.data)
            if isinstance(env.payload, m.EvaluationCompleted):
                done[env.payload.eval_id] = env.payload

        await nc.subscribe("agentnas.evt.bench.>", cb=on_event)
        stop, ready = asyncio.Event(), asyncio.Event()
        daemon = asyncio.create_task(serve(server.url, home, device=device, concurrency=k, config=config,
                                           stop=stop, ready=ready, warm_tasks=(str(task),)))
        await asyncio.wait_for(ready.wait(), 600)
        sender = m.Sender(agent="bench")

        def request(eval_id: str, seed: int) -> m.Envelope:
            return m.make_event(m.EvaluationRequested(eval_id=eval_id, request="proxy", task=str(task), model_source=source,
                                                      recipe={"optimizer": "adamw", "lr": 1e-3, "epochs": FULL_EPOCHS,
                                                              "batch_size": BATCH, "scheduler": "none"}, seed=seed),
                                run_id="bench", sender=sender)

        async def wait_for(ids: set[str]) -> None:
            while not ids <= done.keys():
                await asyncio.sleep(0.01)

        start = time.perf_counter()
        ids = set()
        for i in range(candidates):
            env = request(f"c{i}", i)
            ids.add(env.payload.eval_id)
            await publish(js, env)
        await wait_for(ids)
        elapsed = time.perf_counter() - start
        bad = [d for d in done.values() if d.status != "ok"]
        if bad:
            raise SystemExit(f"bench candidate failed: {bad[0].status}: {bad[0].reason}")
        epochs = done["c0"].epochs_done
        await asyncio.sleep(5)  # let the spares warm up again
        latencies = []
        for i in range(5):
            env = request(f"lat{i}", i)
            await publish(js, env)
            await wait_for({env.payload.eval_id})
            latencies.append(done[env.payload.eval_id].first_step_at - env.time)
            await asyncio.sleep(3)
        stop.set()
        await daemon
        await close(nc)
    n = int(np.load(task.parent / "train_y.npy", mmap_mode="r").shape[0]) // BATCH * BATCH
    return candidates * epochs * n / elapsed, candidates / elapsed * 3600, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--concurrency", type=int, default=0, help="K (default: 8 on a GPU, 2 on a CPU)")
    parser.add_argument("--candidates", type=int, default=0, help="candidates per side (default 2K)")
    parser.add_argument("--baseline-candidates", type=int, default=0,
                        help="candidates for the one-at-a-time baseline (default: --candidates; its rate is per candidate)")
    parser.add_argument("--width", type=int, default=0, help="channels of the first conv (default 64 GPU, 16 CPU)")
    parser.add_argument("--samples", type=int, default=0, help="training samples (default 50,000 GPU, 8,192 CPU)")
    parser.add_argument("--spares", type=int, default=0, help="warm workers kept ready (default: K)")
    parser.add_argument("--worker-jobs", type=int, default=0,
                        help="GPU: candidates one worker process serves (default: the daemon's, 32; 1 = single-use)")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    k = args.concurrency or (8 if gpu else 2)
    candidates = args.candidates or 2 * k
    width = args.width or (64 if gpu else 16)
    samples = args.samples or (50_000 if gpu else 8_192)
    source = CANDIDATE.format(width=width)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        task = write_task(folder, samples, max(1024, samples // 10))
        base = sequential_dataloader_samples_per_s(source, task.parent, args.device,
                                                    args.baseline_candidates or candidates,
                                                    round(0.3 * FULL_EPOCHS), BATCH)
        config = TrainerConfig(spare_workers=args.spares, worker_jobs=args.worker_jobs)
        rate, per_hour, latencies = asyncio.run(daemon_side(source, task, args.device, k, candidates, folder, config))
        ceiling = concurrent_resident_samples_per_s(source, task.parent, args.device, k, candidates,
                                                    round(0.3 * FULL_EPOCHS), BATCH)

    def per_hour_of(samples_per_s: float) -> float:
        return samples_per_s / (round(0.3 * FULL_EPOCHS) * (samples // BATCH * BATCH)) * 3600

    mode = "fork per job" if not gpu else (
        "single-use workers" if args.worker_jobs == 1 else f"{args.worker_jobs or 32} jobs per worker")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, device {args.device}; "
          f"small CNN width {width}, {samples:,} samples, batch {BATCH}, {candidates} candidates, K={k}, "
          f"spares {args.spares or k}, {mode}")
    print(f"{'harness':<46}{'samples/s':>12}{'evals/hour':>12}")
    print(f"{'one at a time, DataLoader':<46}{base:>12,.0f}{per_hour_of(base):>12,.0f}")
    print(f"{f'daemon, K={k} concurrent, data on device':<46}{rate:>12,.0f}{per_hour:>12,.0f}")
    print(f"{f'ceiling: K={k} bare processes, data on device':<46}{ceiling:>12,.0f}{per_hour_of(ceiling):>12,.0f}")
    print(f"ratio daemon/baseline: {rate / base:.2f}x   ceiling/baseline: {ceiling / base:.2f}x   "
          f"daemon/ceiling: {rate / ceiling:.0%}")
    print(f"request -> first training step, warm workers: median {statistics.median(latencies):.3f} s "
          f"(min {min(latencies):.3f}, max {max(latencies):.3f}, n={len(latencies)})")


if __name__ == "__main__":
    main()
