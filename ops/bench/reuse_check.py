"""Reused workers on a varied set of ordinary candidates: do they stay in service?

    python -m agentnas.ops.bench.reuse_check [--device cpu|cuda:0] [--rounds 2]

A reused worker retires when its runtime check sees a candidate change the shared runtime.
That check must not fire on ordinary models (convs, LSTMs with dropout, attention, autocast,
norms), or every worker would retire after one job and reuse would buy nothing. This runs
each candidate `rounds` times through one pool on the built-in `addigits` task (proxy
requests, gate on) and prints, per job, the status, the worker process, the time and any
sandbox warning; it exits 1 when a job fails or a worker retires without the candidate
having asked for it. On CPU, reuse is forced (the CPU default forks a child per job instead).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from agentnas.trainer_daemon.harness import Job
from agentnas.trainer_daemon.sandbox import Limits, WorkerPool

HEAD = "import torch\nfrom torch import nn\nimport torch.nn.functional as F\n\n\nclass Architecture(nn.Module):\n"

CANDIDATES = {
    "conv": HEAD + """    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(64, 28))

    def forward(self, x):
        return self.body(x)
""",
    "residual_separable": HEAD + """    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pointwise = nn.Conv2d(32, 32, 1)
        self.norm = nn.GroupNorm(4, 32)
        self.head = nn.Linear(32, 28)

    def forward(self, x):
        x = F.silu(self.stem(x))
        x = x + self.norm(self.pointwise(F.silu(self.depthwise(x))))
        x = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        return self.head(F.adaptive_max_pool2d(x, 1).flatten(1))
""",
    "lstm_dropout": HEAD + """    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(24, 48, num_layers=2, dropout=0.2, batch_first=True)
        self.head = nn.Linear(48, 28)

    def forward(self, x):
        rows = x.permute(0, 2, 1, 3).flatten(2)  # 8 rows of 3 x 8 values
        out, _ = self.rnn(rows)
        return self.head(out[:, -1])
""",
    "attention": HEAD + """    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 32)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True), 2)
        self.head = nn.Linear(32, 28)

    def forward(self, x):
        tokens = self.embed(x.flatten(2).transpose(1, 2))
        return self.head(self.encoder(tokens).mean(1))
""",
    "autocast_mlp": HEAD + """    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(192, 256), nn.LayerNorm(256), nn.GELU(), nn.Linear(256, 28))

    def forward(self, x):
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            out = self.net(x)
        return out.float()
""",
    # asks for a global switch: expected to be put back with a warning, the worker staying
    "sets_cudnn_benchmark": HEAD + """    def __init__(self):
        super().__init__()
        torch.backends.cudnn.benchmark = True
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 28)

    def forward(self, x):
        return self.head(F.relu(self.conv(x)).mean(dim=(2, 3)))
""",
}


async def check(device: str, rounds: int, scratch: Path) -> int:
    limits = Limits(memory_mb=4096, cpu_s=600, wall_s=900, threads=1)
    failures = 0
    print(f"{'candidate':<22}{'round':>6}{'status':>8}{'worker':>9}{'seconds':>9}  sandbox warnings")
    async with WorkerPool("addigits", device, spares=1, limits=limits, scratch_root=scratch, fork=False,
                          jobs_per_worker=32) as pool:
        for round_ in range(1, rounds + 1):
            for name, source in CANDIDATES.items():
                pids: set[int] = set()

                async def watch() -> None:
                    while True:
                        pids.update(pool.running_pids)
                        await asyncio.sleep(0.01)

                watcher = asyncio.create_task(watch())
                start = time.monotonic()
                result = await pool.run(Job(eval_id=f"{name}-{round_}", request="proxy", model_source=source,
                                            recipe={"epochs": 4, "batch_size": 128}), lambda progress: None)
                watcher.cancel()
                notes = [w for w in result.warnings if w.startswith("sandbox:") and "namespace" not in w
                         and "read-only" not in w]
                retired = any("retired" in w for w in notes)
                failures += result.status != "ok" or retired
                print(f"{name:<22}{round_:>6}{result.status:>8}{','.join(map(str, sorted(pids))):>9}"
                      f"{time.monotonic() - start:>9.2f}  {'; '.join(notes) or '-'}"
                      f"{'  ' + result.reason if result.status != 'ok' else ''}")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        failures = asyncio.run(check(args.device, args.rounds, Path(tmp)))
    print("ok: every job passed and no worker retired" if not failures else f"{failures} job(s) failed or retired a worker")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
