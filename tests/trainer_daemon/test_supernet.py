"""The GDAS pieces as pure functions (temperature, hard Gumbel-softmax) and the supernet of a space."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import torch

from agentnas.bus.space import SlottedSpace, load_space
from agentnas.trainer_daemon.job import JobFailed
from agentnas.trainer_daemon.supernet import (MAX_DRAWS, MixedOp, build_supernet, gate_problems, gumbel_hard,
                                              temperature)

EXAMPLE = Path(__file__).parents[1] / "fixtures" / "space_example.json"


def example() -> SlottedSpace:
    return load_space(EXAMPLE)


def replace_alternative(space: SlottedSpace, slot: int, k: int, source: str) -> SlottedSpace:
    slots = list(space.slots)
    alternatives = list(slots[slot].alternatives)
    alternatives[k] = msgspec.structs.replace(alternatives[k], source=source)
    slots[slot] = msgspec.structs.replace(slots[slot], alternatives=tuple(alternatives))
    return msgspec.structs.replace(space, slots=tuple(slots))


# ---------------------------------------------------------------- temperature


def test_temperature_anneals_linearly_from_tau_max_to_tau_min():
    taus = [temperature(epoch, 5, 10.0, 0.1) for epoch in range(5)]
    assert taus[0] == 10.0 and taus[-1] == 0.1
    steps = [a - b for a, b in zip(taus, taus[1:])]
    assert steps == pytest.approx([(10.0 - 0.1) / 4] * 4)
    assert temperature(0, 1, 10.0, 0.1) == 10.0  # one epoch: the first epoch's temperature
    assert temperature(1, 3, 4.0, 2.0) == 3.0


# ---------------------------------------------------------------- hard Gumbel-softmax


def test_forward_is_one_hot_and_gradients_reach_every_logit():
    logits = torch.tensor([0.3, -0.2, 1.1, 0.0], requires_grad=True)
    weights, index = gumbel_hard(logits, 2.0, torch.Generator().manual_seed(0))
    one_hot = torch.zeros(4)
    one_hot[index] = 1.0
    assert torch.allclose(weights, one_hot, atol=1e-7) and int(weights.detach().argmax()) == index
    coefficients = torch.tensor([1.0, 2.0, 3.0, 4.0])
    (weights * coefficients).sum().backward()
    assert logits.grad is not None and bool((logits.grad != 0).all())


def test_the_gradient_is_the_soft_samples():
    noise = torch.tensor([0.5, -1.0, 0.2])
    logits = torch.tensor([0.1, 0.4, -0.3], requires_grad=True)
    weights, index = gumbel_hard(logits, 0.7, None, draw=lambda like, generator: noise)
    (weights * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    straight_through = logits.grad.clone()
    logits.grad = None
    soft = ((logits.log_softmax(-1) + noise) / 0.7).softmax(-1)
    (soft * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    assert torch.allclose(straight_through, logits.grad)
    assert index == int(soft.argmax())


def test_samples_follow_the_logits_and_the_generator():
    logits = torch.tensor([0.0, 2.0, 0.0])
    draws = [gumbel_hard(logits, 1.0, torch.Generator().manual_seed(s))[1] for s in range(300)]
    share = draws.count(1) / len(draws)
    assert 0.6 < share < 0.9  # softmax([0, 2, 0])[1] = 0.79
    again = [gumbel_hard(logits, 1.0, torch.Generator().manual_seed(s))[1] for s in range(300)]
    assert again == draws


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_noise_is_drawn_again(bad):
    calls = []
    good = torch.tensor([0.0, 3.0, 0.0])

    def draw(like, generator):
        calls.append(1)
        return torch.tensor([bad, 0.0, 0.0]) if len(calls) < 3 else good

    weights, index = gumbel_hard(torch.zeros(3), 1.0, None, draw=draw)
    assert len(calls) == 3 and index == 1 and torch.allclose(weights, torch.tensor([0.0, 1.0, 0.0]))


def test_hopeless_logits_raise():
    with pytest.raises(ValueError, match="architecture parameters are not finite"):
        gumbel_hard(torch.tensor([0.0, float("nan")]), 1.0, None)
    with pytest.raises(ValueError, match=f"inf or NaN in {MAX_DRAWS} draws"):
        gumbel_hard(torch.zeros(2), 1.0, None, draw=lambda like, generator: torch.full((2,), float("inf")))


# ---------------------------------------------------------------- the supernet of a space


def test_the_supernet_holds_every_alternative_and_runs_one_configuration_at_a_time():
    space = example()
    torch.manual_seed(0)
    supernet = build_supernet(space)
    assert [type(op).__name__ for op in supernet.mixed] == ["MixedOp", "MixedOp"]
    assert [len(op.ops) for op in supernet.mixed] == [3, 3] and [a.numel() for a in supernet.alphas] == [3, 3]
    alpha_ids = {id(a) for a in supernet.alphas}
    assert not alpha_ids & {id(p) for p in supernet.net.parameters()}  # the weights' optimizer never sees them
    x = torch.randn(4, 3, 16, 16)
    with supernet.running_all():
        assert supernet.net(x).shape == (4, 10)
    # each configuration's parameters: the scaffold's head plus the chosen alternatives'
    stem = [3 * 16 * 9 + 32, 3 * 16 * 25 + 32, 3 * 16 * 9 + 32 + 16 * 16 * 9 + 32]
    glue = [0, 16 * 4 + 4 + 4 * 16 + 16, 16 * 9 + 16]
    for a in range(3):
        for b in range(3):
            assert supernet.params_of([a, b]) == 16 * 10 + 10 + stem[a] + glue[b]
    supernet.fix([2, 1])
    assert supernet.mixed[0].choice == 2 and supernet.mixed[1].choice == 1
    supernet.sample(1.0, torch.Generator().manual_seed(0), differentiable=True)
    supernet.net(x).sum().backward()
    assert all(a.grad is not None for a in supernet.alphas)
    assert len(supernet.argmax()) == 2


def test_frozen_slots_are_plain_alternatives_and_choose_zero():
    space = example()
    glue = msgspec.structs.replace(space.slots[1], alternatives=space.slots[1].alternatives[:1])
    supernet = build_supernet(msgspec.structs.replace(space, slots=(space.slots[0], glue)))
    assert supernet.mixed[1] is None and len(supernet.alphas) == 1
    assert type(supernet.net.stem_glue).__name__ == "SLOT_stem_glue_0"
    assert supernet.argmax()[1] == 0


def test_alternatives_that_disagree_on_shape_are_named():
    space = replace_alternative(example(), 1, 2, (
        "class SLOT_stem_glue_2(nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x[:, :8]\n"))
    supernet = build_supernet(space)
    with pytest.raises(JobFailed, match=r"slot 'stem_glue': alternative 2 outputs \(4, 8, 16, 16\) but "
                                        r"alternative 0 outputs \(4, 16, 16, 16\)"):
        with supernet.running_all():
            supernet.net(torch.randn(4, 3, 16, 16))


def test_lazy_alternatives_are_initialised_by_running_all():
    space = replace_alternative(example(), 1, 1, (
        "class SLOT_stem_glue_1(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.mix = nn.LazyConv2d(16, 1)\n\n"
        "    def forward(self, x):\n"
        "        return x + self.mix(x)\n"))
    supernet = build_supernet(space)
    with torch.no_grad(), supernet.running_all():
        supernet.net(torch.randn(2, 3, 16, 16))
    assert supernet.params_of([0, 1]) == 16 * 10 + 10 + 3 * 16 * 9 + 32 + 16 * 16 + 16


def test_every_piece_of_the_space_is_gated():
    space = replace_alternative(example(), 0, 1, example().slots[0].alternatives[1].source.replace(
        "return F.relu", "import os\n        return F.relu"))
    space = msgspec.structs.replace(space, scaffold_source=space.scaffold_source.replace(
        "x = self.stem(x)", "x = self.stem(torch.load(x))"))
    assert gate_problems(example()) == []
    assert gate_problems(space) == [
        "scaffold line 10: use of 'torch.load' is not allowed",
        "slot 'stem' alternative 1: line 8: import of 'os' is not allowed",
    ]


def test_a_slot_built_twice_is_refused():
    space = example()
    space = msgspec.structs.replace(space, scaffold_source=space.scaffold_source.replace(
        "self.stem_glue = SLOT_stem_glue()", "self.stem_glue = SLOT_stem_glue()\n        self.spare = SLOT_stem_glue()"))
    with pytest.raises(JobFailed, match="slot 'stem_glue' was instantiated 2 times"):
        build_supernet(space)


def test_mixed_op_multiplies_by_its_weight():
    op = MixedOp("s", [torch.nn.Identity(), torch.nn.Identity()])
    op.choice, op.weight = 1, torch.tensor(2.0)
    assert torch.equal(op(torch.ones(2)), torch.full((2,), 2.0))


def test_the_derived_configuration_never_cuts_the_network_with_zero():
    """A Zero on a single-interface slot is searched but never the answer (DARTS/GDAS derivation):
    even when its logit is the largest, the best other alternative is chosen."""
    import torch

    import msgspec

    from agentnas.bus.space import load_space, with_defaults
    from agentnas.trainer_daemon.supernet import build_supernet
    from tests.conftest import REPO

    space = load_space(REPO / "tests/fixtures/space_example.json")
    space = msgspec.structs.replace(space, slots=tuple(with_defaults(slot) for slot in space.slots))
    supernet = build_supernet(space)
    zeros = [[k for k, a in enumerate(slot.alternatives) if a.role == "zero"] for slot in space.slots]
    assert all(zeros), "every slot of this space offers a Zero"
    with torch.no_grad():
        for alpha, slot_zeros in zip(supernet.alphas, [z for z, s in zip(zeros, space.slots) if len(s.alternatives) > 1]):
            alpha.fill_(0.0)
            for k in slot_zeros:
                alpha[k] = 5.0
            alpha[1 if 1 not in slot_zeros else 2] = 1.0
    choices = supernet.argmax()
    assert all(k not in z for k, z in zip(choices, zeros))
