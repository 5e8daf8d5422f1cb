"""A small library of slot alternatives, written as source text (no torch here).

The built-in spaces (`agentnas.agents.builtin_spaces`) and the space for the
rule planner's seeds are assembled from these parts: stems, stages of residual
blocks, glue steps and heads for 1-D `(C, L)` and 2-D `(C, H, W)` feature
maps, and layers for flat vectors. Every generator returns `Part`s: a
one-line description and the source of one self-contained class named `ALT`
(no constructor arguments, every width written in, helpers nested inside the
class), which `make_slot` renames to `SLOT_<slot>_<k>`.

Shape rules every part keeps, so the alternatives of one slot are
interchangeable: a stride-2 step (3x3 convolution with padding 1, 3x3 max pool
with padding 1, 1x1 convolution) maps a side s to (s - 1) // 2 + 1; a 2x2 max
pool (the rule planner's CNN) maps s to s // 2; everything else keeps sizes.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from agentnas.bus.space import Alternative, Slot, offered_defaults, rename_alternative_class, with_defaults

__all__ = [
    "Dims",
    "Part",
    "classifier_heads",
    "conv_glue",
    "dense_heads",
    "make_slot",
    "mlp_heads",
    "mlp_layers",
    "plain_stages",
    "residual_stages",
    "stems",
    "strided",
    "vector_glue",
]


@dataclass(frozen=True)
class Part:
    description: str
    source: str  # one class named ALT


@dataclass(frozen=True)
class Dims:
    """Names of the layers for 1-D or 2-D feature maps."""

    d: int  # 1: (C, L), 2: (C, H, W)

    @property
    def conv(self) -> str:
        return f"nn.Conv{self.d}d"

    @property
    def bn(self) -> str:
        return f"nn.BatchNorm{self.d}d"

    @property
    def drop(self) -> str:
        return f"nn.Dropout{self.d}d"

    @property
    def maxpool(self) -> str:
        return f"nn.MaxPool{self.d}d"

    @property
    def gap(self) -> str:
        return f"nn.AdaptiveAvgPool{self.d}d"

    @property
    def gmp(self) -> str:
        return f"nn.AdaptiveMaxPool{self.d}d"

    @property
    def axes(self) -> str:  # the spatial axes of (B, C, *spatial)
        return "(2, 3)" if self.d == 2 else "(2,)"

    @property
    def expand(self) -> str:  # (B, C) -> broadcastable over (B, C, *spatial)
        return "[:, :, None, None]" if self.d == 2 else "[:, :, None]"


def strided(size: int) -> int:
    """A side after a stride-2 step with 'same' padding."""
    return (size - 1) // 2 + 1


def _shape_text(shape: Sequence[int]) -> str:
    return ", ".join(str(n) for n in shape)


def _cls(doc: str, init: Sequence[str], forward: Sequence[str], *, args: str = "x", nested: str = "") -> str:
    """Source of `class ALT(nn.Module)` from its docstring, __init__ body, forward body and nested helpers."""
    out = f'class ALT(nn.Module):\n    """{doc}"""\n\n'
    if nested:
        out += textwrap.indent(nested.strip("\n") + "\n", "    ") + "\n"
    if init:
        out += "    def __init__(self):\n        super().__init__()\n"
        out += "".join(f"        {line}\n" for line in init) + "\n"
    out += f"    def forward(self, {args}):\n" + "".join(f"        {line}\n" for line in forward)
    return out


def make_slot(name: str, *, kind: str, description: str, seed_description: str, input_shape: Sequence[int],
              output_shape: Sequence[int], parts: Sequence[Part]) -> Slot:
    """A slot from its parts: a module slot's first part is the seed's own choice; a glue slot
    starts with Identity and lists its parts after it. Identity and Zero are appended
    (`with_defaults`) where input and output shapes match and the 8-alternative cap leaves room."""
    base = Slot(name=name, class_name=f"SLOT_{name}", kind=kind, description=description,  # type: ignore[arg-type]
                seed_description=seed_description, input_shape=tuple(input_shape),
                output_shape=tuple(output_shape), alternatives=())
    alternatives = [offered_defaults(base)[0]] if kind == "glue" else []
    for part in parts:
        role = "seed" if kind == "module" and not alternatives else "candidate"
        source = rename_alternative_class(part.source, f"SLOT_{name}_{len(alternatives)}")
        alternatives.append(Alternative(description=part.description, source=source, role=role))  # type: ignore[arg-type]
    slot = msgspec.structs.replace(base, alternatives=tuple(alternatives))
    return with_defaults(slot) if slot.input_shape == slot.output_shape else slot


# ---------------------------------------------------------------- stems


def stems(c_in: int, c_out: int, dims: Dims, style: str) -> list[Part]:
    """Stems: "wrn" (a bare 3x3 convolution; the pre-activation blocks normalise), "cifar"
    (3x3 convolution, BN, ReLU; the rule planner's ResNet stem too) and "imagenet"
    (7x7 stride-2 convolution, BN, ReLU, 3x3 stride-2 max pool: sides s -> ceil(ceil(s/2)/2))."""
    conv, bn = dims.conv, dims.bn

    def single(k: int, norm: bool, act: str = "torch.relu") -> tuple[list[str], list[str]]:
        init = [f"self.conv = {conv}({c_in}, {c_out}, {k}, padding={k // 2}, bias=False)"]
        if not norm:
            return init, ["return self.conv(x)"]
        return init + [f"self.bn = {bn}({c_out})"], [f"return {act}(self.bn(self.conv(x)))"]

    def two(mid: int, act: str = "torch.relu") -> tuple[list[str], list[str]]:
        return ([f"self.conv1 = {conv}({c_in}, {mid}, 3, padding=1, bias=False)", f"self.bn1 = {bn}({mid})",
                 f"self.conv2 = {conv}({mid}, {c_out}, 3, padding=1, bias=False)", f"self.bn2 = {bn}({c_out})"],
                [f"x = {act}(self.bn1(self.conv1(x)))", f"return {act}(self.bn2(self.conv2(x)))"])

    if style == "wrn":
        table = [("3x3 convolution, no bias (the seed; the first block's pre-activation normalises it)", single(3, False)),
                 ("5x5 convolution, no bias", single(5, False)),
                 ("7x7 convolution, no bias (wider first receptive field)", single(7, False)),
                 ("1x1 convolution (per-position channel mixing only)", single(1, False)),
                 ("3x3 convolution, BN, ReLU", single(3, True)),
                 ("two 3x3 convolutions with BN and ReLU", two(c_out))]
    elif style == "cifar":
        table = [("3x3 convolution, BN, ReLU (the seed)", single(3, True)),
                 ("5x5 convolution, BN, ReLU", single(5, True)),
                 ("7x7 convolution, BN, ReLU", single(7, True)),
                 ("1x1 convolution, BN, ReLU", single(1, True)),
                 ("3x3 convolution, BN, GELU", single(3, True, "F.gelu")),
                 ("two 3x3 convolutions with BN and ReLU", two(c_out))]
    elif style == "imagenet":
        pool = f"self.pool = {dims.maxpool}(3, stride=2, padding=1)"
        deep = max(1, c_out // 2)
        table = [("7x7 stride-2 convolution, BN, ReLU, 3x3 stride-2 max pool (the seed)",
                  ([f"self.conv = {conv}({c_in}, {c_out}, 7, stride=2, padding=3, bias=False)", f"self.bn = {bn}({c_out})", pool],
                   ["return self.pool(torch.relu(self.bn(self.conv(x))))"])),
                 ("deep stem: three 3x3 convolutions (the first stride 2) with BN and ReLU, then the max pool",
                  ([f"self.conv1 = {conv}({c_in}, {deep}, 3, stride=2, padding=1, bias=False)", f"self.bn1 = {bn}({deep})",
                    f"self.conv2 = {conv}({deep}, {deep}, 3, padding=1, bias=False)", f"self.bn2 = {bn}({deep})",
                    f"self.conv3 = {conv}({deep}, {c_out}, 3, padding=1, bias=False)", f"self.bn3 = {bn}({c_out})", pool],
                   ["x = torch.relu(self.bn1(self.conv1(x)))", "x = torch.relu(self.bn2(self.conv2(x)))",
                    "return self.pool(torch.relu(self.bn3(self.conv3(x))))"])),
                 ("7x7 stride-2 convolution, BN, ReLU, then a stride-2 3x3 convolution instead of the max pool",
                  ([f"self.conv1 = {conv}({c_in}, {c_out}, 7, stride=2, padding=3, bias=False)", f"self.bn1 = {bn}({c_out})",
                    f"self.conv2 = {conv}({c_out}, {c_out}, 3, stride=2, padding=1, bias=False)", f"self.bn2 = {bn}({c_out})"],
                   ["x = torch.relu(self.bn1(self.conv1(x)))", "return torch.relu(self.bn2(self.conv2(x)))"])),
                 ("5x5 stride-2 convolution, BN, ReLU, 3x3 stride-2 max pool",
                  ([f"self.conv = {conv}({c_in}, {c_out}, 5, stride=2, padding=2, bias=False)", f"self.bn = {bn}({c_out})", pool],
                   ["return self.pool(torch.relu(self.bn(self.conv(x))))"])),
                 ("3x3 stride-2 convolution, BN, ReLU, 3x3 stride-2 average pool",
                  ([f"self.conv = {conv}({c_in}, {c_out}, 3, stride=2, padding=1, bias=False)", f"self.bn = {bn}({c_out})",
                    f"self.pool = nn.AvgPool{dims.d}d(3, stride=2, padding=1)"],
                   ["return self.pool(torch.relu(self.bn(self.conv(x))))"]))]
    else:
        raise ValueError(f"unknown stem style {style!r}")
    return [Part(description, _cls(description, init, forward)) for description, (init, forward) in table]


# ---------------------------------------------------------------- residual blocks and stages


def _se_lines(channels: str, dims: Dims, var: str) -> tuple[list[str], list[str]]:
    """Squeeze-and-excitation (reduction 4) on `var`, inside a block's __init__/forward."""
    hidden = f"max(1, {channels} // 4)"
    return ([f"self.se1 = nn.Linear({channels}, {hidden})", f"self.se2 = nn.Linear({hidden}, {channels})"],
            [f"w = torch.sigmoid(self.se2(torch.relu(self.se1({var}.mean(dim={dims.axes})))))",
             f"{var} = {var} * w{dims.expand}"])


def _block(kind: str, dims: Dims, *, se: bool = False, dilation: int = 1) -> str:
    """A nested `class Block(nn.Module)` taking (c_in, c_out, stride).

    post: the classic basic block (conv-BN-ReLU-conv-BN, add, ReLU; 1x1 conv + BN
    shortcut when the shape changes), exactly the rule planner's and ResNet-18's.
    pre: the pre-activation wide block of WRN (BN-ReLU-conv twice; 1x1 conv
    shortcut on the activated input when the shape changes).
    bottleneck_post / bottleneck_pre: 1x1 -> 3x3 -> 1x1 with a quarter of the width.
    mbconv: inverted residual (1x1 expand x4, depthwise 3x3, 1x1 project; skip when shapes allow).
    """
    conv, bn = dims.conv, dims.bn
    pad = f"padding={dilation}" + (f", dilation={dilation}" if dilation > 1 else "")
    se_init, se_forward = _se_lines("c_out", dims, "out") if se else ([], [])
    if kind == "post":
        init = [f"self.conv1 = {conv}(c_in, c_out, 3, stride=stride, {pad}, bias=False)", f"self.bn1 = {bn}(c_out)",
                f"self.conv2 = {conv}(c_out, c_out, 3, {pad}, bias=False)", f"self.bn2 = {bn}(c_out)", *se_init,
                "self.shortcut = nn.Identity()", "if stride != 1 or c_in != c_out:",
                f"    self.shortcut = nn.Sequential({conv}(c_in, c_out, 1, stride=stride, bias=False), {bn}(c_out))"]
        forward = ["out = torch.relu(self.bn1(self.conv1(x)))", "out = self.bn2(self.conv2(out))", *se_forward,
                   "return torch.relu(out + self.shortcut(x))"]
    elif kind == "pre":
        init = [f"self.bn1 = {bn}(c_in)", f"self.conv1 = {conv}(c_in, c_out, 3, stride=stride, {pad}, bias=False)",
                f"self.bn2 = {bn}(c_out)", f"self.conv2 = {conv}(c_out, c_out, 3, {pad}, bias=False)", *se_init,
                "self.project = stride != 1 or c_in != c_out",
                f"self.shortcut = {conv}(c_in, c_out, 1, stride=stride, bias=False) if self.project else None"]
        forward = ["out = F.relu(self.bn1(x))", "if self.project:", "    x = self.shortcut(out)",
                   "out = self.conv2(F.relu(self.bn2(self.conv1(out))))", *se_forward, "return x + out"]
    elif kind == "bottleneck_post":
        init = ["mid = max(1, c_out // 4)", f"self.conv1 = {conv}(c_in, mid, 1, bias=False)", f"self.bn1 = {bn}(mid)",
                f"self.conv2 = {conv}(mid, mid, 3, stride=stride, padding=1, bias=False)", f"self.bn2 = {bn}(mid)",
                f"self.conv3 = {conv}(mid, c_out, 1, bias=False)", f"self.bn3 = {bn}(c_out)",
                "self.shortcut = nn.Identity()", "if stride != 1 or c_in != c_out:",
                f"    self.shortcut = nn.Sequential({conv}(c_in, c_out, 1, stride=stride, bias=False), {bn}(c_out))"]
        forward = ["out = torch.relu(self.bn1(self.conv1(x)))", "out = torch.relu(self.bn2(self.conv2(out)))",
                   "out = self.bn3(self.conv3(out))", "return torch.relu(out + self.shortcut(x))"]
    elif kind == "bottleneck_pre":
        init = ["mid = max(1, c_out // 4)", f"self.bn1 = {bn}(c_in)", f"self.conv1 = {conv}(c_in, mid, 1, bias=False)",
                f"self.bn2 = {bn}(mid)", f"self.conv2 = {conv}(mid, mid, 3, stride=stride, padding=1, bias=False)",
                f"self.bn3 = {bn}(mid)", f"self.conv3 = {conv}(mid, c_out, 1, bias=False)",
                "self.project = stride != 1 or c_in != c_out",
                f"self.shortcut = {conv}(c_in, c_out, 1, stride=stride, bias=False) if self.project else None"]
        forward = ["out = F.relu(self.bn1(x))", "if self.project:", "    x = self.shortcut(out)",
                   "out = self.conv1(out)", "out = self.conv2(F.relu(self.bn2(out)))",
                   "out = self.conv3(F.relu(self.bn3(out)))", "return x + out"]
    elif kind == "mbconv":
        init = ["hidden = 4 * c_in", f"self.expand = {conv}(c_in, hidden, 1, bias=False)", f"self.bn1 = {bn}(hidden)",
                f"self.dw = {conv}(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)",
                f"self.bn2 = {bn}(hidden)", f"self.project = {conv}(hidden, c_out, 1, bias=False)",
                f"self.bn3 = {bn}(c_out)", "self.skip = stride == 1 and c_in == c_out"]
        forward = ["out = F.relu6(self.bn1(self.expand(x)))", "out = F.relu6(self.bn2(self.dw(out)))",
                   "out = self.bn3(self.project(out))", "return x + out if self.skip else out"]
    else:
        raise ValueError(f"unknown block kind {kind!r}")
    body = "    def __init__(self, c_in, c_out, stride):\n        super().__init__()\n"
    body += "".join(f"        {line}\n" for line in init)
    body += "\n    def forward(self, x):\n" + "".join(f"        {line}\n" for line in forward)
    return "class Block(nn.Module):\n" + body


def _stage(description: str, block: str, c_in: int, c_out: int, stride: int, n: int) -> Part:
    calls = [f"self.Block({c_in}, {c_out}, {stride})"] + [f"self.Block({c_out}, {c_out}, 1)"] * (n - 1)
    return Part(description, _cls(description, [f"self.blocks = nn.Sequential({', '.join(calls)})"],
                                  ["return self.blocks(x)"], nested=block))


def residual_stages(c_in: int, c_out: int, stride: int, n: int, kind: str, dims: Dims) -> list[Part]:
    """A stage of `n` residual blocks of `kind` ("post" or "pre"), the first with `stride`; seed first.

    Alternatives change one thing each: depth (one more block; one fewer when
    n > 1, else the other block kind), an SE gate in every block, bottleneck
    blocks, inverted-residual (MBConv) blocks, dilation 2.
    """
    name = {"post": "basic residual", "pre": "pre-activation wide residual"}[kind]
    other = "pre" if kind == "post" else "post"
    where = f"{c_in} -> {c_out} channels, stride {stride}"
    blocks = lambda count: f"{count} {name} block{'s' if count > 1 else ''}"  # noqa: E731
    parts = [_stage(f"{blocks(n)}, {where} (the seed)", _block(kind, dims), c_in, c_out, stride, n),
             _stage(f"{blocks(n + 1)} (deeper), {where}", _block(kind, dims), c_in, c_out, stride, n + 1)]
    if n > 1:
        parts.append(_stage(f"{blocks(n - 1)} (shallower), {where}", _block(kind, dims), c_in, c_out, stride, n - 1))
    parts += [
        _stage(f"{blocks(n)} with a squeeze-and-excitation gate (reduction 4), {where}",
               _block(kind, dims, se=True), c_in, c_out, stride, n),
        _stage(f"{n} bottleneck block{'s' if n > 1 else ''} (1x1-3x3-1x1, a quarter of the width inside), {where}",
               _block(f"bottleneck_{kind}", dims), c_in, c_out, stride, n),
        _stage(f"{n} inverted-residual (MBConv, expansion 4, depthwise 3x3) block{'s' if n > 1 else ''}, {where}",
               _block("mbconv", dims), c_in, c_out, stride, n),
        _stage(f"{blocks(n)} with dilation-2 convolutions (wider receptive field), {where}",
               _block(kind, dims, dilation=2), c_in, c_out, stride, n),
    ]
    if n == 1:
        parts.append(_stage(f"1 {'basic residual' if other == 'post' else 'pre-activation residual'} block instead, {where}",
                            _block(other, dims), c_in, c_out, stride, n))
    return parts


def plain_stages(c_in: int, c_out: int, down: bool, dims: Dims) -> list[Part]:
    """The rule planner's CNN stage (3x3 conv, BN, ReLU, then a 2x2 max pool when `down`); seed first."""
    conv, bn = dims.conv, dims.bn
    pool_init = [f"self.pool = {dims.maxpool}(2)"] if down else []
    pooled = (lambda expr: f"return self.pool({expr})") if down else (lambda expr: f"return {expr}")
    suffix = ", then 2x2 max pool" if down else ""
    where = f" ({c_in} -> {c_out} channels{suffix})"
    table = [
        ("3x3 convolution, BN, ReLU" + where + " (the seed)",
         [f"self.conv = {conv}({c_in}, {c_out}, kernel_size=3, padding=1, bias=False)", f"self.bn = {bn}({c_out})", *pool_init],
         [pooled("torch.relu(self.bn(self.conv(x)))")]),
        ("5x5 convolution, BN, ReLU" + where,
         [f"self.conv = {conv}({c_in}, {c_out}, 5, padding=2, bias=False)", f"self.bn = {bn}({c_out})", *pool_init],
         [pooled("torch.relu(self.bn(self.conv(x)))")]),
        ("two 3x3 convolutions with BN and ReLU" + where,
         [f"self.conv1 = {conv}({c_in}, {c_out}, 3, padding=1, bias=False)", f"self.bn1 = {bn}({c_out})",
          f"self.conv2 = {conv}({c_out}, {c_out}, 3, padding=1, bias=False)", f"self.bn2 = {bn}({c_out})", *pool_init],
         ["x = torch.relu(self.bn1(self.conv1(x)))", pooled("torch.relu(self.bn2(self.conv2(x)))")]),
        ("depthwise-separable convolution (3x3 depthwise, 1x1 pointwise), BN, ReLU" + where,
         [f"self.dw = {conv}({c_in}, {c_in}, 3, padding=1, groups={c_in}, bias=False)",
          f"self.pw = {conv}({c_in}, {c_out}, 1, bias=False)", f"self.bn = {bn}({c_out})", *pool_init],
         [pooled("torch.relu(self.bn(self.pw(self.dw(x))))")]),
        ("3x3 convolution, BN, ReLU with a squeeze-and-excitation gate" + where,
         [f"self.conv = {conv}({c_in}, {c_out}, 3, padding=1, bias=False)", f"self.bn = {bn}({c_out})",
          f"self.se1 = nn.Linear({c_out}, {max(1, c_out // 4)})", f"self.se2 = nn.Linear({max(1, c_out // 4)}, {c_out})",
          *pool_init],
         ["x = torch.relu(self.bn(self.conv(x)))",
          f"w = torch.sigmoid(self.se2(torch.relu(self.se1(x.mean(dim={dims.axes})))))",
          pooled(f"x * w{dims.expand}")]),
        ("3x3 convolution, BN, GELU" + where,
         [f"self.conv = {conv}({c_in}, {c_out}, 3, padding=1, bias=False)", f"self.bn = {bn}({c_out})", *pool_init],
         [pooled("F.gelu(self.bn(self.conv(x)))")]),
    ]
    parts = [Part(d, _cls(d, init, fwd)) for d, init, fwd in table]
    residual = _block("post", dims)
    pool_line = [f"self.pool = {dims.maxpool}(2)"] if down else []
    d = "basic residual block (two 3x3 convolutions, skip connection)" + where
    parts.append(Part(d, _cls(d, [f"self.block = self.Block({c_in}, {c_out}, 1)", *pool_line],
                              [pooled("self.block(x)")], nested=residual)))
    return parts


# ---------------------------------------------------------------- glue


def conv_glue(channels: int, dims: Dims) -> list[Part]:
    """Shape-keeping steps for (C, *spatial) maps; the slot adds Identity first and Zero last."""
    c, conv, bn = channels, dims.conv, dims.bn
    hidden = max(1, c // 4)
    k = 7
    table = [
        ("squeeze-and-excitation channel gate (reduction 4)",
         [f"self.fc1 = nn.Linear({c}, {hidden})", f"self.fc2 = nn.Linear({hidden}, {c})"],
         [f"w = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim={dims.axes})))))", f"return x * w{dims.expand}"]),
        ("residual 1x1 refinement: x + conv1x1(ReLU(BN(x)))",
         [f"self.bn = {bn}({c})", f"self.conv = {conv}({c}, {c}, 1, bias=False)"],
         ["return x + self.conv(torch.relu(self.bn(x)))"]),
        ("residual 3x3 depthwise convolution: x + BN(dwconv(x))",
         [f"self.dw = {conv}({c}, {c}, 3, padding=1, groups={c}, bias=False)", f"self.bn = {bn}({c})"],
         ["return x + self.bn(self.dw(x))"]),
        (f"spatial attention gate (a {k}-wide convolution over the channel mean and max, sigmoid)",
         [f"self.conv = {conv}(2, 1, {k}, padding={k // 2})"],
         ["s = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)",
          "return x * torch.sigmoid(self.conv(s))"]),
        ("channel dropout (p = 0.1, training only)", [f"self.drop = {dims.drop}(0.1)"], ["return self.drop(x)"]),
        ("batch normalisation", [f"self.bn = {bn}({c})"], ["return self.bn(x)"]),
    ]
    return [Part(d, _cls(d, init, fwd)) for d, init, fwd in table]


def vector_glue(width: int) -> list[Part]:
    """Shape-keeping steps for flat (width,) features; the slot adds Identity first and Zero last."""
    w = width
    table = [
        ("residual feed-forward block: x + Linear(GELU(Linear(LayerNorm(x)))) with 2x expansion",
         [f"self.norm = nn.LayerNorm({w})", f"self.fc1 = nn.Linear({w}, {2 * w})", f"self.fc2 = nn.Linear({2 * w}, {w})"],
         ["return x + self.fc2(F.gelu(self.fc1(self.norm(x))))"]),
        ("layer normalisation", [f"self.norm = nn.LayerNorm({w})"], ["return self.norm(x)"]),
        ("dropout (p = 0.2, training only)", ["self.drop = nn.Dropout(0.2)"], ["return self.drop(x)"]),
        ("feature gate: x * sigmoid(Linear(x))", [f"self.fc = nn.Linear({w}, {w})"], ["return x * torch.sigmoid(self.fc(x))"]),
    ]
    return [Part(d, _cls(d, init, fwd)) for d, init, fwd in table]


# ---------------------------------------------------------------- heads


def classifier_heads(channels: int, output_shape: Sequence[int], dims: Dims, *, pre_act: bool) -> list[Part]:
    """Pooled heads: features (C, *spatial) -> Linear -> reshape to output_shape; seed first.

    `pre_act`: every head starts with BN and ReLU (the features of a
    pre-activation network are not normalised yet).
    """
    c, n = channels, math.prod(output_shape)
    shape = _shape_text(output_shape)
    pre_init = [f"self.bn = {dims.bn}({c})"] if pre_act else []
    pre_fwd = ["x = F.relu(self.bn(x))"] if pre_act else []
    first = "BN, ReLU, " if pre_act else ""
    out = f"return x.reshape(x.shape[0], {shape})"
    table = [
        (f"{first}global average pool, linear layer (the seed)",
         [*pre_init, f"self.pool = {dims.gap}(1)", f"self.fc = nn.Linear({c}, {n})"],
         [*pre_fwd, "x = self.fc(torch.flatten(self.pool(x), 1))", out]),
        (f"{first}global average and max pools concatenated, linear layer",
         [*pre_init, f"self.fc = nn.Linear({2 * c}, {n})"],
         [*pre_fwd, "x = torch.cat([x.flatten(2).mean(dim=2), x.flatten(2).amax(dim=2)], dim=1)", "x = self.fc(x)", out]),
        (f"{first}global average pool, dropout 0.3, linear layer",
         [*pre_init, "self.drop = nn.Dropout(0.3)", f"self.fc = nn.Linear({c}, {n})"],
         [*pre_fwd, "x = self.fc(self.drop(x.flatten(2).mean(dim=2)))", out]),
        (f"{first}global average pool, two-layer MLP (hidden {c}, GELU, dropout 0.1)",
         [*pre_init, f"self.fc1 = nn.Linear({c}, {c})", "self.drop = nn.Dropout(0.1)", f"self.fc2 = nn.Linear({c}, {n})"],
         [*pre_fwd, "x = self.fc2(self.drop(F.gelu(self.fc1(x.flatten(2).mean(dim=2)))))", out]),
        (f"{first}attention pooling (1x1 convolution scores, softmax over positions), linear layer",
         [*pre_init, f"self.score = {dims.conv}({c}, 1, 1)", f"self.fc = nn.Linear({c}, {n})"],
         [*pre_fwd, "w = torch.softmax(self.score(x).flatten(2), dim=2)", "x = (x.flatten(2) * w).sum(dim=2)",
          "x = self.fc(x)", out]),
    ]
    return [Part(d, _cls(d, init, fwd)) for d, init, fwd in table]


def dense_heads(channels: int, out_channels: int, dims: Dims, *, pre_act: bool) -> list[Part]:
    """Fully convolutional heads: (C, *spatial) -> (out_channels, *spatial); seed first."""
    c, o, conv, bn = channels, out_channels, dims.conv, dims.bn
    pre_init = [f"self.bn = {bn}({c})"] if pre_act else []
    pre_fwd = ["x = F.relu(self.bn(x))"] if pre_act else []
    first = "BN, ReLU, " if pre_act else ""
    table = [
        (f"{first}1x1 convolution to {o} channels (the seed)",
         [*pre_init, f"self.head = {conv}({c}, {o}, kernel_size=1)"], [*pre_fwd, "return self.head(x)"]),
        (f"{first}3x3 convolution to {o} channels",
         [*pre_init, f"self.head = {conv}({c}, {o}, 3, padding=1)"], [*pre_fwd, "return self.head(x)"]),
        (f"{first}3x3 convolution, BN, ReLU, then a 1x1 convolution to {o} channels",
         [*pre_init, f"self.conv = {conv}({c}, {c}, 3, padding=1, bias=False)", f"self.bn_mid = {bn}({c})",
          f"self.head = {conv}({c}, {o}, 1)"],
         [*pre_fwd, "return self.head(torch.relu(self.bn_mid(self.conv(x))))"]),
        (f"{first}global context added to every position (mean over positions, linear), then a 1x1 convolution",
         [*pre_init, f"self.context = nn.Linear({c}, {c})", f"self.head = {conv}({c}, {o}, 1)"],
         [*pre_fwd, f"x = x + self.context(x.mean(dim={dims.axes})){dims.expand}", "return self.head(x)"]),
        (f"{first}channel dropout 0.1, then a 1x1 convolution",
         [*pre_init, f"self.drop = {dims.drop}(0.1)", f"self.head = {conv}({c}, {o}, 1)"],
         [*pre_fwd, "return self.head(self.drop(x))"]),
    ]
    return [Part(d, _cls(d, init, fwd)) for d, init, fwd in table]


# ---------------------------------------------------------------- flat vectors (the rule planner's MLP)


def mlp_layers(f_in: int, width: int) -> list[Part]:
    """One hidden layer (f_in,) -> (width,); the rule planner's (Linear, LayerNorm, GELU, dropout 0.1) first."""
    where = f" ({f_in} -> {width})"
    table = [
        ("linear, LayerNorm, GELU, dropout 0.1" + where + " (the seed)",
         [f"self.fc = nn.Linear({f_in}, {width})", f"self.norm = nn.LayerNorm({width})", "self.drop = nn.Dropout(0.1)"],
         ["return self.drop(F.gelu(self.norm(self.fc(x))))"]),
        ("linear, LayerNorm, SiLU, no dropout" + where,
         [f"self.fc = nn.Linear({f_in}, {width})", f"self.norm = nn.LayerNorm({width})"],
         ["return F.silu(self.norm(self.fc(x)))"]),
        ("linear, LayerNorm, GELU, dropout 0.3" + where,
         [f"self.fc = nn.Linear({f_in}, {width})", f"self.norm = nn.LayerNorm({width})", "self.drop = nn.Dropout(0.3)"],
         ["return self.drop(F.gelu(self.norm(self.fc(x))))"]),
        ("linear, GELU (no normalisation, no dropout)" + where,
         [f"self.fc = nn.Linear({f_in}, {width})"], ["return F.gelu(self.fc(x))"]),
        ("gated linear unit (linear to 2x width, GLU), LayerNorm" + where,
         [f"self.fc = nn.Linear({f_in}, {2 * width})", f"self.norm = nn.LayerNorm({width})"],
         ["return self.norm(F.glu(self.fc(x), dim=-1))"]),
        ("linear, LayerNorm, GELU, then a residual linear-GELU refinement" + where,
         [f"self.fc = nn.Linear({f_in}, {width})", f"self.norm = nn.LayerNorm({width})",
          f"self.refine = nn.Linear({width}, {width})"],
         ["x = F.gelu(self.norm(self.fc(x)))", "return x + F.gelu(self.refine(x))"]),
    ]
    return [Part(d, _cls(d, init, fwd)) for d, init, fwd in table]


def mlp_heads(width: int, output_shape: Sequence[int]) -> list[Part]:
    """(width,) -> output_shape; the rule planner's single linear layer first."""
    n, shape = math.prod(output_shape), _shape_text(output_shape)
    out = f"return x.reshape(x.shape[0], {shape})"
    table = [
        ("linear layer (the seed)", [f"self.fc = nn.Linear({width}, {n})"], ["x = self.fc(x)", out]),
        ("LayerNorm, linear layer", [f"self.norm = nn.LayerNorm({width})", f"self.fc = nn.Linear({width}, {n})"],
         ["x = self.fc(self.norm(x))", out]),
        ("dropout 0.2, linear layer", ["self.drop = nn.Dropout(0.2)", f"self.fc = nn.Linear({width}, {n})"],
         ["x = self.fc(self.drop(x))", out]),
        (f"two-layer MLP (hidden {width}, GELU)",
         [f"self.fc1 = nn.Linear({width}, {width})", f"self.fc2 = nn.Linear({width}, {n})"],
         ["x = self.fc2(F.gelu(self.fc1(x)))", out]),
    ]
    return [Part(d, _cls(d, init, fwd)) for d, init, fwd in table]
