"""The paper's evaluation harness, for benchmarks only: one candidate at a time on the device,
batches drawn from a CPU DataLoader and copied over each step. `ops/bench/trainer_throughput.py`
measures the daemon against it. It runs trusted benchmark code, never a candidate from an LLM."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset


def sequential_dataloader_samples_per_s(source: str, folder: Path, device: str, candidates: int, epochs: int,
                                        batch: int) -> float:
    """One candidate at a time, batches from a CPU DataLoader; returns training samples/s."""
    train = TensorDataset(torch.from_numpy(np.load(folder / "train_x.npy")), torch.from_numpy(np.load(folder / "train_y.npy")))
    valid = TensorDataset(torch.from_numpy(np.load(folder / "valid_x.npy")), torch.from_numpy(np.load(folder / "valid_y.npy")))
    namespace: dict = {}
    exec(compile(source, "candidate", "exec"), namespace)  # trusted: our own candidate
    start = time.perf_counter()
    for seed in range(candidates):
        torch.manual_seed(seed)
        model = namespace["Architecture"]().to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(epochs):
            model.train()
            for xb, yb in DataLoader(train, batch_size=batch, shuffle=True, drop_last=True):
                xb, yb = xb.to(device), yb.to(device)
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            model.eval()
            with torch.no_grad():  # validation each epoch, as the daemon's proxy runs do
                for xb, yb in DataLoader(valid, batch_size=1024):
                    (model(xb.to(device)).argmax(1).cpu() == yb).sum().item()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    n = len(train) // batch * batch
    return candidates * epochs * n / elapsed
