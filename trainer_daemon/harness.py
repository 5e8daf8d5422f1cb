"""Run one evaluation request in the current process: validate, proxy, final_wave1 or final_wave2.

`run_job` is called inside a single-use sandboxed worker (sandbox.py) after the
static gate has passed the source; here the source is only exec'd. It never
raises for a candidate's faults: every outcome is a JobResult whose status
follows PROTOCOL.md. Failures while building or probing the model are
`rejected` (the Code Executor gets the reason and traceback to fix), failures
during training are `error`, allocation failures `oom`, and exceeding the
device-time cap `timeout`.

Measurements:
- device time is the training steps only (forward, backward, clip, optimizer
  step): CUDA events on a GPU, process CPU time on CPU. Evaluation, batch
  indexing and augmentation are not counted;
- peak memory on a GPU is the peak allocated by the candidate, i.e. above what
  the task data already held; on CPU it is the process's peak RSS (VmHWM, which
  a reused worker resets between jobs);
- FLOPs are per sample, counted by torch's FlopCounterMode on a batch of one
  in eval mode.
A batch size larger than the training split is clamped to it, with a warning.
Partial batches are dropped (a shuffled epoch of n // batch_size steps), so a
BatchNorm never sees a batch of one.
"""

from __future__ import annotations

import hashlib
import linecache
import math
import os
import random
import re
import resource
import sys
import time
import traceback
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import msgspec
import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from agentnas.trainer_daemon.metrics import compute_metric
from agentnas.trainer_daemon.batches import augment, plan_augmentations, task_loss, to_device, targets_for
from agentnas.trainer_daemon.recipe import Recipe, RecipeError, lr_at, normalise_recipe, proxy_recipe

if TYPE_CHECKING:
    from agentnas.trainer_daemon.tasks import TaskData, TaskSpec

__all__ = ["Job", "JobFailed", "JobResult", "build_model", "run_job", "warm_up"]

PROBE_BATCH = 8
CHECK_EVERY_STEPS = 50  # how often the loss and time cap are checked within an epoch (each check syncs)
TRACEBACK_CHARS = 4000
MB = 2**20


class Job(msgspec.Struct, frozen=True, kw_only=True):
    eval_id: str
    request: Literal["validate", "proxy", "final_wave1", "final_wave2"]
    model_source: str  # defines class Architecture(nn.Module) with __init__(self) and forward(self, x)
    recipe: dict | str = {}  # str = JSON text, may be malformed
    time_cap_s: float = 3600.0  # device time of training steps only
    memory_cap_mb: float = 11264.0
    seed: int = 42
    weights_dir: str = ""  # where to save weights ("" = don't save)


class JobResult(msgspec.Struct, kw_only=True):
    status: Literal["ok", "rejected", "oom", "timeout", "error"]
    reason: str = ""  # one line
    val_metric: float | None = None
    test_metric: float | None = None
    metric_name: str = ""
    params: int | None = None
    flops: int | None = None
    peak_memory_mb: float | None = None
    device_time_s: float = 0.0
    epochs_done: int = 0
    best_epoch: int | None = None
    weights_path: str = ""
    warnings: list[str] = []
    traceback: str = ""  # truncated to ~4000 chars
    first_step_at: float | None = None  # wall-clock time of the first training step (queue latency)


class JobFailed(Exception):
    """A decided outcome other than ok, with its one-line reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# ---------------------------------------------------------------- small helpers


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _fail(result: JobResult, exc: BaseException, status: str, stage: str) -> JobResult:
    """Fill `result` for an exception; `status` is the default for a candidate's fault."""
    if isinstance(exc, JobFailed):
        result.status, result.reason = exc.status, exc.reason
        return result
    result.status = "oom" if _is_oom(exc) else status
    result.reason = f"{stage} failed: {_one_line(exc)}"
    result.traceback = "".join(traceback.format_exception(exc))[-TRACEBACK_CHARS:]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def peak_memory_mb(device: torch.device, baseline_bytes: int) -> float:
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) - baseline_bytes) / MB
    try:  # the peak RSS since the process started, or since a reused worker reset it between jobs
        with open(f"/proc/{os.getpid()}/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
        return rss / MB if sys.platform == "darwin" else rss / 1024


# ---------------------------------------------------------------- model


def build_model(source: str, eval_id: str) -> nn.Module:
    """Exec `source` in a fresh module and instantiate its Architecture."""
    # Not named after the eval id: tracebacks are fed back to the LLM, and a re-execution
    # (new run id, new eval ids) must ask exactly what the original run asked.
    filename = "<candidate>"
    # lets tracebacks quote the candidate's own lines
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType("agentnas_candidate")
    # registered while it runs: dataclasses and typing resolve names through sys.modules
    sys.modules[module.__name__] = module
    exec(compile(source, filename, "exec"), module.__dict__)  # the sandbox's gate has passed it
    cls = module.__dict__.get("Architecture")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise JobFailed("rejected", "the source defines no class Architecture(nn.Module)")
    return cls()


def count_flops(model: nn.Module, x1: torch.Tensor) -> int:
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x1)
    finally:
        model.train()
    return int(counter.get_total_flops())


def probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_name: str,
          output_shape: tuple[int, ...], check_finite: bool) -> None:
    """One forward/backward: the output shape must match the task; gradients are cleared after."""
    out = model(x)
    expected = (len(x), *output_shape)
    if not isinstance(out, torch.Tensor):
        raise JobFailed("rejected", f"forward returned {type(out).__name__}, expected a Tensor of shape {expected}")
    if tuple(out.shape) != expected:
        raise JobFailed("rejected", f"output shape {tuple(out.shape)} != expected {expected}")
    if check_finite and not bool(torch.isfinite(out).all()):
        raise JobFailed("rejected", "forward produced non-finite outputs (NaN or inf) at initialisation")
    loss = task_loss(loss_name, out, y, 0.0)
    if check_finite and not bool(torch.isfinite(loss)):
        raise JobFailed("rejected", "the loss is non-finite at initialisation")
    loss.backward()
    model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- optimizer, plateau, timer


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


# ---------------------------------------------------------------- evaluation


class Split(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    x: torch.Tensor
    targets: np.ndarray  # as compute_metric wants them
    groups: np.ndarray | None


def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    model.eval()
    try:
        with torch.no_grad():
            outputs = [model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)]
    finally:
        model.train()
    return torch.cat(outputs).cpu().numpy()


def split_metric(model: nn.Module, split: Split, metric: str, batch_size: int, when: str) -> float:
    outputs = predict(model, split.x, batch_size)
    if not np.all(np.isfinite(outputs)):
        raise JobFailed("error", f"non-finite outputs on the {split.name} split {when}")
    value = compute_metric(metric, outputs, split.targets, split.groups)
    if not math.isfinite(value):
        raise JobFailed("error", f"{metric} on the {split.name} split is {value} {when}")
    return value


# ---------------------------------------------------------------- training loop


def _checked_loss_sum(losses: list[torch.Tensor], epoch: int, first_step: int) -> torch.Tensor:
    """Sum of the pending step losses; the first non-finite one stops the job."""
    if not losses:
        return torch.zeros(())
    stacked = torch.stack(losses)
    finite = torch.isfinite(stacked)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise JobFailed("error", f"non-finite loss at epoch {epoch + 1} step {first_step + bad + 1}")
    return stacked.sum()


def _check_time(result: JobResult, job: Job, epoch: int) -> None:
    if result.device_time_s > job.time_cap_s:
        raise JobFailed("timeout", f"device time {result.device_time_s:.3g} s exceeded the cap of "
                                   f"{job.time_cap_s:g} s during epoch {epoch + 1}")


def _check_memory(device: torch.device, baseline: int, job: Job, result: JobResult, when: str) -> None:
    peak = peak_memory_mb(device, baseline)
    result.peak_memory_mb = max(peak, result.peak_memory_mb or 0.0)
    if peak > job.memory_cap_mb:
        raise JobFailed("oom", f"peak memory {peak:.0f} MB exceeded the cap of {job.memory_cap_mb:g} MB {when}")


def train(model: nn.Module, recipe: Recipe, loss_name: str, x: torch.Tensor, y: torch.Tensor, *,
          job: Job, augs: list[str], evaluate: Callable[[int], float] | None,
          report: Callable[[dict], None], result: JobResult, keep_best: bool,
          memory_baseline: int) -> tuple[list[float | None], dict | None]:
    """Train `model` in place for recipe.epochs.

    Returns the per-epoch metric from `evaluate` (None without it) and, with
    keep_best, a CPU copy of the best epoch's weights. Progress, device time
    and peak memory are written into `result` as they are known, so a stopped
    run still tells how far it got.
    """
    device = x.device
    n, batch = len(x), recipe.batch_size
    steps = n // batch
    optimizer = make_optimizer(model, recipe)
    sched = recipe.scheduler_params
    plateau = (Plateau(int(sched.get("patience", 10)), sched.get("factor", 0.1))
               if recipe.scheduler == "plateau" else None)
    timer = StepTimer(device)
    rng = np.random.default_rng(job.seed)
    history: list[float | None] = []
    best_state, best_metric = None, math.inf
    model.train()
    for epoch in range(recipe.epochs):
        order = torch.randperm(n, device=device)
        pending: list[torch.Tensor] = []
        loss_sum = torch.zeros((), device=device)
        for step in range(steps):
            # learning rate from a pure function of the step; plateau scales it per epoch
            lr = lr_at(recipe, epoch, step, steps) * (plateau.scale if plateau else 1.0)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = order[step * batch:(step + 1) * batch]
            xb, yb = x[index], y[index]
            xb, y_mix, lam = augment(xb, yb, augs, recipe.augmentation_params, rng)
            if result.first_step_at is None:
                result.first_step_at = time.time()
            timer.start()
            # forward / backward
            out = model(xb)
            loss = task_loss(loss_name, out, yb, recipe.label_smoothing)
            if y_mix is not None:
                loss = lam * loss + (1.0 - lam) * task_loss(loss_name, out, y_mix, recipe.label_smoothing)
            loss.backward()
            # clip, step, zero grads
            if recipe.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            timer.stop()
            pending.append(loss.detach())
            if (step + 1) % CHECK_EVERY_STEPS == 0:
                result.device_time_s = timer.total()
                loss_sum += _checked_loss_sum(pending, epoch, step + 1 - len(pending)).to(device)
                pending = []
                _check_time(result, job, epoch)
        # termination checks: a non-finite loss first (the more telling reason), then the caps
        result.device_time_s = timer.total()
        loss_sum += _checked_loss_sum(pending, epoch, steps - len(pending)).to(device)
        _check_time(result, job, epoch)
        _check_memory(device, memory_baseline, job, result, f"at epoch {epoch + 1}")
        train_loss = loss_sum.item() / steps

        # evaluation and progress
        metric = evaluate(epoch + 1) if evaluate is not None else None
        history.append(metric)
        result.epochs_done = epoch + 1
        if metric is not None and metric < best_metric:
            best_metric, result.best_epoch = metric, epoch + 1
            if keep_best:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if plateau is not None:
            plateau.step(metric if metric is not None else train_loss)
        report({"epoch": epoch + 1, "epochs": recipe.epochs, "train_loss": train_loss,
                "val_metric": metric, "device_time_s": result.device_time_s})
    return history, best_state


# ---------------------------------------------------------------- requests


def _safe_name(eval_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", eval_id) or "candidate"


def save_weights(job: Job, recipe: Recipe, state: dict, epoch: int, metric: dict[str, float]) -> str:
    """Write a self-describing checkpoint to weights_dir/<eval_id>.pt (atomically)."""
    os.makedirs(job.weights_dir, exist_ok=True)
    path = os.path.join(job.weights_dir, f"{_safe_name(job.eval_id)}.pt")
    checkpoint = {
        "state_dict": state,
        "eval_id": job.eval_id,
        "request": job.request,
        "source_sha256": hashlib.sha256(job.model_source.encode()).hexdigest(),
        "recipe": msgspec.to_builtins(recipe),
        "seed": job.seed,
        "epoch": epoch,
        **metric,
    }
    torch.save(checkpoint, path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


def _prepare_recipe(job: Job, data: TaskData, n_train: int, result: JobResult) -> tuple[Recipe, list[str]]:
    try:
        recipe, warnings = normalise_recipe(job.recipe)
    except RecipeError as exc:
        raise JobFailed("rejected", str(exc)) from None
    if job.request == "proxy":
        recipe = proxy_recipe(recipe)
    if recipe.batch_size > n_train:
        warnings.append(f"batch_size: {recipe.batch_size} is larger than the {n_train} training samples; "
                        f"clamped to {n_train}")
        recipe = msgspec.structs.replace(recipe, batch_size=n_train)
    augs, dropped = plan_augmentations(recipe, data.spec.loss, tuple(data.spec.input_shape))
    result.warnings.extend(warnings + dropped)
    return recipe, augs


def _measure(model: nn.Module, job: Job, spec: TaskSpec, recipe: Recipe, x: np.ndarray, y: np.ndarray,
             device: torch.device, baseline: int, result: JobResult) -> None:
    """Parameters, FLOPs, a forward/backward probe and, for validate, a step at full batch size."""
    validate = job.request == "validate"
    result.params = sum(p.numel() for p in model.parameters())
    xb, yb = to_device(x[:PROBE_BATCH], y[:PROBE_BATCH], spec.loss, spec.output_shape, device)
    probe(model, xb, yb, spec.loss, tuple(spec.output_shape), check_finite=validate)
    try:
        result.flops = count_flops(model, xb[:1])
    except Exception as exc:  # some ops are not countable; the count is informative only
        result.warnings.append(f"flops: not counted ({_one_line(exc)})")
    if validate and recipe.batch_size > PROBE_BATCH:
        # the memory cap is about training batches, so measure one
        xb, yb = to_device(x[:recipe.batch_size], y[:recipe.batch_size], spec.loss, spec.output_shape, device)
        probe(model, xb, yb, spec.loss, tuple(spec.output_shape), check_finite=True)
    _check_memory(device, baseline, job, result, "in the validation probe")


def run_job(job: Job, data: TaskData, device: str, report: Callable[[dict], None]) -> JobResult:
    """Run one evaluation request; every outcome, failures included, is a JobResult."""
    spec, dev = data.spec, torch.device(device)
    result = JobResult(status="ok", metric_name=spec.metric)
    wave2 = job.request == "final_wave2"
    train_x = np.concatenate([data.train_x, data.valid_x]) if wave2 else data.train_x
    train_y = np.concatenate([data.train_y, data.valid_y]) if wave2 else data.train_y
    stage, default = "recipe", "rejected"
    try:
        if job.request not in ("validate", "proxy", "final_wave1", "final_wave2"):
            raise JobFailed("rejected", f"unknown request {job.request!r}")
        recipe, augs = _prepare_recipe(job, data, len(train_x), result)
        stage, default = "data placement", "error"
        if job.request != "validate":
            x, y = to_device(train_x, train_y, spec.loss, spec.output_shape, dev)
        baseline = 0
        if dev.type == "cuda":  # count only what the candidate allocates, not the resident data
            torch.cuda.reset_peak_memory_stats(dev)
            baseline = torch.cuda.memory_allocated(dev)
        stage, default = "build", "rejected"
        seed_everything(job.seed)
        model = build_model(job.model_source, job.eval_id).to(dev)
        stage = f"probe (forward/backward on {PROBE_BATCH} samples)"
        _measure(model, job, spec, recipe, train_x, train_y, dev, baseline, result)
        if job.request == "validate":
            return result
        stage, default = "training", "error"
        _train_request(job, data, recipe, augs, model, x, y, baseline, report, result)
    except (Exception, SystemExit) as exc:  # the candidate's code may raise anything
        return _fail(result, exc, default, stage)
    return result


def _train_request(job: Job, data: TaskData, recipe: Recipe, augs: list[str], model: nn.Module, x: torch.Tensor,
                   y: torch.Tensor, baseline: int, report: Callable[[dict], None], result: JobResult) -> None:
    spec, dev = data.spec, x.device

    def split(name: str, sx: np.ndarray, sy: np.ndarray, groups: np.ndarray | None) -> Split:
        tx = torch.tensor(np.asarray(sx), dtype=torch.float32, device=dev)
        return Split(name=name, x=tx, targets=targets_for(sy, spec.loss, spec.output_shape), groups=groups)

    evaluate: Callable[[int], float] | None = None
    if job.request != "final_wave2":  # wave 2 trains on train+valid: nothing left to validate on
        valid = split("valid", data.valid_x, data.valid_y, data.valid_groups)

        def validate_epoch(epoch: int) -> float:
            return split_metric(model, valid, spec.metric, recipe.batch_size, f"at epoch {epoch}")

        evaluate = validate_epoch

    history, best_state = train(model, recipe, spec.loss, x, y, job=job, augs=augs, evaluate=evaluate,
                                report=report, result=result, keep_best=job.request == "final_wave1",
                                memory_baseline=baseline)
    if job.request == "proxy":
        result.val_metric = history[-1]
    elif job.request == "final_wave1":
        result.val_metric = history[result.best_epoch - 1]
        if job.weights_dir:
            result.weights_path = save_weights(job, recipe, best_state, result.best_epoch,
                                               {"val_metric": result.val_metric})
    else:
        test = split("test", data.test_x, data.test_y, data.test_groups)
        result.test_metric = split_metric(model, test, spec.metric, recipe.batch_size, "after training")
        if job.weights_dir:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            result.weights_path = save_weights(job, recipe, state, recipe.epochs,
                                               {"test_metric": result.test_metric})


# ---------------------------------------------------------------- warm-up

_WARM_UP_SOURCE = """
import math
import torch
from torch import nn

IN, OUT = {input_shape}, {output_shape}


class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        conv, norm = {{2: (nn.Conv1d, nn.BatchNorm1d), 3: (nn.Conv2d, nn.BatchNorm2d)}}.get(len(IN), (None, None))
        self.body = nn.Sequential(conv(IN[0], 8, 3, padding=1), norm(8), nn.ReLU()) if conv else nn.Identity()
        features = 8 * math.prod(IN[1:]) if conv else math.prod(IN)
        self.head = nn.Linear(features, math.prod(OUT))

    def forward(self, x):
        return self.head(self.body(x).flatten(1)).view(x.shape[0], *OUT)
"""


def warm_up(data: TaskData, device: str) -> None:
    """Train a tiny trusted model for one short proxy epoch on a slice of the task.

    A worker calls this before it says it is ready, so the first real job does not pay for
    torch's lazy start-up (kernel selection, autograd, optimizer and flop-counter set-up),
    which costs seconds on a CPU.
    """
    spec = data.spec
    source = _WARM_UP_SOURCE.format(input_shape=tuple(spec.input_shape), output_shape=tuple(spec.output_shape))
    n = min(len(data.train_x), 512)
    small = msgspec.structs.replace(data, train_x=data.train_x[:n], train_y=data.train_y[:n])
    job = Job(eval_id="warm-up", request="proxy", model_source=source,
              recipe={"epochs": 1, "batch_size": min(64, n), "scheduler": "none"}, time_cap_s=120.0,
              memory_cap_mb=1e9)
    run_job(job, small, device, lambda progress: None)

