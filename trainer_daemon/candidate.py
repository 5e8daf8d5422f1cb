"""Candidate code: exec'd, built, probed and measured. Only the sandboxed worker's harness calls this
(the worker's gate, or the harness itself for sources the worker did not gate, passed it first)."""

from __future__ import annotations

import linecache
import sys
import types

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from agentnas.trainer_daemon.batches import task_loss
from agentnas.trainer_daemon.job import JobFailed

__all__ = ["MODULE_NAME", "build_model", "count_flops", "exec_source", "new_namespace", "probe"]

# sys.modules name of the candidate's module; a reused worker forgets it after each job (reuse.py)
MODULE_NAME = "agentnas_candidate"


def new_namespace() -> dict:
    """The globals of a fresh candidate module, registered in sys.modules while the job runs:
    dataclasses and typing resolve names through it."""
    module = types.ModuleType(MODULE_NAME)
    sys.modules[module.__name__] = module
    return module.__dict__


def exec_source(source: str, namespace: dict, filename: str = "<candidate>") -> None:
    """Run `source` in `namespace`; tracebacks quote its lines under `filename`."""
    # Not named after the eval id: tracebacks are fed back to the LLM, and a re-execution
    # (new run id, new eval ids) must ask exactly what the original run asked.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)  # gated before it gets here


def build_model(source: str, eval_id: str = "", *, filename: str = "<candidate>") -> nn.Module:
    """Exec `source` in a fresh module and instantiate its Architecture."""
    namespace = new_namespace()
    exec_source(source, namespace, filename)
    cls = namespace.get("Architecture")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise JobFailed("rejected", "the source defines no class Architecture(nn.Module)")
    return cls()


def count_flops(model: nn.Module, x1: torch.Tensor) -> int:
    """FLOPs of one eval-mode forward of `x1` (a batch of one)."""
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x1)
    finally:
        model.train()
    return int(counter.get_total_flops())


def probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_name: str,
          output_shape: tuple[int, ...], check_finite: bool) -> None:
    """One forward/backward: the output shape must match the task; gradients are cleared after.

    It also initialises lazy modules (nn.LazyLinear ...), whose parameters exist only after a
    first forward: count parameters and build optimizers after it."""
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
