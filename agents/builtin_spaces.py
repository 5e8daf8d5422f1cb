"""Slotted spaces that need no LLM: the paper's fixed baselines and the rule planner's seeds.

- `wrn16_4(task)`: WRN-16-4, NAS-Bench-360's baseline (pre-activation wide
  residual network, 3 groups of 2 blocks, widths 16 / 64 / 128 / 256);
- `resnet18(task)`: ResNet-18, Unseen NAS's baseline (basic blocks, 4 stages
  of 2, widths 64 / 128 / 256 / 512);
- `rule_space(design, task)`: the space around a seed the rule planner
  wrote (`design_source`), so Phase 2 runs without an LLM too.

Each is adapted to the task: (C, L) inputs get 1-D layers and (C, H, W)
inputs 2-D ones; a stride-2 step happens only while the smallest side is at
least 4 (never below 2 positions); outputs with the input's spatial size
(dense) get a fully convolutional head and no downsampling at all, every other
output a pooled linear head reshaped to the output shape. Every slot's
alternative 0 reproduces the seed: the seed configuration builds the same
parameters, in the same construction order, as `seed_source`
(tests/agents/test_builtin_spaces.py checks outputs after transplanting weights).
docs/SPACES.md ("Built-in spaces") lists the slots and alternatives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from agentnas.agents.rule_planner import Design, TaskInfo, design_of, design_recipe, design_source, stage_plan
from agentnas.agents.space_parts import (
    Dims,
    classifier_heads,
    conv_glue,
    dense_heads,
    make_slot,
    mlp_heads,
    mlp_layers,
    plain_stages,
    residual_stages,
    stems,
    strided,
    vector_glue,
)
from agentnas.bus.space import Provenance, Slot, SlottedSpace

__all__ = ["BUILTIN_SPACES", "SEED_RECIPE", "design_of", "resnet18", "rule_space", "wrn16_4"]

# NAS-Bench-360's WRN recipe (SGD, momentum 0.9, lr 0.1, weight decay 5e-4, batch 128), with
# two changes for our small tasks: a cosine schedule instead of x0.2 steps at 60/120/160, and
# 30 epochs instead of 200. The trainer's SGD has no Nesterov switch, so it runs without it.
SEED_RECIPE: dict[str, Any] = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                               "scheduler": "cosine", "epochs": 30, "batch_size": 128}
WRN_WIDTHS = (16, 64, 128, 256)  # stem, then the three groups (16 x widen factor 4, doubling)
WRN_BLOCKS = 2  # (depth 16 - 4) / 6
RESNET18_WIDTHS = (64, 128, 256, 512)
RESNET18_BLOCKS = 2
_IMAGENET_STEM_SIDE = {2: 64, 1: 256}  # ResNet-18 keeps torchvision's 4x stem from this smallest side up


# ---------------------------------------------------------------- task shapes


def _task(task: Any) -> TaskInfo:
    return TaskInfo(input_shape=tuple(task.input_shape), output_shape=tuple(task.output_shape), loss=str(task.loss))


def _dims(task: TaskInfo, who: str) -> Dims:
    if len(task.input_shape) not in (2, 3):
        raise ValueError(f"{who} needs (C, L) sequences or (C, H, W) images, got input shape {tuple(task.input_shape)}")
    return Dims(len(task.input_shape) - 1)


def _is_dense(task: TaskInfo) -> bool:
    return len(task.output_shape) == len(task.input_shape) and task.output_shape[1:] == task.input_shape[1:]


def _can_halve(sides: Sequence[int], dense: bool) -> bool:
    return not dense and min(sides) >= 4  # keep at least 2 positions per axis


def _scaled(width: int, scale: float) -> int:
    if not scale > 0:
        raise ValueError(f"width_scale must be > 0, got {scale}")
    return max(1, round(width * scale))


def _space_task(task: Any) -> str:
    name = getattr(task, "name", "")
    return name or f"input {tuple(task.input_shape)} -> output {tuple(task.output_shape)}, loss {task.loss}"


def _sides_text(sides: Sequence[int]) -> str:
    return "x".join(str(s) for s in sides)


# ---------------------------------------------------------------- slots and scaffold


def _glue(name: str, after: str, channels: int, sides: Sequence[int], dims: Dims) -> Slot:
    shape = (channels, *sides)
    return make_slot(name, kind="glue", description=f"optional step on {after}'s output, {list(shape)}",
                     seed_description="nothing (Identity)", input_shape=shape, output_shape=shape,
                     parts=conv_glue(channels, dims))


def _head(task: TaskInfo, channels: int, sides: Sequence[int], dims: Dims, *, pre_act: bool) -> Slot:
    dense = _is_dense(task)
    parts = (dense_heads(channels, task.output_shape[0], dims, pre_act=pre_act) if dense
             else classifier_heads(channels, task.output_shape, dims, pre_act=pre_act))
    what = "fully convolutional head" if dense else "pooled head, reshaped to the output shape"
    return make_slot("head", kind="module", description=f"{what}: {list((channels, *sides))} -> {list(task.output_shape)}",
                     seed_description=parts[0].description, input_shape=(channels, *sides),
                     output_shape=task.output_shape, parts=parts)


_INIT = {
    # NAS-Bench-360's WRN: conv weights ~ N(0, 2 / fan_out), BN weight 1 and bias 0, linear bias 0.
    "wrn": ["for m in self.modules():",
            "    if isinstance(m, (nn.Conv1d, nn.Conv2d)):",
            "        nn.init.kaiming_normal_(m.weight, mode=\"fan_out\", nonlinearity=\"relu\")",
            "    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):",
            "        nn.init.ones_(m.weight)",
            "        nn.init.zeros_(m.bias)",
            "    elif isinstance(m, nn.Linear):",
            "        nn.init.zeros_(m.bias)"],
    # torchvision's ResNet: conv weights ~ N(0, 2 / fan_out), BN weight 1 and bias 0, linear left as built.
    "resnet": ["for m in self.modules():",
               "    if isinstance(m, (nn.Conv1d, nn.Conv2d)):",
               "        nn.init.kaiming_normal_(m.weight, mode=\"fan_out\", nonlinearity=\"relu\")",
               "    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):",
               "        nn.init.ones_(m.weight)",
               "        nn.init.zeros_(m.bias)"],
}


def _scaffold(doc: str, slots: Sequence[Slot], *, init: str = "", flatten: bool = False) -> str:
    """`class Architecture`: every slot built in order, then called in order on x."""
    lines = ["class Architecture(nn.Module):", f'    """{doc}"""', "", "    def __init__(self):", "        super().__init__()"]
    lines += [f"        self.{slot.name} = SLOT_{slot.name}()" for slot in slots]
    lines += [f"        {line}" for line in _INIT.get(init, [])]
    lines += ["", "    def forward(self, x):"]
    lines += ["        x = torch.flatten(x, 1)"] if flatten else []
    lines += [f"        x = self.{slot.name}(x)" for slot in slots[:-1]] + [f"        return self.{slots[-1].name}(x)"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- parameter counts (no torch here)


def _conv_params(c_in: int, c_out: int, k: int, d: int, bias: bool = False) -> int:
    return c_in * c_out * k**d + (c_out if bias else 0)


def _head_params(task: TaskInfo, channels: int, d: int, *, pre_act: bool) -> int:
    norm = 2 * channels if pre_act else 0
    if _is_dense(task):
        return norm + _conv_params(channels, task.output_shape[0], 1, d, bias=True)
    n = math.prod(task.output_shape)
    return norm + channels * n + n


def _block_params(kind: str, c_in: int, c_out: int, stride: int, d: int) -> int:
    project = stride != 1 or c_in != c_out
    convs = _conv_params(c_in, c_out, 3, d) + _conv_params(c_out, c_out, 3, d)
    if kind == "pre":
        return 2 * c_in + 2 * c_out + convs + (_conv_params(c_in, c_out, 1, d) if project else 0)
    return 4 * c_out + convs + (_conv_params(c_in, c_out, 1, d) + 2 * c_out if project else 0)


# ---------------------------------------------------------------- WRN-16-4


def wrn16_4(task: Any, *, width_scale: float = 1.0) -> SlottedSpace:
    """WRN-16-4 as a slotted space: stem, 3 groups, head (module slots) with a glue slot after each of
    the first four. `width_scale` multiplies every width (tests use small ones; 1.0 is the real network)."""
    t = _task(task)
    dims = _dims(t, "wrn16_4")
    dense = _is_dense(t)
    widths = [_scaled(w, width_scale) for w in WRN_WIDTHS]
    sides = tuple(t.input_shape[1:])
    slots = [make_slot("stem", kind="module", description=f"first convolution: {t.input_shape[0]} -> {widths[0]} channels",
                       seed_description="3x3 convolution, no bias", input_shape=t.input_shape,
                       output_shape=(widths[0], *sides), parts=stems(t.input_shape[0], widths[0], dims, "wrn")),
             _glue("stem_glue", "the stem", widths[0], sides, dims)]
    plan = []
    for g, (c_in, c_out, wanted) in enumerate(zip(widths, widths[1:], (1, 2, 2)), start=1):
        stride = 2 if wanted == 2 and _can_halve(sides, dense) else 1
        after = tuple(strided(s) for s in sides) if stride == 2 else sides
        parts = residual_stages(c_in, c_out, stride, WRN_BLOCKS, "pre", dims)
        slots.append(make_slot(f"group{g}", kind="module", seed_description=parts[0].description,
                               description=f"group {g}: {c_in} -> {c_out} channels, sides {_sides_text(sides)} -> {_sides_text(after)}",
                               input_shape=(c_in, *sides), output_shape=(c_out, *after), parts=parts))
        slots.append(_glue(f"group{g}_glue", f"group {g}", c_out, after, dims))
        plan.append((c_in, c_out, stride))
        sides = after
    slots.append(_head(t, widths[-1], sides, dims, pre_act=True))
    params = (_conv_params(t.input_shape[0], widths[0], 3, dims.d)
              + sum(_block_params("pre", c_in if b == 0 else c_out, c_out, stride if b == 0 else 1, dims.d)
                    for c_in, c_out, stride in plan for b in range(WRN_BLOCKS))
              + _head_params(t, widths[-1], dims.d, pre_act=True))
    return SlottedSpace(
        task=_space_task(task),
        scaffold_source=_scaffold("WRN-16-4 (NAS-Bench-360's baseline) with its parts as slots.", slots, init="wrn"),
        slots=tuple(slots), seed_recipe=dict(SEED_RECIPE),
        seed_source=_wrn_seed_source(t, dims, widths, [s for _, _, s in plan], dense),
        seed_params=params,
        provenance=Provenance(created_by="builtin:wrn16_4",
                              note=f"WRN-16-4 adapted to input {t.input_shape} -> output {t.output_shape}"
                                   + ("" if width_scale == 1.0 else f"; widths x{width_scale}")),
    )


def _wrn_seed_source(t: TaskInfo, dims: Dims, widths: list[int], strides: list[int], dense: bool) -> str:
    """The seed as one plain model file, written the way NAS-Bench-360 writes its WRN."""
    conv, bn, out = dims.conv, dims.bn, t.output_shape
    if dense:
        head_init = f"        self.head = {conv}({widths[-1]}, {out[0]}, kernel_size=1)\n"
        head_forward = "        return self.head(out)\n"
    else:
        head_init = f"        self.fc = nn.Linear({widths[-1]}, {math.prod(out)})\n"
        head_forward = (f"        out = F.adaptive_avg_pool{dims.d}d(out, 1).flatten(1)\n"
                        f"        out = self.fc(out)\n"
                        f"        return out.reshape(out.shape[0], {', '.join(map(str, out))})\n")
    return (
        f'"""WRN-16-4 (pre-activation wide residual network, depth 16, widen factor 4), NAS-Bench-360\'s baseline;\n'
        f'input {tuple(t.input_shape)} -> output {tuple(out)}."""\n\n'
        "import torch\nfrom torch import nn\nimport torch.nn.functional as F\n\n\n"
        "class BasicBlock(nn.Module):\n"
        "    def __init__(self, in_planes, out_planes, stride):\n"
        "        super().__init__()\n"
        f"        self.bn1 = {bn}(in_planes)\n"
        "        self.relu1 = nn.ReLU()\n"
        f"        self.conv1 = {conv}(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)\n"
        f"        self.bn2 = {bn}(out_planes)\n"
        "        self.relu2 = nn.ReLU()\n"
        f"        self.conv2 = {conv}(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)\n"
        "        self.equal_in_out = in_planes == out_planes and stride == 1\n"
        "        self.conv_shortcut = None\n"
        "        if not self.equal_in_out:\n"
        f"            self.conv_shortcut = {conv}(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)\n\n"
        "    def forward(self, x):\n"
        "        if self.equal_in_out:\n"
        "            out = self.relu1(self.bn1(x))\n"
        "        else:\n"
        "            x = self.relu1(self.bn1(x))\n"
        "            out = x\n"
        "        out = self.conv2(self.relu2(self.bn2(self.conv1(out))))\n"
        "        return (x if self.equal_in_out else self.conv_shortcut(x)) + out\n\n\n"
        "class NetworkBlock(nn.Module):\n"
        "    def __init__(self, n_blocks, in_planes, out_planes, stride):\n"
        "        super().__init__()\n"
        "        self.layer = nn.Sequential(*[BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)\n"
        "                                     for i in range(n_blocks)])\n\n"
        "    def forward(self, x):\n"
        "        return self.layer(x)\n\n\n"
        "class Architecture(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        f"        widths = {widths}\n"
        f"        strides = {strides}  # stride 2 only while the smallest side is >= 4 (never for dense outputs)\n"
        f"        self.conv1 = {conv}({t.input_shape[0]}, widths[0], kernel_size=3, stride=1, padding=1, bias=False)\n"
        f"        self.block1 = NetworkBlock({WRN_BLOCKS}, widths[0], widths[1], strides[0])\n"
        f"        self.block2 = NetworkBlock({WRN_BLOCKS}, widths[1], widths[2], strides[1])\n"
        f"        self.block3 = NetworkBlock({WRN_BLOCKS}, widths[2], widths[3], strides[2])\n"
        f"        self.bn1 = {bn}(widths[3])\n"
        "        self.relu = nn.ReLU()\n"
        f"{head_init}"
        + "".join(f"        {line}\n" for line in _INIT["wrn"])
        + "\n    def forward(self, x):\n"
        "        out = self.conv1(x)\n"
        "        out = self.block3(self.block2(self.block1(out)))\n"
        "        out = self.relu(self.bn1(out))\n"
        f"{head_forward}"
    )


# ---------------------------------------------------------------- ResNet-18


def resnet18(task: Any, *, width_scale: float = 1.0) -> SlottedSpace:
    """ResNet-18 as a slotted space: stem, 4 stages, head (module slots) with a glue slot after each of
    the first five. The stem is torchvision's (7x7 stride 2, max pool) when the smallest input side
    is at least 64 (256 for sequences) and the output is not dense, else the small-image 3x3 stem."""
    t = _task(task)
    dims = _dims(t, "resnet18")
    dense = _is_dense(t)
    widths = [_scaled(w, width_scale) for w in RESNET18_WIDTHS]
    sides = tuple(t.input_shape[1:])
    imagenet = not dense and min(sides) >= _IMAGENET_STEM_SIDE[dims.d]
    stem_parts = stems(t.input_shape[0], widths[0], dims, "imagenet" if imagenet else "cifar")
    after = tuple(strided(strided(s)) for s in sides) if imagenet else sides
    slots = [make_slot("stem", kind="module", seed_description=stem_parts[0].description,
                       description=f"stem: {t.input_shape[0]} -> {widths[0]} channels, sides {_sides_text(sides)} -> {_sides_text(after)}",
                       input_shape=t.input_shape, output_shape=(widths[0], *after), parts=stem_parts)]
    sides = after
    slots.append(_glue("stem_glue", "the stem", widths[0], sides, dims))
    plan = []
    for i, (c_out, wanted) in enumerate(zip(widths, (1, 2, 2, 2)), start=1):
        c_in = widths[max(0, i - 2)]
        stride = 2 if wanted == 2 and _can_halve(sides, dense) else 1
        after = tuple(strided(s) for s in sides) if stride == 2 else sides
        parts = residual_stages(c_in, c_out, stride, RESNET18_BLOCKS, "post", dims)
        slots.append(make_slot(f"layer{i}", kind="module", seed_description=parts[0].description,
                               description=f"stage {i}: {c_in} -> {c_out} channels, sides {_sides_text(sides)} -> {_sides_text(after)}",
                               input_shape=(c_in, *sides), output_shape=(c_out, *after), parts=parts))
        slots.append(_glue(f"layer{i}_glue", f"stage {i}", c_out, after, dims))
        plan.append((c_in, c_out, stride))
        sides = after
    slots.append(_head(t, widths[-1], sides, dims, pre_act=False))
    stem_params = _conv_params(t.input_shape[0], widths[0], 7 if imagenet else 3, dims.d) + 2 * widths[0]
    params = (stem_params
              + sum(_block_params("post", c_in if b == 0 else c_out, c_out, stride if b == 0 else 1, dims.d)
                    for c_in, c_out, stride in plan for b in range(RESNET18_BLOCKS))
              + _head_params(t, widths[-1], dims.d, pre_act=False))
    return SlottedSpace(
        task=_space_task(task),
        scaffold_source=_scaffold("ResNet-18 (Unseen NAS's baseline) with its parts as slots.", slots, init="resnet"),
        slots=tuple(slots), seed_recipe=dict(SEED_RECIPE),
        seed_source=_resnet18_seed_source(t, dims, widths, [s for _, _, s in plan], imagenet, dense),
        seed_params=params,
        provenance=Provenance(created_by="builtin:resnet18",
                              note=f"ResNet-18 adapted to input {t.input_shape} -> output {t.output_shape}"
                                   + ("" if width_scale == 1.0 else f"; widths x{width_scale}")),
    )


def _resnet18_seed_source(t: TaskInfo, dims: Dims, widths: list[int], strides: list[int], imagenet: bool,
                          dense: bool) -> str:
    """The seed as one plain model file, written the way torchvision writes ResNet-18."""
    conv, bn, out = dims.conv, dims.bn, t.output_shape
    if imagenet:
        stem_init = (f"        self.conv1 = {conv}({t.input_shape[0]}, {widths[0]}, kernel_size=7, stride=2, padding=3, bias=False)\n"
                     f"        self.bn1 = {bn}({widths[0]})\n        self.relu = nn.ReLU()\n"
                     f"        self.maxpool = {dims.maxpool}(kernel_size=3, stride=2, padding=1)\n")
        stem_forward = "        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))\n"
    else:  # small inputs: a 3x3 stride-1 first convolution and no max pool
        stem_init = (f"        self.conv1 = {conv}({t.input_shape[0]}, {widths[0]}, kernel_size=3, stride=1, padding=1, bias=False)\n"
                     f"        self.bn1 = {bn}({widths[0]})\n        self.relu = nn.ReLU()\n")
        stem_forward = "        x = self.relu(self.bn1(self.conv1(x)))\n"
    if dense:
        head_init = f"        self.head = {conv}({widths[-1]}, {out[0]}, kernel_size=1)\n"
        head_forward = "        return self.head(x)\n"
    else:
        head_init = f"        self.avgpool = {dims.gap}(1)\n        self.fc = nn.Linear({widths[-1]}, {math.prod(out)})\n"
        head_forward = ("        x = self.fc(torch.flatten(self.avgpool(x), 1))\n"
                        f"        return x.reshape(x.shape[0], {', '.join(map(str, out))})\n")
    layers = "".join(f"        self.layer{i + 1} = self._make_layer({w}, {RESNET18_BLOCKS}, stride={s})\n"
                     for i, (w, s) in enumerate(zip(widths, strides)))
    return (
        f'"""ResNet-18 (basic residual blocks, 4 stages of 2), Unseen NAS\'s baseline;\n'
        f'input {tuple(t.input_shape)} -> output {tuple(out)}."""\n\n'
        "import torch\nfrom torch import nn\n\n\n"
        "class BasicBlock(nn.Module):\n"
        "    def __init__(self, inplanes, planes, stride=1):\n"
        "        super().__init__()\n"
        f"        self.conv1 = {conv}(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)\n"
        f"        self.bn1 = {bn}(planes)\n"
        "        self.relu = nn.ReLU()\n"
        f"        self.conv2 = {conv}(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)\n"
        f"        self.bn2 = {bn}(planes)\n"
        "        self.downsample = None\n"
        "        if stride != 1 or inplanes != planes:\n"
        f"            self.downsample = nn.Sequential({conv}(inplanes, planes, kernel_size=1, stride=stride, bias=False), {bn}(planes))\n\n"
        "    def forward(self, x):\n"
        "        identity = x if self.downsample is None else self.downsample(x)\n"
        "        out = self.relu(self.bn1(self.conv1(x)))\n"
        "        out = self.bn2(self.conv2(out))\n"
        "        return self.relu(out + identity)\n\n\n"
        "class Architecture(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        f"{stem_init}"
        f"        self.inplanes = {widths[0]}\n"
        "        # stride 2 only while the smallest side is >= 4 (never for dense outputs)\n"
        f"{layers}"
        f"{head_init}"
        + "".join(f"        {line}\n" for line in _INIT["resnet"])
        + "\n    def _make_layer(self, planes, blocks, stride):\n"
        "        layers = [BasicBlock(self.inplanes, planes, stride)]\n"
        "        self.inplanes = planes\n"
        "        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]\n"
        "        return nn.Sequential(*layers)\n\n"
        "    def forward(self, x):\n"
        f"{stem_forward}"
        "        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))\n"
        f"{head_forward}"
    )


# ---------------------------------------------------------------- the rule planner's seeds


def rule_space(design: Design, task: Any) -> SlottedSpace:
    """The slotted space around `design_source(task, design)`: its layers/stages as module slots
    (alternative 0 is the stage exactly as the seed writes it), a glue slot after each, the head."""
    t = _task(task)
    seed = design_source(t, design)  # ValueError when the design does not fit the task
    flatten = design.family == "mlp"
    slots = _rule_mlp_slots(t, design) if flatten else _rule_conv_slots(t, design)
    doc = f"The rule planner's {design.family} seed (width {design.width}, depth {design.depth}) with its parts as slots."
    return SlottedSpace(
        task=_space_task(task), scaffold_source=_scaffold(doc, slots, flatten=flatten), slots=tuple(slots),
        seed_recipe=design_recipe(t, design), seed_source=seed, seed_params=_rule_params(t, design),
        provenance=Provenance(created_by="builtin:rule_planner",
                              note=f"family {design.family}, width {design.width}, depth {design.depth}, recipe {design.recipe}"),
    )


def _rule_mlp_slots(t: TaskInfo, design: Design) -> list[Slot]:
    width = design.width * 8
    features = math.prod(t.input_shape)
    slots = []
    for i in range(1, design.depth + 1):
        parts = mlp_layers(features, width)
        slots.append(make_slot(f"layer{i}", kind="module", description=f"hidden layer {i}: {features} -> {width} features",
                               seed_description=parts[0].description, input_shape=(features,), output_shape=(width,),
                               parts=parts))
        slots.append(make_slot(f"layer{i}_glue", kind="glue", description=f"optional step on hidden layer {i}'s output",
                               seed_description="nothing (Identity)", input_shape=(width,), output_shape=(width,),
                               parts=vector_glue(width)))
        features = width
    parts = mlp_heads(width, t.output_shape)
    slots.append(make_slot("head", kind="module", description=f"output layer: {width} -> {list(t.output_shape)}",
                           seed_description=parts[0].description, input_shape=(width,), output_shape=t.output_shape,
                           parts=parts))
    return slots


def _rule_conv_slots(t: TaskInfo, design: Design) -> list[Slot]:
    dims = _dims(t, f"rule planner family {design.family!r}")
    widths, downs, _ = stage_plan(t, design)
    sides = tuple(t.input_shape[1:])
    channels = t.input_shape[0]
    slots: list[Slot] = []
    if design.family == "resnet":
        parts = stems(channels, widths[0], dims, "cifar")
        slots.append(make_slot("stem", kind="module", description=f"stem: {channels} -> {widths[0]} channels",
                               seed_description=parts[0].description, input_shape=t.input_shape,
                               output_shape=(widths[0], *sides), parts=parts))
        slots.append(_glue("stem_glue", "the stem", widths[0], sides, dims))
        channels = widths[0]
    name = "block" if design.family == "resnet" else "stage"
    for i, (width, down) in enumerate(zip(widths, downs), start=1):
        if design.family == "resnet":
            after = tuple(strided(s) for s in sides) if down else sides
            parts = residual_stages(channels, width, 2 if down else 1, 1, "post", dims)
        else:
            after = tuple(s // 2 for s in sides) if down else sides
            parts = plain_stages(channels, width, down, dims)
        slots.append(make_slot(f"{name}{i}", kind="module", seed_description=parts[0].description,
                               description=f"{name} {i}: {channels} -> {width} channels, sides {_sides_text(sides)} -> {_sides_text(after)}",
                               input_shape=(channels, *sides), output_shape=(width, *after), parts=parts))
        slots.append(_glue(f"{name}{i}_glue", f"{name} {i}", width, after, dims))
        channels, sides = width, after
    slots.append(_head(t, channels, sides, dims, pre_act=False))
    return slots


def _rule_params(t: TaskInfo, design: Design) -> int:
    if design.family == "mlp":
        width, features, total = design.width * 8, math.prod(t.input_shape), 0
        for _ in range(design.depth):
            total += features * width + width + 2 * width
            features = width
        return total + width * math.prod(t.output_shape) + math.prod(t.output_shape)
    d = len(t.input_shape) - 1
    widths, downs, _ = stage_plan(t, design)
    channels, total = t.input_shape[0], 0
    if design.family == "resnet":
        total += _conv_params(channels, widths[0], 3, d) + 2 * widths[0]
        channels = widths[0]
    for width, down in zip(widths, downs):
        if design.family == "resnet":
            total += _block_params("post", channels, width, 2 if down else 1, d)
        else:
            total += _conv_params(channels, width, 3, d) + 2 * width
        channels = width
    return total + _head_params(t, channels, d, pre_act=False)


BUILTIN_SPACES: dict[str, Callable[..., SlottedSpace]] = {"wrn16_4": wrn16_4, "resnet18": resnet18}
