"""The GDAS supernet of a slotted space, and the Gumbel-softmax pieces it samples with.

Every alternative of every slot is built into one network: the space's
alternatives are exec'd, then the scaffold, with each `SLOT_<name>` bound to a
factory of that slot's `MixedOp` (all its alternatives). A slot with one
alternative (frozen) is bound to that alternative's class itself. The
architecture parameters (one logit vector per slot with two or more
alternatives) live beside the network, not in it, so the weights' optimizer
never sees them. The learning-rate slot is not part of the supernet: the
weights train with the seed recipe's lr.

Sampling follows GDAS (Dong & Yang 2019; the authors' AutoDL code): hard
Gumbel-softmax with the straight-through trick, so each slot runs only its
sampled alternative, multiplied by that alternative's weight, whose value is 1
and whose gradient reaches every logit of the slot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from agentnas.bus.assembly import HEADER, clean_source
from agentnas.bus.space import SlottedSpace
from agentnas.trainer_daemon.candidate import exec_source, new_namespace
from agentnas.trainer_daemon.gate import check_source
from agentnas.trainer_daemon.job import JobFailed

__all__ = ["MAX_DRAWS", "MixedOp", "Supernet", "build_supernet", "gate_problems", "gumbel_hard", "gumbel_noise",
           "temperature"]

MAX_DRAWS = 100  # Gumbel draws per sample before finite logits are declared hopeless
ALPHA_INIT_STD = 1e-3  # the architecture logits start near uniform (AutoDL: 1e-3 * randn)


# ---------------------------------------------------------------- Gumbel-softmax


def temperature(epoch: int, epochs: int, tau_max: float, tau_min: float) -> float:
    """Linear annealing: tau_max at the first epoch (0), tau_min at the last (epochs - 1)."""
    if epochs <= 1 or epoch <= 0:
        return tau_max
    if epoch >= epochs - 1:
        return tau_min  # exactly, not tau_max minus a rounded difference
    return tau_max - (tau_max - tau_min) * epoch / (epochs - 1)


def gumbel_noise(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard Gumbel noise shaped like `logits`; +inf when the exponential draw is exactly 0."""
    return -torch.empty_like(logits).exponential_(generator=generator).log()


def gumbel_hard(logits: torch.Tensor, tau: float, generator: torch.Generator | None, *,
                draw: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] = gumbel_noise,
                ) -> tuple[torch.Tensor, int]:
    """One hard Gumbel-softmax sample of a logit vector: (weights, index of the sampled entry).

    `weights` is one-hot in value, and its gradient is the soft sample's (straight-through:
    one_hot - soft.detach() + soft). Noise that makes the sample inf or NaN is drawn again.
    """
    log_probs = logits.log_softmax(dim=-1)
    for _ in range(MAX_DRAWS):
        noise = draw(logits, generator)
        soft = ((log_probs + noise) / tau).softmax(dim=-1)
        finite = torch.isfinite(noise).all() & torch.isfinite(soft).all()
        # one read of the device per draw: the sampled branch is host control flow
        logits_ok, ok, index = torch.stack([torch.isfinite(logits).all().long(), finite.long(),
                                            soft.argmax()]).tolist()
        if not logits_ok:
            raise ValueError(f"architecture parameters are not finite: {logits.tolist()}")
        if ok:
            hard = torch.zeros_like(soft)
            hard[index] = 1.0
            return hard - soft.detach() + soft, index
    raise ValueError(f"Gumbel-softmax gave inf or NaN in {MAX_DRAWS} draws in a row (logits {logits.tolist()})")


# ---------------------------------------------------------------- the supernet


class MixedOp(nn.Module):
    """All alternatives of one slot. Runs the chosen one, times `weight` when one is set."""

    def __init__(self, slot: str, ops: list[nn.Module]) -> None:
        super().__init__()
        self.slot = slot
        self.ops = nn.ModuleList(ops)
        self.choice = 0
        self.weight: torch.Tensor | None = None
        self.run_all = False  # probe: every alternative runs (lazy modules initialise; shapes compared)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        if self.run_all:
            outputs = [op(*args) for op in self.ops]
            shapes = [tuple(getattr(out, "shape", ())) or type(out).__name__ for out in outputs]
            for k, shape in enumerate(shapes[1:], 1):
                if shape != shapes[0]:
                    raise JobFailed("rejected", f"slot '{self.slot}': alternative {k} outputs {shape} but "
                                                f"alternative 0 outputs {shapes[0]}")
            return outputs[0]
        out = self.ops[self.choice](*args)
        return out if self.weight is None else out * self.weight


class Supernet(nn.Module):
    """The scaffold's network with a MixedOp per mutable slot, and the architecture logits."""

    def __init__(self, net: nn.Module, mixed: list[MixedOp | None], never_final: list[set[int]] | None = None) -> None:
        super().__init__()
        self.net = net
        self.mixed = mixed  # one per slot, declaration order; None = frozen (plain list: registered in net)
        self.alphas = nn.ParameterList(
            nn.Parameter(ALPHA_INIT_STD * torch.randn(len(op.ops))) for op in mixed if op is not None)
        # per slot: alternatives searched but never the derived answer (see argmax)
        self.never_final = never_final or [set() for _ in mixed]

    def _mutable(self) -> list[MixedOp]:
        return [op for op in self.mixed if op is not None]

    def sample(self, tau: float, generator: torch.Generator | None, *, differentiable: bool) -> None:
        """Choose one alternative per mutable slot by hard Gumbel-softmax. Differentiable: its output is
        multiplied by the straight-through weight (gradients reach the logits); else it runs as is."""
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            for op, alpha in zip(self._mutable(), self.alphas):
                weights, index = gumbel_hard(alpha, tau, generator)
                op.choice, op.weight = index, (weights[index] if differentiable else None)

    def fix(self, choices: list[int]) -> None:
        """Run exactly the configuration `choices` (one index per slot; frozen slots ignore theirs)."""
        for op, k in zip(self.mixed, choices):
            if op is not None:
                op.choice, op.weight = k, None

    def argmax(self) -> list[int]:
        """The configuration the logits prefer, no noise; 0 for frozen slots.

        As DARTS and GDAS derive their cells, the zero operation takes part in the search but is
        never the answer where it would cut the network (a single-interface slot on the main
        path: everything after it would be constant)."""
        choices, alphas = [], iter(self.alphas)
        for op, never in zip(self.mixed, self.never_final):
            if op is None:
                choices.append(0)
                continue
            logits = next(alphas).detach().clone()
            if never and len(never) < len(logits):
                logits[sorted(never)] = float("-inf")
            choices.append(int(logits.argmax()))
        return choices

    def params_of(self, choices: list[int]) -> int:
        """Parameters of the configuration `choices`: the scaffold's and each chosen alternative's."""
        total = sum(p.numel() for p in self.net.parameters())
        for op, k in zip(self.mixed, choices):
            if op is not None:
                total -= sum(p.numel() for j, alt in enumerate(op.ops) if j != k for p in alt.parameters())
        return total

    @contextmanager
    def running_all(self) -> Iterator[None]:
        for op in self._mutable():
            op.run_all = True
        try:
            yield
        finally:
            for op in self._mutable():
                op.run_all = False


def gate_problems(space: SlottedSpace) -> list[str]:
    """The static gate on the scaffold and every alternative (the worker gated only model_source)."""
    problems = [f"scaffold {p}" for p in _gate(space.scaffold_source, whole_model=True)]
    for slot in space.slots:
        for k, alt in enumerate(slot.alternatives):
            problems += [f"slot '{slot.name}' alternative {k}: {p}" for p in _gate(alt.source, whole_model=False)]
    return problems


def _gate(part: str, *, whole_model: bool) -> list[str]:
    """Gate `part` behind the assembly's import header (so `F.x` is read as torch.nn.functional.x);
    line numbers are the part's own."""
    offset = HEADER.count("\n") + 1
    problems = []
    for problem in check_source(HEADER + "\n" + clean_source(part)):
        if not whole_model and problem == "no class named Architecture at the top level":
            continue
        head, sep, rest = problem.partition(": ")
        if sep and head.startswith("line ") and head[5:].isdigit():
            problem = f"line {int(head[5:]) - offset}: {rest}"
        problems.append(problem)
    return problems


def build_supernet(space: SlottedSpace) -> Supernet:
    """Exec every alternative and the scaffold (each under its own file name, for tracebacks) and
    instantiate the scaffold's Architecture with a MixedOp in each mutable slot."""
    namespace = new_namespace()
    exec_source(HEADER, namespace, "<header>")
    for slot in space.slots:
        for k, alt in enumerate(slot.alternatives):
            exec_source(clean_source(alt.source), namespace, f"<slot {slot.name} alternative {k}>")
    made: list[list[MixedOp]] = [[] for _ in space.slots]
    for slot, ops in zip(space.slots, made):
        classes = [namespace[f"SLOT_{slot.name}_{k}"] for k in range(len(slot.alternatives))]
        namespace[f"SLOT_{slot.name}"] = classes[0] if len(classes) < 2 else _factory(slot.name, classes, ops)
    exec_source(clean_source(space.scaffold_source), namespace, "<scaffold>")
    cls = namespace.get("Architecture")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise JobFailed("rejected", "the scaffold defines no class Architecture(nn.Module)")
    net = cls()
    mixed: list[MixedOp | None] = []
    for slot, ops in zip(space.slots, made):
        if len(slot.alternatives) >= 2 and len(ops) != 1:
            raise JobFailed("rejected", f"slot '{slot.name}' was instantiated {len(ops)} times by the scaffold, "
                                        "expected once")
        mixed.append(ops[0] if ops else None)
    never_final = [{k for k, alt in enumerate(slot.alternatives) if alt.role == "zero" and slot.interface == "single"}
                   for slot in space.slots]
    return Supernet(net, mixed, never_final)


def _factory(slot: str, classes: list[type], made: list[MixedOp]) -> Callable[[], MixedOp]:
    def make() -> MixedOp:
        op = MixedOp(slot, [cls() for cls in classes])
        made.append(op)
        return op

    return make
