"""A `gdas` request: search a slotted space with GDAS and answer with the argmax configuration.

The reference settings (PROTOCOL.md; Dong & Yang 2019 and their AutoDL code):
the training split is cut in two halves by a seeded permutation; each step
trains the weights on one half (the seed recipe: optimizer, lr schedule,
clipping, augmentations, stretched or shrunk to the search's epochs) and then
the architecture logits on the other (Adam, lr 3e-4, betas (0.5, 0.999),
weight decay 1e-3), each on a fresh hard Gumbel-softmax sample, with the
temperature annealed linearly from tau_max to tau_min over the epochs. The
result's `choices` are the argmax of the logits, no noise; its params and
FLOPs are that configuration's. Device time and memory are capped as for a
proxy run (training steps of both kinds count).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import numpy as np
import torch
from torch import nn

from agentnas.bus.messages import GdasOptions
from agentnas.bus.space import SlottedSpace, SpaceError, check_space, mutable_slots
from agentnas.trainer_daemon.batches import augment, plan_augmentations, task_loss, to_device
from agentnas.trainer_daemon.candidate import count_flops, probe
from agentnas.trainer_daemon.job import Job, JobFailed, JobResult, Stage, one_line
from agentnas.trainer_daemon.recipe import Recipe, RecipeError, lr_at, normalise_recipe, proxy_recipe
from agentnas.trainer_daemon.steps import (CHECK_EVERY_STEPS, StepTimer, check_memory, check_time, checked_loss_sum,
                                           make_optimizer, memory_baseline, plateau_for, seed_everything)
from agentnas.trainer_daemon.supernet import Supernet, build_supernet, gate_problems, temperature

if TYPE_CHECKING:
    from agentnas.trainer_daemon.tasks import TaskData

__all__ = ["run_gdas", "search"]

PROBE_BATCH = 8


def run_gdas(job: Job, data: TaskData, dev: torch.device, report: Callable[[dict], None], result: JobResult,
             stage: Stage) -> None:
    """Build the supernet of job.space, search it, and write choices, params and FLOPs into `result`."""
    spec = data.spec
    options = _options(job)
    space = _space(job, result)
    half = len(data.train_x) // 2
    recipe, augs = _recipe(job, space, options, data, half, result)
    problems = gate_problems(space)
    if problems:
        result.traceback = "\n".join(problems)
        raise JobFailed("rejected", problems[0])
    stage.enter("data placement", "error")
    x, y = to_device(data.train_x, data.train_y, spec.loss, tuple(spec.output_shape), dev)
    halves = torch.randperm(len(x), generator=torch.Generator().manual_seed(job.seed)).to(dev)
    weights_half, arch_half = halves[:half], halves[half:2 * half]
    baseline = memory_baseline(dev)
    stage.enter("build (the supernet of every alternative)", "rejected")
    seed_everything(job.seed)
    supernet = build_supernet(space).to(dev)
    stage.enter(f"probe (every alternative on {PROBE_BATCH} samples)", "rejected")
    _probe(supernet, x[:PROBE_BATCH], y[:PROBE_BATCH], spec.loss, tuple(spec.output_shape))
    check_memory(dev, baseline, job, result, "in the supernet probe")
    stage.enter("search", "error")
    search(supernet, recipe, augs, options, x[weights_half], y[weights_half], x[arch_half], y[arch_half],
           job=job, loss_name=spec.loss, report=report, result=result, memory_baseline=baseline)
    stage.enter("measuring the chosen configuration", "error")
    result.choices = supernet.argmax()
    supernet.fix(result.choices)
    result.params = supernet.params_of(result.choices)
    try:
        result.flops = count_flops(supernet.net, x[:1])
    except Exception as exc:  # some ops are not countable; the count is informative only
        result.warnings.append(f"flops: not counted ({one_line(exc)})")


def _options(job: Job) -> GdasOptions:
    options = job.gdas
    if options is None:
        raise JobFailed("rejected", "a gdas request needs gdas options (at least epochs)")
    if options.epochs < 1:
        raise JobFailed("rejected", f"gdas.epochs must be >= 1, got {options.epochs}")
    if not 0 < options.tau_min <= options.tau_max:
        raise JobFailed("rejected", f"gdas temperatures need 0 < tau_min <= tau_max, got {options.tau_min:g} "
                                    f"and {options.tau_max:g}")
    if not options.arch_lr > 0:
        raise JobFailed("rejected", f"gdas.arch_lr must be > 0, got {options.arch_lr:g}")
    return options


def _space(job: Job, result: JobResult) -> SlottedSpace:
    if job.space is None:
        raise JobFailed("rejected", "a gdas request needs the space to search")
    try:
        space, notes = check_space(job.space)
    except SpaceError as exc:
        raise JobFailed("rejected", f"space: {exc}") from None
    if not mutable_slots(space):
        raise JobFailed("rejected", "the space has no slot with two or more alternatives: nothing to search")
    result.warnings.extend(f"space: {note}" for note in notes)
    return space


def _recipe(job: Job, space: SlottedSpace, options: GdasOptions, data: TaskData, half: int,
            result: JobResult) -> tuple[Recipe, list[str]]:
    """The weights' recipe: the request's, else the space's seed recipe, over the search's epochs."""
    try:
        recipe, warnings = normalise_recipe(job.recipe or space.seed_recipe)
    except RecipeError as exc:
        raise JobFailed("rejected", str(exc)) from None
    recipe = proxy_recipe(recipe, fraction=options.epochs / recipe.epochs)
    if half < 1:
        raise JobFailed("rejected", f"gdas needs at least 2 training samples, the task has {len(data.train_x)}")
    if recipe.batch_size > half:
        warnings.append(f"batch_size: {recipe.batch_size} is larger than the {half} samples of each half of "
                        f"the training split; clamped to {half}")
        recipe = msgspec.structs.replace(recipe, batch_size=half)
    augs, dropped = plan_augmentations(recipe, data.spec.loss, tuple(data.spec.input_shape))
    result.warnings.extend(warnings + dropped)
    return recipe, augs


def _probe(supernet: Supernet, x: torch.Tensor, y: torch.Tensor, loss_name: str,
           output_shape: tuple[int, ...]) -> None:
    """Every alternative runs once (lazy modules initialise; their output shapes must agree), then
    the seed configuration does a forward/backward against the task's output shape."""
    net = supernet.net
    net.eval()
    try:
        with torch.no_grad(), supernet.running_all():
            net(x)
    finally:
        net.train()
    supernet.fix([0] * len(supernet.mixed))
    probe(net, x, y, loss_name, output_shape, check_finite=False)


def search(supernet: Supernet, recipe: Recipe, augs: list[str], options: GdasOptions,
           x_w: torch.Tensor, y_w: torch.Tensor, x_a: torch.Tensor, y_a: torch.Tensor, *,
           job: Job, loss_name: str, report: Callable[[dict], None], result: JobResult,
           memory_baseline: int) -> None:
    """Alternate one weight step (on x_w) and one architecture step (on x_a) for options.epochs.

    Progress, device time and peak memory are written into `result` as they are known; each
    epoch reports its mean weight loss and the current argmax choices.
    """
    device, net, batch = x_w.device, supernet.net, recipe.batch_size
    steps = min(len(x_w), len(x_a)) // batch
    w_optimizer = make_optimizer(net, recipe)  # built after the probe: lazy modules have parameters now
    a_optimizer = torch.optim.Adam(supernet.alphas.parameters(), lr=options.arch_lr, betas=options.arch_betas,
                                   weight_decay=options.arch_weight_decay)
    plateau = plateau_for(recipe)
    timer = StepTimer(device)
    rng = np.random.default_rng(job.seed)
    noise = torch.Generator(device=device)
    noise.manual_seed(job.seed)
    skipped = [0, 0]  # weight and architecture steps whose gradient was not finite
    net.train()
    for epoch in range(options.epochs):
        tau = temperature(epoch, options.epochs, options.tau_max, options.tau_min)
        order_w, order_a = torch.randperm(len(x_w), device=device), torch.randperm(len(x_a), device=device)
        pending_w: list[torch.Tensor] = []
        pending_a: list[torch.Tensor] = []
        sums = torch.zeros(2, device=device)
        for step in range(steps):
            # learning rate of the weights from a pure function of the step; plateau scales it per epoch
            lr = lr_at(recipe, epoch, step, steps) * (plateau.scale if plateau else 1.0)
            for group in w_optimizer.param_groups:
                group["lr"] = lr
            index_w, index_a = order_w[step * batch:(step + 1) * batch], order_a[step * batch:(step + 1) * batch]
            xb, yb = x_w[index_w], y_w[index_w]
            xb, y_mix, lam = augment(xb, yb, augs, recipe.augmentation_params, rng)
            if result.first_step_at is None:
                result.first_step_at = time.time()
            timer.start()
            # weights: one sampled architecture, the logits held still
            supernet.sample(tau, noise, differentiable=False)
            out = net(xb)
            loss = task_loss(loss_name, out, yb, recipe.label_smoothing)
            if y_mix is not None:
                loss = lam * loss + (1.0 - lam) * task_loss(loss_name, out, y_mix, recipe.label_smoothing)
            if loss.requires_grad:  # else the sample has no weights to train (a Zero in every slot on the path)
                loss.backward()
            # a step whose gradient is not finite (a finite loss can have one: sqrt at 0, inf * 0) is
            # skipped, as a loss scaler skips it, instead of poisoning the weights or the logits
            norm = nn.utils.clip_grad_norm_(net.parameters(), recipe.grad_clip if recipe.grad_clip is not None
                                            else float("inf"))
            if bool(torch.isfinite(norm)):
                w_optimizer.step()
            else:
                skipped[0] += 1
            w_optimizer.zero_grad(set_to_none=True)
            # architecture: a fresh sample on the held-out half; straight-through gradients reach the logits
            supernet.sample(tau, noise, differentiable=True)
            arch_loss = task_loss(loss_name, net(x_a[index_a]), y_a[index_a], 0.0)
            arch_loss.backward()
            if bool(torch.isfinite(nn.utils.clip_grad_norm_(supernet.alphas.parameters(), float("inf")))):
                a_optimizer.step()
            else:
                skipped[1] += 1
            a_optimizer.zero_grad(set_to_none=True)
            w_optimizer.zero_grad(set_to_none=True)  # what the architecture step left on the weights
            timer.stop()
            pending_w.append(loss.detach())
            pending_a.append(arch_loss.detach())
            if (step + 1) % CHECK_EVERY_STEPS == 0:
                sums += _checked(pending_w, pending_a, epoch, step + 1 - len(pending_w), device)
                pending_w, pending_a = [], []
                result.device_time_s = timer.total()
                check_time(result, job, epoch)
        # termination checks: a non-finite loss first (the more telling reason), then the caps
        sums += _checked(pending_w, pending_a, epoch, steps - len(pending_w), device)
        result.device_time_s = timer.total()
        check_time(result, job, epoch)
        check_memory(device, memory_baseline, job, result, f"at epoch {epoch + 1}")
        train_loss, arch_loss_mean = (sums / steps).tolist()
        result.epochs_done = epoch + 1
        _check_skipped(skipped, (epoch + 1) * steps, result)
        if plateau is not None:
            plateau.step(train_loss)
        report({"epoch": epoch + 1, "epochs": options.epochs, "train_loss": train_loss, "val_metric": None,
                "arch_loss": arch_loss_mean, "tau": tau, "choices": supernet.argmax(),
                "device_time_s": result.device_time_s})


def _check_skipped(skipped: list[int], done: int, result: JobResult) -> None:
    """A few skipped steps are a warning; when most steps of either kind were skipped the search
    learned nothing to trust, and it stops (the run falls back to the seed configuration)."""
    text = (f"{skipped[0]} of {done} weight steps and {skipped[1]} of {done} architecture steps skipped: "
            "their gradients were not finite")
    if max(skipped) * 2 > done:
        raise JobFailed("error", f"search failed: {text}")
    result.warnings[:] = [w for w in result.warnings if not w.endswith("were not finite")]
    if any(skipped):
        result.warnings.append(text)


def _checked(pending_w: list[torch.Tensor], pending_a: list[torch.Tensor], epoch: int, first_step: int,
             device: torch.device) -> torch.Tensor:
    """The two loss sums of the pending steps; a non-finite loss of either kind stops the job."""
    weights = checked_loss_sum(pending_w, epoch, first_step, "loss").to(device)
    arch = checked_loss_sum(pending_a, epoch, first_step, "architecture loss").to(device)
    return torch.stack([weights, arch])
