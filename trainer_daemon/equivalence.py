"""Does a rewritten network compute exactly what the original does? (PROTOCOL.md, Modularizer.)

The Modularizer rewrites a seed so each stage is its own module; the Slot
Planner's seed configuration must rebuild the seed. Either is accepted only
if, in this order:
1. the parameter count is the same;
2. the sorted multiset of parameter shapes is the same;
3. the construction order is the same: parameter shapes, then buffer shapes,
   in registration order (the order a seeded build draws its initial values in);
4. with the original's parameters and buffers copied into the rewrite (matched
   by position in that order), both in eval mode give allclose outputs on `x`.

The first failed check is the verdict, in one line meant for the LLM that
wrote the rewrite. Lazy modules (nn.LazyLinear ...) get one forward first, so
their parameters exist. Exceptions from either model's own code propagate as
ForwardFailed, naming which model raised.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.parameter import is_lazy

__all__ = ["ForwardFailed", "Verdict", "check_equivalence"]

Shape = tuple[int, ...]


class Verdict(NamedTuple):
    ok: bool
    reason: str  # "" when ok
    max_abs_diff: float | None = None  # known once outputs were compared


class ForwardFailed(RuntimeError):
    """A model's forward raised; the cause is chained."""


def check_equivalence(original: nn.Module, rewritten: nn.Module, x: torch.Tensor, *,
                      rtol: float = 1e-5, atol: float = 1e-6) -> Verdict:
    """Compare `rewritten` with `original` on the batch `x` (both on x's device).

    Copies the original's state into `rewritten` (that is the check); initialises lazy modules
    of both. Training flags are put back afterwards; the global RNG is left as it was.
    """
    modes = [(m, m.training) for model in (original, rewritten) for m in model.modules()]
    original.eval()
    rewritten.eval()
    try:
        for model, who in ((original, "original"), (rewritten, "rewrite")):
            if any(is_lazy(t) for t in (*model.parameters(), *model.buffers())):
                _forward(model, x, who)
        problem = _structure_problem(original, rewritten)
        if problem:
            return Verdict(False, problem)
        _transplant(original, rewritten)
        expected, got = _forward(original, x, "original"), _forward(rewritten, x, "rewrite")
        return _compare(expected, got, rtol, atol)
    finally:
        for module, training in modes:
            module.train(training)


def _forward(model: nn.Module, x: torch.Tensor, who: str) -> torch.Tensor:
    """One no-grad forward from the same RNG state each time, so eval-mode randomness matches too."""
    devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()] \
        if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(0)
        try:
            out = model(x)
        except Exception as exc:
            raise ForwardFailed(f"the {who}'s forward raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, torch.Tensor):
        raise ForwardFailed(f"the {who}'s forward returned {type(out).__name__}, expected a Tensor")
    return out


def _shape(t: torch.Tensor) -> Shape:
    return tuple(t.shape)


def _counts(shapes: Counter[Shape]) -> str:
    return ", ".join(f"{s} x{n}" if n > 1 else str(s) for s, n in sorted(shapes.items()))


def _structure_problem(original: nn.Module, rewritten: nn.Module) -> str:
    """Checks 1-3; "" when they pass."""
    params_o, params_r = list(original.named_parameters()), list(rewritten.named_parameters())
    count_o, count_r = sum(p.numel() for _, p in params_o), sum(p.numel() for _, p in params_r)
    if count_r != count_o:
        return f"parameter count {count_r:,} != {count_o:,} of the original"
    shapes_o, shapes_r = Counter(_shape(p) for _, p in params_o), Counter(_shape(p) for _, p in params_r)
    if shapes_r != shapes_o:
        extra, missing = shapes_r - shapes_o, shapes_o - shapes_r
        return (f"parameter shapes differ: the rewrite has {_counts(extra) or 'nothing'} beyond the original's "
                f"and lacks {_counts(missing) or 'nothing'} of them")
    for i, ((name_r, p_r), (name_o, p_o)) in enumerate(zip(params_r, params_o)):
        if _shape(p_r) != _shape(p_o):
            return (f"construction order differs at parameter {i}: {_shape(p_r)} ({name_r}) vs "
                    f"{_shape(p_o)} ({name_o}) in the original")
    buffers_o, buffers_r = list(original.named_buffers()), list(rewritten.named_buffers())
    if len(buffers_r) != len(buffers_o):
        return f"buffer count {len(buffers_r)} != {len(buffers_o)} of the original"
    for i, ((name_r, b_r), (name_o, b_o)) in enumerate(zip(buffers_r, buffers_o)):
        if _shape(b_r) != _shape(b_o):
            return (f"construction order differs at buffer {i}: {_shape(b_r)} ({name_r}) vs "
                    f"{_shape(b_o)} ({name_o}) in the original")
    return ""


def _transplant(original: nn.Module, rewritten: nn.Module) -> None:
    """The original's parameters and buffers into the rewrite, position by position."""
    with torch.no_grad():
        for target, source in zip(rewritten.parameters(), original.parameters()):
            target.copy_(source)
        for target, source in zip(rewritten.buffers(), original.buffers()):
            target.copy_(source)


def _compare(expected: torch.Tensor, got: torch.Tensor, rtol: float, atol: float) -> Verdict:
    if got.shape != expected.shape:
        return Verdict(False, f"output shape {_shape(got)} != {_shape(expected)} of the original")
    a, b = got.detach().double(), expected.detach().double()
    diff = (a - b).abs()
    diff[(a == b) | (a.isnan() & b.isnan())] = 0.0  # equal infinities and NaN at the same place agree
    worst = float(diff.max()) if diff.numel() else 0.0
    if torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
        return Verdict(True, "", worst)
    return Verdict(False, f"outputs differ: max |diff| {worst:.3g} > atol {atol:g} + rtol {rtol:g} * |y|", worst)
