"""Pieces every training loop of the trainer shares (the harness's `train`, the GDAS search):
seeding, the optimizer, plateau, the device-time timer, the caps and the loss check."""

from __future__ import annotations

import math
import os
import random
import resource
import sys
import time

import numpy as np
import torch
from torch import nn

from agentnas.trainer_daemon.job import Job, JobFailed, JobResult
from agentnas.trainer_daemon.recipe import Recipe

__all__ = ["CHECK_EVERY_STEPS", "MB", "Plateau", "StepTimer", "check_memory", "check_time", "checked_loss_sum", "make_optimizer",
           "memory_baseline", "peak_memory_mb", "plateau_for", "seed_everything"]

MB = 2**20
CHECK_EVERY_STEPS = 50  # how often the loss and time cap are checked within an epoch (each check syncs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    params = model.parameters()
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay, nesterov=False)
    optimizer = torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.AdamW
    return optimizer(params, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay)


class Plateau:
    """Multiplies the lr by `factor` after more than `patience` epochs without relative improvement."""

    def __init__(self, patience: int, factor: float) -> None:
        self.patience, self.factor = patience, factor
        self.scale, self.best, self.bad_epochs = 1.0, math.inf, 0

    def step(self, value: float) -> None:
        threshold = self.best - abs(self.best) * 1e-4 if math.isfinite(self.best) else self.best
        if value < threshold:  # a NaN never improves
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.scale *= self.factor
            self.bad_epochs = 0


def plateau_for(recipe: Recipe) -> Plateau | None:
    sched = recipe.scheduler_params
    return (Plateau(int(sched.get("patience", 10)), sched.get("factor", 0.1))
            if recipe.scheduler == "plateau" else None)


class StepTimer:
    """Sums device time around training steps; `total()` is the only place that waits for the GPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.done_s = 0.0
        self.pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.started: float | torch.cuda.Event = 0.0

    def start(self) -> None:
        if self.cuda:
            self.started = torch.cuda.Event(enable_timing=True)
            self.started.record()
        else:
            self.started = time.process_time()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pending.append((self.started, end))
        else:
            self.done_s += time.process_time() - self.started

    def total(self) -> float:
        if self.pending:
            self.pending[-1][1].synchronize()
            self.done_s += sum(start.elapsed_time(end) for start, end in self.pending) / 1000.0
            self.pending.clear()
        return self.done_s


# ---------------------------------------------------------------- caps and checks


def memory_baseline(device: torch.device) -> int:
    """On a GPU, what is allocated before the candidate (the resident task data); its peak counts from here."""
    if device.type != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_memory_mb(device: torch.device, baseline_bytes: int) -> float:
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) - baseline_bytes) / MB
    try:  # the peak RSS since the process started, or since a reused worker reset it between jobs
        with open(f"/proc/{os.getpid()}/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
        return rss / MB if sys.platform == "darwin" else rss / 1024


def check_time(result: JobResult, job: Job, epoch: int) -> None:
    if result.device_time_s > job.time_cap_s:
        raise JobFailed("timeout", f"device time {result.device_time_s:.3g} s exceeded the cap of "
                                   f"{job.time_cap_s:g} s during epoch {epoch + 1}")


def check_memory(device: torch.device, baseline: int, job: Job, result: JobResult, when: str) -> None:
    peak = peak_memory_mb(device, baseline)
    result.peak_memory_mb = max(peak, result.peak_memory_mb or 0.0)
    if peak > job.memory_cap_mb:
        raise JobFailed("oom", f"peak memory {peak:.0f} MB exceeded the cap of {job.memory_cap_mb:g} MB {when}")


def checked_loss_sum(losses: list[torch.Tensor], epoch: int, first_step: int, what: str = "loss") -> torch.Tensor:
    """Sum of the pending step losses; the first non-finite one stops the job."""
    if not losses:
        return torch.zeros(())
    stacked = torch.stack(losses)
    finite = torch.isfinite(stacked)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise JobFailed("error", f"non-finite {what} at epoch {epoch + 1} step {first_step + bad + 1}")
    return stacked.sum()
