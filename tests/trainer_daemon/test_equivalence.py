"""check_equivalence on CPU with small networks: a correct Modularizer-style refactor passes; each kind
of wrong rewrite fails with its own one-line reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from agentnas.trainer_daemon.equivalence import ForwardFailed, check_equivalence

# ---------------------------------------------------------------- the original: a block stack written inline


class Inline(nn.Module):
    """Stem, two stages (conv/norm/act as separate primitives in the top-level forward), pool, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.s1_conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.s1_bn1 = nn.BatchNorm2d(8)
        self.s1_conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.s1_bn2 = nn.BatchNorm2d(8)
        self.s2_conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.s2_bn1 = nn.BatchNorm2d(16)
        self.s2_conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.s2_bn2 = nn.BatchNorm2d(16)
        self.s2_skip = nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        if self.training:  # augmentation block: kept verbatim by the rewrite
            x = x + 0.1 * torch.randn_like(x)
        x = F.relu(self.stem_bn(self.stem(x)))
        y = F.relu(self.s1_bn1(self.s1_conv1(x)))
        y = self.s1_bn2(self.s1_conv2(y))
        x = F.relu(x + y)
        y = F.relu(self.s2_bn1(self.s2_conv1(x)))
        y = self.s2_bn2(self.s2_conv2(y))
        x = F.relu(self.s2_skip(x) + y)
        return self.head(x.mean(dim=(2, 3)))


class Stage1(nn.Module):
    def __init__(self, act=F.relu, relu_first: bool = False, bn_first: bool = False) -> None:
        super().__init__()
        self.act, self.relu_first = act, relu_first
        if bn_first:  # the same modules, built in another order
            self.bn1 = nn.BatchNorm2d(8)
            self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.bn1(self.act(self.conv1(x))) if self.relu_first else self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(x + y)


class Stage2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.skip = nn.Conv2d(8, 16, 1, stride=2, bias=False)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(self.skip(x) + y)


class Staged(nn.Module):
    """The Modularizer's rewrite: stem -> stages -> pool -> head; each variant below breaks one thing."""

    def __init__(self, *, act=F.relu, relu_first=False, bn_first=False, head_bias=True, extra=False,
                 extra_buffer=False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.stage1 = Stage1(act, relu_first, bn_first)
        self.stage2 = Stage2()
        self.head = nn.Linear(16, 5, bias=head_bias)
        if extra:
            self.scale = nn.Parameter(torch.ones(1))
        if extra_buffer:
            self.register_buffer("mean", torch.zeros(3))

    def forward(self, x):
        if self.training:
            x = x + 0.1 * torch.randn_like(x)
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.stage2(self.stage1(x))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def trained_original(x: torch.Tensor) -> Inline:
    """An original whose batch-norm statistics are not the defaults, so buffers must travel too."""
    torch.manual_seed(0)
    model = Inline()
    with torch.no_grad():
        for _ in range(3):
            model(x * 3 + 1)
    return model


def test_a_correct_stage_refactor_passes(x):
    original = trained_original(x)
    before = {k: v.clone() for k, v in original.state_dict().items()}
    torch.manual_seed(123)  # other initial values than the original's: the check copies the state over
    verdict = check_equivalence(original, Staged(), x)
    assert verdict.ok and verdict.reason == ""
    assert verdict.max_abs_diff is not None and verdict.max_abs_diff <= 1e-6
    assert original.training  # training flags put back
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())  # the original untouched


def test_the_global_rng_is_left_alone(x):
    original, rewrite = trained_original(x), Staged()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_equivalence(original, rewrite, x)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("rewrite", "reason"),
    [
        (lambda: Staged(relu_first=True), "outputs differ: max |diff| "),
        (lambda: Staged(act=F.gelu), "outputs differ: max |diff| "),
        (lambda: Staged(head_bias=False), "parameter count 5,144 != 5,149 of the original"),
        (lambda: Staged(extra=True), "parameter count 5,150 != 5,149 of the original"),
        (lambda: Staged(bn_first=True),
         "construction order differs at parameter 3: (8,) (stage1.bn1.weight) vs (8, 8, 3, 3) (s1_conv1.weight) "
         "in the original"),
        (lambda: Staged(extra_buffer=True), "buffer count 16 != 15 of the original"),
    ],
    ids=["op order", "activation", "dropped bias", "added parameter", "construction order", "added buffer"],
)
def test_wrong_rewrites_fail_with_their_reason(x, rewrite, reason):
    verdict = check_equivalence(trained_original(x), rewrite(), x)
    assert not verdict.ok
    assert verdict.reason.startswith(reason), verdict.reason
    assert "\n" not in verdict.reason
    if reason.startswith("outputs differ"):
        assert verdict.reason.endswith("> atol 1e-06 + rtol 1e-05 * |y|")
        assert verdict.max_abs_diff > 1e-3
    else:
        assert verdict.max_abs_diff is None


def test_same_count_other_shapes_is_named():
    verdict = check_equivalence(nn.Linear(4, 6, bias=False), nn.Linear(6, 4, bias=False), torch.randn(2, 4))
    assert verdict.reason == ("parameter shapes differ: the rewrite has (4, 6) beyond the original's "
                              "and lacks (6, 4) of them")


def test_tolerances_decide(x):
    original = trained_original(x)
    nudged = Staged()

    class Nudged(nn.Module):  # the same network, output shifted by 1e-4
        def __init__(self) -> None:
            super().__init__()
            self.inner = nudged

        def forward(self, x):
            return self.inner(x) + 1e-4

    assert not check_equivalence(original, Nudged(), x).ok
    verdict = check_equivalence(original, Nudged(), x, atol=1e-3)
    assert verdict.ok and verdict.max_abs_diff == pytest.approx(1e-4, rel=1e-2)


def test_output_shape_and_type_are_checked(x):
    verdict = check_equivalence(nn.Linear(4, 3), nn.Sequential(nn.Linear(4, 3), nn.Flatten(0)), torch.randn(2, 4))
    assert verdict.reason == "output shape (6,) != (2, 3) of the original"
    with pytest.raises(ForwardFailed, match="the rewrite's forward returned tuple"):
        check_equivalence(nn.Linear(4, 3), TupleOut(), torch.randn(2, 4))
    with pytest.raises(ForwardFailed, match="the rewrite's forward raised RuntimeError") as caught:
        check_equivalence(nn.Linear(4, 3), TupleOut(transposed=True), torch.randn(2, 4))
    assert isinstance(caught.value.__cause__, RuntimeError)


class TupleOut(nn.Module):
    def __init__(self, transposed: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.transposed = transposed

    def forward(self, x):
        return self.fc(x.t()) if self.transposed else (self.fc(x), x)


class LazyInline(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.LazyConv2d(8, 3, padding=1)
        self.bn = nn.LazyBatchNorm2d()
        self.head = nn.LazyLinear(5)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class LazyStaged(nn.Module):
    class Stage1(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.LazyConv2d(8, 3, padding=1)
            self.bn = nn.LazyBatchNorm2d()

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    def __init__(self, width: int = 5) -> None:
        super().__init__()
        self.stage1 = self.Stage1()
        self.head = nn.LazyLinear(width)

    def forward(self, x):
        return self.head(self.stage1(x).mean(dim=(2, 3)))


def test_lazy_modules_are_initialised_before_comparing(x):
    verdict = check_equivalence(LazyInline(), LazyStaged(), x)
    assert verdict.ok, verdict.reason
    verdict = check_equivalence(LazyInline(), LazyStaged(width=6), x)
    assert verdict.reason == "parameter count 294 != 285 of the original"
