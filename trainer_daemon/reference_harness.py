"""The paper's evaluation harness, for benchmarks only: one candidate at a time on the device,
batches drawn from a CPU DataLoader and copied over each step. `ops/bench/trainer_throughput.py`
measures the daemon against it, and against a ceiling: the same candidates in K bare processes
with the data on the device. It runs trusted benchmark code, never a candidate from an LLM."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset


def _split(folder: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(np.load(folder / f"{name}_x.npy")), torch.from_numpy(np.load(folder / f"{name}_y.npy")))


def _architecture(source: str) -> type:
    namespace: dict = {}
    exec(compile(source, "candidate", "exec"), namespace)  # trusted: our own candidate
    return namespace["Architecture"]


def _warm_up(architecture: type, x: torch.Tensor, y: torch.Tensor) -> None:
    """One untimed step and evaluation: torch's lazy start-up (the first optimizer step imports
    torch._dynamo, about a second) is not the harness's cost. The daemon's workers do the same."""
    model = architecture().to(x.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        model(x).argmax(1).sum().item()


def _train(architecture: type, seeds: Iterable[int], epochs: int, device: str,
           train_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
           validate: Callable[[torch.nn.Module], None]) -> None:
    """The training loop both harnesses share; only where the batches come from differs."""
    for seed in seeds:
        torch.manual_seed(seed)
        model = architecture().to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(epochs):
            model.train()
            for xb, yb in train_batches():
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            model.eval()
            with torch.no_grad():  # validation each epoch, as the daemon's proxy runs do
                validate(model)
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def sequential_dataloader_samples_per_s(source: str, folder: Path, device: str, candidates: int, epochs: int,
                                        batch: int) -> float:
    """One candidate at a time, batches from a CPU DataLoader; returns training samples/s."""
    train, valid = TensorDataset(*_split(folder, "train")), TensorDataset(*_split(folder, "valid"))
    architecture = _architecture(source)
    _warm_up(architecture, train.tensors[0][:batch].to(device), train.tensors[1][:batch].to(device))

    def train_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, yb in DataLoader(train, batch_size=batch, shuffle=True, drop_last=True):
            yield xb.to(device), yb.to(device)

    def validate(model: torch.nn.Module) -> None:
        for xb, yb in DataLoader(valid, batch_size=1024):
            (model(xb.to(device)).argmax(1).cpu() == yb).sum().item()

    start = time.perf_counter()
    _train(architecture, range(candidates), epochs, device, train_batches, validate)
    elapsed = time.perf_counter() - start
    n = len(train) // batch * batch
    return candidates * epochs * n / elapsed


def _train_resident(source: str, folder: str, device: str, seeds: list[int], epochs: int, batch: int, threads: int,
                    ready, go, done) -> None:
    """One process of the ceiling: data resident on the device, batches by index, no sandbox, no bus."""
    torch.set_num_threads(threads)
    x, y = (t.to(device) for t in _split(Path(folder), "train"))
    vx, vy = (t.to(device) for t in _split(Path(folder), "valid"))
    architecture = _architecture(source)
    n = len(x) // batch * batch
    _warm_up(architecture, x[:batch], y[:batch])

    def train_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(x), device=device)
        for i in range(0, n, batch):
            index = order[i:i + batch]
            yield x[index], y[index]

    def validate(model: torch.nn.Module) -> None:
        (model(vx).argmax(1) == vy).sum().item()

    ready.set()
    go.wait()
    start = time.perf_counter()
    _train(architecture, seeds, epochs, device, train_batches, validate)
    done.put(time.perf_counter() - start)  # the process's exit is not counted


def concurrent_resident_samples_per_s(source: str, folder: Path, device: str, k: int, candidates: int, epochs: int,
                                      batch: int) -> float:
    """The ceiling for K candidates at once on `device`: K bare long-lived processes (process start
    not counted), data resident, batches by index, candidates split between them; samples/s."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // k) if device == "cpu" else 1
    go, done = ctx.Event(), ctx.Queue()
    procs, readies = [], []
    # the settings the daemon's workers start with: thread pools of this size, fewer malloc arenas
    settings = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "MALLOC_ARENA_MAX": "2"}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        for i in range(k):
            ready = ctx.Event()
            seeds = list(range(i, candidates, k))
            procs.append(ctx.Process(target=_train_resident, args=(source, str(folder), device, seeds, epochs, batch,
                                                                    threads, ready, go, done)))
            readies.append(ready)
            procs[-1].start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    for ready in readies:
        ready.wait()
    go.set()
    elapsed = max(done.get() for _ in procs)  # all started together; the slowest ends the run
    for proc in procs:
        proc.join()
    if any(proc.exitcode != 0 for proc in procs):
        raise RuntimeError("a ceiling process failed")
    n = len(np.load(folder / "train_y.npy", mmap_mode="r")) // batch * batch
    return candidates * epochs * n / elapsed
