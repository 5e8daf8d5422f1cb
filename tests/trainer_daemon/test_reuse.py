"""reuse.RuntimeState: what a reused worker notices between two candidates (run in this process)."""

from __future__ import annotations

import threading
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from agentnas.trainer_daemon.reuse import RuntimeState

HEADROOM = 512 * 2**20


@pytest.fixture
def state() -> RuntimeState:
    return RuntimeState("cpu", "VmSize", HEADROOM)


def test_an_untouched_runtime_passes(state):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model(torch.randn(2, 4)).sum().backward()
    del model
    verdict = state.after_job()
    assert verdict.warnings == [] and verdict.retire == ""


def test_switches_are_put_back_with_a_warning(state):
    benchmark = torch.backends.cudnn.benchmark
    try:
        torch.set_grad_enabled(False)
        torch.backends.cudnn.benchmark = not benchmark
        torch.set_default_dtype(torch.float64)
        verdict = state.after_job()
    finally:
        torch.set_grad_enabled(True)
        torch.backends.cudnn.benchmark = benchmark
        torch.set_default_dtype(torch.float32)
    assert verdict.retire == ""
    assert len(verdict.warnings) == 3 and all("put back for the next job" in w for w in verdict.warnings)
    assert any("torch.backends.cudnn.benchmark" in w for w in verdict.warnings)
    # really put back, not only reported
    assert torch.is_grad_enabled() and torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize("where", ["function", "class method", "builtin"])
def test_a_replaced_attribute_retires_the_worker(state, monkeypatch, where):
    if where == "function":
        monkeypatch.setattr(F, "relu", torch.tanh)
        name = "torch.nn.functional.relu"
    elif where == "class method":
        monkeypatch.setattr(nn.Conv2d, "forward", lambda self, x: x)
        name = "torch.nn.modules.conv.Conv2d.forward"
    else:
        import builtins

        monkeypatch.setattr(builtins, "len", lambda x: 0)
        name = "builtins.len"
        verdict = state.after_job()
        monkeypatch.undo()
        assert name in verdict.retire
        return
    verdict = state.after_job()
    assert name in verdict.retire
    assert verdict.warnings[-1].startswith("sandbox: worker retired after this job: it changed ")


def test_a_global_hook_a_mode_or_a_thread_retires_the_worker(state):
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: out * 0)
    try:
        verdict = state.after_job()
    finally:
        handle.remove()
    assert "_global_forward_hooks" in verdict.retire

    class Mode(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    mode = Mode()
    mode.__enter__()
    try:
        verdict = state.after_job()
    finally:
        mode.__exit__(None, None, None)
    assert "torch-function or dispatch mode" in verdict.retire

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        verdict = state.after_job()
    finally:
        stop.set()
        thread.join()
    assert "1 extra Python thread(s) are running" in verdict.retire
    assert state.after_job().retire == ""  # each of them undone: the runtime passes again


def test_new_submodules_and_the_candidate_module_are_not_tampering(state, monkeypatch):
    import sys

    monkeypatch.setattr(torch, "lazily_imported_submodule", types.ModuleType("x"), raising=False)
    monkeypatch.setitem(sys.modules, "agentnas_candidate", types.ModuleType("agentnas_candidate"))
    assert state.after_job().retire == ""
    assert "agentnas_candidate" not in sys.modules  # forgotten, so its classes can be freed
    monkeypatch.setattr(torch, "not_a_module", 42, raising=False)
    assert "torch.not_a_module" in state.after_job().retire


def test_memory_growth_past_the_headroom_retires_the_worker():
    state = RuntimeState("cpu", "VmSize", 64 * 2**20)
    kept = torch.ones(40 * 2**20)  # 160 MB the "job" keeps alive
    try:
        verdict = state.after_job()
    finally:
        del kept
    assert "the process grew by" in verdict.retire and "VmSize" in verdict.retire
