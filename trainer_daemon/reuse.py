"""What a reused worker checks between two candidates, so one cannot steer the next.

A worker that serves several jobs (CUDA pools: a fresh process per candidate
costs a CUDA context and lazy kernel loading each time) keeps its walls for
its whole life. The walls protect the host; this module protects the *next
candidate's measurement*. After each job the worker compares the shared
runtime with a snapshot taken when it was ready:

- global switches a model may flip for its own sake (grad mode, default
  dtype, cuDNN / TF32 / determinism flags, threads) are put back, with a
  warning on the job that flipped them;
- anything else that differs retires the worker after this job: a replaced
  attribute of torch, its nn/optim classes, builtins, math or our own modules;
  a global module hook, torch-function or dispatch mode left installed; an
  extra thread running Python code; GPU memory still held; memory headroom eaten away.

A retired worker exits and the pool starts a fresh one; the job's own result
stands, carrying the warning. This is not a wall (hostile code is stopped by
the gate, the audit hook and the OS limits); it is bookkeeping that keeps
reuse from silently changing results.
"""

from __future__ import annotations

import gc
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agentnas.sandbox.limits import status_bytes

__all__ = ["RuntimeState", "Verdict"]

MB = 2**20
GPU_LEAK_TOLERANCE_BYTES = 64 * MB  # cuDNN / cuBLAS keep small per-device states once an op first runs

# Namespaces whose attributes a candidate must leave as it found them (besides every torch.* and
# agentnas.* module, and the worker's own __main__).
_WATCHED_MODULES = ("__main__", "builtins", "math", "functools", "itertools", "collections", "collections.abc",
                    "typing", "dataclasses", "numbers", "enum", "abc", "operator", "copy", "numpy")
_UNREADABLE = "<unreadable>"


def _switches(device: str) -> dict[str, tuple[Callable[[], Any], Callable[[Any], None]]]:
    """Global switches: name -> (read, write). Those this torch does not have are left out."""
    backends = torch.backends

    def attr(path: str) -> tuple[Callable[[], Any], Callable[[Any], None]] | None:
        owner_path, _, name = path.rpartition(".")
        owner: Any = torch
        for part in owner_path.split(".")[1:]:
            owner = getattr(owner, part, None)
        if owner is None or not hasattr(type(owner), name) and name not in vars(owner):
            return None
        return (lambda: getattr(owner, name)), (lambda value: setattr(owner, name, value))

    def default_device(value: Any) -> None:  # setting "cpu" would push a mode; None removes it
        torch.set_default_device(None if value == torch.device("cpu") else value)

    switches: dict[str, Any] = {
        "grad mode": (torch.is_grad_enabled, torch.set_grad_enabled),
        "default dtype": (torch.get_default_dtype, torch.set_default_dtype),
        "threads": (torch.get_num_threads, torch.set_num_threads),
        "deterministic algorithms": (torch.are_deterministic_algorithms_enabled,
                                     lambda on: torch.use_deterministic_algorithms(on)),
        "anomaly detection": (torch.is_anomaly_enabled, torch.set_anomaly_enabled),
        "float32 matmul precision": (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
    }
    for path in ("torch.backends.cudnn.enabled", "torch.backends.cudnn.benchmark", "torch.backends.cudnn.benchmark_limit",
                 "torch.backends.cudnn.deterministic", "torch.backends.cudnn.allow_tf32",
                 "torch.backends.cudnn.fp32_precision", "torch.backends.cudnn.conv.fp32_precision",
                 "torch.backends.cudnn.rnn.fp32_precision", "torch.backends.cuda.matmul.allow_tf32",
                 "torch.backends.cuda.matmul.fp32_precision", "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction",
                 "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction", "torch.backends.mkldnn.enabled",
                 "torch.backends.mkldnn.fp32_precision", "torch.backends.fp32_precision"):
        if (pair := attr(path)) is not None:
            switches[path] = pair
    for kind in ("flash", "mem_efficient", "math", "cudnn"):  # scaled-dot-product attention back ends
        read, write = getattr(backends.cuda, f"{kind}_sdp_enabled", None), getattr(backends.cuda, f"enable_{kind}_sdp", None)
        if read is not None and write is not None:
            switches[f"{kind} attention"] = (read, write)
    if hasattr(torch, "get_default_device"):
        switches["default device"] = (torch.get_default_device, default_device)
    return switches


def _read(read: Callable[[], Any]) -> Any:
    """A switch's value; some raise when legacy and new APIs were mixed (that too is a change)."""
    try:
        return read()
    except Exception:
        return _UNREADABLE


def _namespaces() -> dict[str, dict[str, Any]]:
    """Every watched namespace by name: modules, our own modules, torch.Tensor and the nn/optim classes."""
    spaces: dict[str, dict[str, Any]] = {}
    for name, module in list(sys.modules.items()):
        if (name in _WATCHED_MODULES or name == "torch" or name.startswith(("torch.", "agentnas."))) \
                and isinstance(module, types.ModuleType):
            spaces[name] = vars(module)
    classes = [torch.Tensor, nn.Module, nn.Parameter, torch.optim.Optimizer]
    for space in (vars(nn), vars(torch.optim)):
        classes += [v for v in space.values() if isinstance(v, type)]
    for cls in classes:
        spaces[f"{cls.__module__}.{cls.__qualname__}"] = dict(vars(cls))  # a mappingproxy is live; copy
    return spaces


def _fingerprint(space: dict[str, Any]) -> dict[str, tuple[int, int, bool]]:
    """Identity of each value, its length for containers (hook registries are dicts), and whether
    it is a module (a submodule imported since shows up as a new attribute of its package)."""
    with warnings.catch_warnings():  # some deprecated torch objects warn when looked at
        warnings.simplefilter("ignore")
        return {key: (id(value), len(value) if isinstance(value, (dict, list, set)) else -1,
                      isinstance(value, types.ModuleType)) for key, value in list(space.items())}


def _threads() -> int:
    """Threads that run Python code. Native threads come and go with torch's own pools (OpenMP,
    autograd per device) and cannot run a candidate's Python code, so they are not counted."""
    return len(sys._current_frames())


def _mode_stacks() -> tuple[int, int]:
    """Torch-function and dispatch modes left pushed (both stacks are empty between jobs)."""
    return torch._C._len_torch_function_stack(), torch._C._len_torch_dispatch_stack()


@dataclass
class Verdict:
    warnings: list[str]  # for the job's result
    retire: str = ""  # why the worker must not serve another job ("" = it may)

    def retire_because(self, reason: str) -> None:
        """Retire the worker after this job, and say so on the job's result (the first reason wins)."""
        if not self.retire:
            self.retire = reason
            self.warnings.append(f"sandbox: worker retired after this job: {reason}")


class RuntimeState:
    """A snapshot of the shared runtime, taken when the worker is ready, and the checks against it."""

    def __init__(self, device: str, memory_field: str, headroom_bytes: int) -> None:
        self.device = device
        self.switches = _switches(device)
        self.values = {name: _read(read) for name, (read, _) in self.switches.items()}
        self.spaces = {name: _fingerprint(space) for name, space in _namespaces().items()}
        self.modules = {name: id(module) for name, module in list(sys.modules.items())}
        self.threads = _threads()
        self.modes = _mode_stacks()
        # memory: how much the process may grow across jobs before a job would find less than its cap
        self.memory_field, self.memory_start, self.headroom = memory_field, status_bytes(memory_field), headroom_bytes
        self.gpu_bytes = torch.cuda.memory_allocated(device) if device.startswith("cuda") else 0

    def after_job(self) -> Verdict:
        """Forget the candidate, put switches back, and decide whether the worker may serve again."""
        sys.modules.pop("agentnas_candidate", None)  # harness.build_model registered it
        gc.collect()  # models are reference cycles: free them before counting memory
        warnings: list[str] = []
        retire: list[str] = []
        for name, (read, write) in self.switches.items():
            now = _read(read)
            if now == self.values[name]:
                continue
            try:
                write(self.values[name])
                restored = _read(read) == self.values[name]
            except Exception:
                restored = False
            if restored:
                warnings.append(f"sandbox: the candidate changed {name} ({self.values[name]!r} -> {now!r}); "
                                "put back for the next job")
            else:
                retire.append(f"it changed {name} ({self.values[name]!r} -> {now!r}) beyond putting back")
        changed = self._changed_attributes()
        if changed:
            retire.append(f"it changed {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}")
        replaced = [n for n, ident in self.modules.items() if n in sys.modules and id(sys.modules[n]) != ident]
        if replaced:
            retire.append(f"it replaced modules {', '.join(sorted(replaced)[:5])}")
        if _mode_stacks() != self.modes:
            retire.append("it left a torch-function or dispatch mode installed")
        if (threads := _threads()) > self.threads:
            retire.append(f"{threads - self.threads} extra Python thread(s) are running")
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            held = torch.cuda.memory_allocated(self.device) - self.gpu_bytes
            if held > GPU_LEAK_TOLERANCE_BYTES:
                retire.append(f"{held / MB:.0f} MB of GPU memory is still allocated")
        grown = status_bytes(self.memory_field) - self.memory_start
        if grown > self.headroom:
            retire.append(f"the process grew by {grown / MB:.0f} MB ({self.memory_field})")
        verdict = Verdict(warnings=warnings)
        if retire:
            verdict.retire_because("; ".join(retire))
        return verdict

    def _changed_attributes(self) -> list[str]:
        changed = []
        for name, space in _namespaces().items():
            before = self.spaces.get(name)
            if before is None:
                continue  # a module imported lazily since: not the candidate's doing
            now = _fingerprint(space)
            changed += [f"{name}.{key}" for key in sorted(set(before) | set(now))
                        if before.get(key) != now.get(key) and not _lazy(key, before, now)]
        return changed


def _lazy(key: str, before: dict[str, tuple[int, int, bool]], now: dict[str, tuple[int, int, bool]]) -> bool:
    """Changes Python and torch make by themselves on first use: a submodule imported since (a new
    attribute that is a module), the warnings registry, ABC caches. Not the candidate's doing."""
    return (key not in before and now[key][2]) or key == "__warningregistry__" or key.startswith("_abc_")
