"""Run one evaluation request in the current process.

Requests: validate, proxy, final_wave1, final_wave2, equivalence (does
model_source reproduce reference_source? see equivalence.py) and gdas (a
GDAS search over a slotted space, see gdas.py).

`run_job` is called inside a sandboxed worker (sandbox.py) after the static
gate has passed the source; here the source is only exec'd (a second source,
equivalence's reference or a space's alternatives, is gated here first). It
never raises for a candidate's faults: every outcome is a JobResult whose
status follows PROTOCOL.md. Failures while building or probing the model are
`rejected` (the Code Executor gets the reason and traceback to fix), failures
during training are `error`, allocation failures `oom`, and exceeding the
device-time cap `timeout`. For validate and equivalence, which train nothing,
`time_cap_s` caps the whole job in wall-clock seconds instead (deadline.py).

Measurements:
- device time is the training steps only (forward, backward, clip, optimizer
  step): CUDA events on a GPU, process CPU time on CPU. Evaluation, batch
  indexing and augmentation are not counted;
- peak memory on a GPU is the peak allocated by the candidate, i.e. above what
  the task data already held; on CPU it is the process's peak RSS (VmHWM, which
  a reused worker resets between jobs);
- parameters and FLOPs are counted after the first forward (the probe), so
  lazy modules (nn.LazyLinear ...) have their parameters; FLOPs are per sample,
  counted by torch's FlopCounterMode on a batch of one in eval mode.
A batch size larger than the training split is clamped to it, with a warning.
Partial batches are dropped (a shuffled epoch of n // batch_size steps), so a
BatchNorm never sees a batch of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import numpy as np
import torch
from torch import nn

from agentnas.bus.messages import EquivalenceOptions
from agentnas.trainer_daemon.batches import augment, plan_augmentations, task_loss, to_device, targets_for
from agentnas.trainer_daemon.candidate import build_model, count_flops, probe
from agentnas.trainer_daemon.deadline import DeadlineExceeded, wall_deadline
from agentnas.trainer_daemon.equivalence import check_equivalence
from agentnas.trainer_daemon.gate import check_source
from agentnas.trainer_daemon.gdas import run_gdas
from agentnas.trainer_daemon.job import (WHOLE_JOB_CAP, Job, JobFailed, JobResult, MachineryFault, Stage, one_line,
                                        weights_file)
from agentnas.trainer_daemon.metrics import compute_metric
from agentnas.trainer_daemon.recipe import Recipe, RecipeError, lr_at, normalise_recipe, proxy_recipe
from agentnas.trainer_daemon.steps import (CHECK_EVERY_STEPS, Plateau, StepTimer, check_memory, check_time,
                                           checked_loss_sum, make_optimizer, memory_baseline, plateau_for,
                                           seed_everything)

if TYPE_CHECKING:
    from agentnas.trainer_daemon.tasks import TaskData, TaskSpec

# Job, JobFailed, JobResult, build_model and Plateau are re-exported: the worker and tests take them from here
__all__ = ["Job", "JobFailed", "JobResult", "Plateau", "build_model", "make_optimizer", "run_job", "warm_up"]

PROBE_BATCH = 8
TRACEBACK_CHARS = 4000
REQUESTS = ("validate", "proxy", "final_wave1", "final_wave2", "equivalence", "gdas")


# ---------------------------------------------------------------- failures


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _fail(result: JobResult, exc: BaseException, stage: Stage) -> JobResult:
    """Fill `result` for an exception; stage.status is the default for a candidate's fault."""
    if isinstance(exc, MachineryFault):
        result.status, result.reason, result.fault = "error", str(exc), str(exc)
        return result
    if isinstance(exc, JobFailed):
        result.status, result.reason = exc.status, exc.reason
        if isinstance(exc, DeadlineExceeded):
            result.reason = f"{exc.reason} during {stage.name}"
        return result
    result.status = "oom" if _is_oom(exc) else stage.status
    result.reason = f"{stage.name} failed: {one_line(exc)}"
    result.traceback = "".join(traceback.format_exception(exc))[-TRACEBACK_CHARS:]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


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
    optimizer = make_optimizer(model, recipe)  # after the probe: lazy modules have their parameters by now
    plateau = plateau_for(recipe)
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
                loss_sum += checked_loss_sum(pending, epoch, step + 1 - len(pending)).to(device)
                pending = []
                check_time(result, job, epoch)
        # termination checks: a non-finite loss first (the more telling reason), then the caps
        result.device_time_s = timer.total()
        loss_sum += checked_loss_sum(pending, epoch, steps - len(pending)).to(device)
        check_time(result, job, epoch)
        check_memory(device, memory_baseline, job, result, f"at epoch {epoch + 1}")
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


def save_weights(job: Job, recipe: Recipe, state: dict, epoch: int, metric: dict[str, float]) -> str:
    """Write a self-describing checkpoint to weights_dir/<eval_id>.pt (atomically)."""
    path = weights_file(job.weights_dir, job.eval_id)
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
    try:
        os.makedirs(job.weights_dir, exist_ok=True)
        torch.save(checkpoint, path + ".tmp")
        os.replace(path + ".tmp", path)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as a RuntimeError from its writer
        with contextlib.suppress(OSError):
            os.remove(path + ".tmp")
        raise MachineryFault(f"cannot write the weights to {job.weights_dir}: {one_line(exc)}") from None
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
    """A forward/backward probe, then parameters and FLOPs (lazy modules exist only after a first
    forward), and, for validate, a step at full batch size."""
    validate = job.request == "validate"
    xb, yb = to_device(x[:PROBE_BATCH], y[:PROBE_BATCH], spec.loss, spec.output_shape, device)
    probe(model, xb, yb, spec.loss, tuple(spec.output_shape), check_finite=validate)
    result.params = sum(p.numel() for p in model.parameters())
    try:
        result.flops = count_flops(model, xb[:1])
    except Exception as exc:  # some ops are not countable; the count is informative only
        result.warnings.append(f"flops: not counted ({one_line(exc)})")
    if validate and recipe.batch_size > PROBE_BATCH:
        # the memory cap is about training batches, so measure one
        xb, yb = to_device(x[:recipe.batch_size], y[:recipe.batch_size], spec.loss, spec.output_shape, device)
        probe(model, xb, yb, spec.loss, tuple(spec.output_shape), check_finite=True)
    check_memory(device, baseline, job, result, "in the validation probe")


def run_job(job: Job, data: TaskData, device: str, report: Callable[[dict], None]) -> JobResult:
    """Run one evaluation request; every outcome, failures included, is a JobResult."""
    result = JobResult(status="ok", metric_name=data.spec.metric)
    stage = Stage()
    cap = job.time_cap_s if job.request in WHOLE_JOB_CAP else None
    try:
        with wall_deadline(cap, f"{job.request} took longer than its cap of {job.time_cap_s:g} s "
                                f"(wall clock, the whole job)"):
            try:
                _run(job, data, torch.device(device), report, result, stage)
            except (Exception, SystemExit) as exc:  # the candidate's code may raise anything
                _fail(result, exc, stage)
    except DeadlineExceeded as exc:  # the cap ran out in the harness's own code, outside the try above
        _fail(result, exc, stage)
    return result


def _run(job: Job, data: TaskData, dev: torch.device, report: Callable[[dict], None], result: JobResult,
         stage: Stage) -> None:
    if job.request not in REQUESTS:
        raise JobFailed("rejected", f"unknown request {job.request!r}")
    if job.request == "equivalence":
        _equivalence_request(job, data, dev, result, stage)
    elif job.request == "gdas":
        run_gdas(job, data, dev, report, result, stage)
    else:
        _model_request(job, data, dev, report, result, stage)


def _model_request(job: Job, data: TaskData, dev: torch.device, report: Callable[[dict], None],
                   result: JobResult, stage: Stage) -> None:
    """validate, proxy, final_wave1, final_wave2: build, probe and measure, then train (not validate)."""
    spec = data.spec
    wave2 = job.request == "final_wave2"
    train_x = np.concatenate([data.train_x, data.valid_x]) if wave2 else data.train_x
    train_y = np.concatenate([data.train_y, data.valid_y]) if wave2 else data.train_y
    recipe, augs = _prepare_recipe(job, data, len(train_x), result)
    stage.enter("data placement", "error")
    if job.request != "validate":
        x, y = to_device(train_x, train_y, spec.loss, spec.output_shape, dev)
    baseline = memory_baseline(dev)  # count only what the candidate allocates, not the resident data
    stage.enter("build", "rejected")
    seed_everything(job.seed)
    model = build_model(job.model_source, job.eval_id).to(dev)
    stage.enter(f"probe (forward/backward on {PROBE_BATCH} samples)", "rejected")
    _measure(model, job, spec, recipe, train_x, train_y, dev, baseline, result)
    if job.request == "validate":
        return
    stage.enter("training", "error")
    _train_request(job, data, recipe, augs, model, x, y, baseline, report, result)


def _equivalence_request(job: Job, data: TaskData, dev: torch.device, result: JobResult, stage: Stage) -> None:
    """Does model_source (the rewrite) compute what reference_source (the original) does, on a few
    training inputs? Both are built from the same seed; the verdict is check_equivalence's."""
    options = job.equivalence or EquivalenceOptions()
    if not job.reference_source.strip():
        raise JobFailed("rejected", "an equivalence request needs reference_source (the original model)")
    problems = check_source(job.reference_source)  # the worker gated model_source only
    if problems:
        result.traceback = "\n".join(problems)
        raise JobFailed("rejected", f"reference_source: {problems[0]}")
    baseline = memory_baseline(dev)
    stage.enter("build (reference_source)", "rejected")
    seed_everything(job.seed)
    original = build_model(job.reference_source, filename="<reference>").to(dev)
    stage.enter("build", "rejected")
    seed_everything(job.seed)
    rewritten = build_model(job.model_source, job.eval_id).to(dev)
    stage.enter(f"equivalence check (on {options.samples} training samples)", "rejected")
    x = torch.tensor(np.asarray(data.train_x[:max(1, options.samples)]), dtype=torch.float32, device=dev)
    verdict = check_equivalence(original, rewritten, x, rtol=options.rtol, atol=options.atol)
    result.params = sum(p.numel() for p in rewritten.parameters())
    result.max_abs_diff = verdict.max_abs_diff
    check_memory(dev, baseline, job, result, "in the equivalence check")
    if not verdict.ok:
        raise JobFailed("rejected", verdict.reason)


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
    # torch wraps an optimizer class's step() the first time one is built; done here for every class
    # a recipe or a search can use, so a candidate's first Adam or SGD does not look like a runtime
    # change to a reused worker's check (reuse.py)
    dummy = [nn.Parameter(torch.zeros(1))]
    for optimizer in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        optimizer(dummy, lr=1e-3)

