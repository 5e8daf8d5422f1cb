"""A Planner without an LLM: the no-LLM baseline, and proof that a role is swappable.

It picks designs from a small built-in grid (families x widths x depths x
recipes) and writes their code itself, so proposals carry `source` and skip
the Code Executor. The first batch spreads over the grid; later batches spend
half their slots on one-step variations of the best design so far and half on
unexplored grid points.

`decide(results)` is a pure function of the seed and the results: the planner
keeps no state of its own. To know which design an earlier arch id was, it
replays its own earlier decisions from the results (ids are handed out in
order), which is what lets a restarted process carry on exactly.
Results are (arch_id, val_metric or None, status); lower metrics are better.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from agentnas.agents.protocol import Experiment, Stop, format_arch_id
from agentnas.bus.messages import Proposal

__all__ = ["RECIPES", "Design", "RulePlanner", "TaskInfo", "design_of", "design_recipe", "design_source",
           "families_for", "stage_plan"]

Result = tuple[str, float | None, str]

WIDTHS = (16, 32, 64)
DEPTHS = (2, 3, 4)
RECIPES: tuple[dict[str, Any], ...] = (
    {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "scheduler": "cosine"},
    {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05, "scheduler": "warmup_cosine", "warmup_epochs": 2},
    {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "scheduler": "cosine"},
)
_COMMON_RECIPE = {"epochs": 30, "batch_size": 128}
_MLP_MAX_INPUTS = 16384  # a flat MLP over more inputs than this is all first-layer weights
TOP_K = 8


class TaskInfo(msgspec.Struct, frozen=True, kw_only=True):
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    loss: str


class Design(msgspec.Struct, frozen=True, kw_only=True):
    family: str  # mlp | cnn | resnet
    width: int
    depth: int
    recipe: int  # index into RECIPES


def families_for(input_shape: Sequence[int]) -> tuple[str, ...]:
    """Convolutional families for (C, L) and (C, H, W) inputs; an MLP where it stays small."""
    convs = ("cnn", "resnet") if len(input_shape) in (2, 3) else ()
    small = math.prod(input_shape) <= _MLP_MAX_INPUTS or not convs
    return convs + (("mlp",) if small else ())


# ---------------------------------------------------------------- code generation


def _tuple_text(shape: Sequence[int]) -> str:
    return ", ".join(str(d) for d in shape)


def _stage_widths(design: Design) -> list[int]:
    return [design.width * 2 ** min(i, 2) for i in range(design.depth)]  # doubling, capped at 4x


def _plan_stages(task: TaskInfo, design: Design, dense: bool) -> tuple[list[int], list[bool]]:
    """Stage widths (doubling, capped at 4x) and where to halve the spatial size."""
    widths = _stage_widths(design)
    size = min(task.input_shape[1:])
    downs = []
    for _ in widths:
        down = not dense and size >= 4  # keep at least 2 positions per axis
        downs.append(down)
        size = size // 2 if down else size
    return widths, downs


def _is_dense(task: TaskInfo) -> bool:
    """Dense outputs with the input's spatial size get a fully convolutional head."""
    return len(task.output_shape) == len(task.input_shape) and tuple(task.output_shape[1:]) == tuple(task.input_shape[1:])


def stage_plan(task: TaskInfo, design: Design) -> tuple[list[int], list[bool], bool]:
    """What `design_source` builds for a cnn/resnet design: stage widths, which stages halve
    the spatial size, and whether the head is fully convolutional (dense outputs)."""
    dense = _is_dense(task)
    widths, downs = _plan_stages(task, design, dense)
    return widths, downs, dense


_MARKER = "# agentnas-design: "
_MARKER_LINE = re.compile(r"^# agentnas-design: (\{.*\})$", re.MULTILINE)


def _marker(design: Design) -> str:
    """One comment line naming the design, so `design_of` can recognise a rule-planner seed."""
    fields = {"family": design.family, "width": design.width, "depth": design.depth, "recipe": design.recipe}
    return _MARKER + json.dumps(fields) + "\n"


def design_of(source: str, task: TaskInfo | None = None) -> Design | None:
    """The Design a rule-planner seed was written from, read from its marker line; None if it has none.

    With `task`, the answer is given only when `design_source(task, design)`
    reproduces `source` exactly (so an edited seed is not mistaken for the
    rule planner's own).
    """
    match = _MARKER_LINE.search(source)
    if match is None:
        return None
    try:
        design = msgspec.json.decode(match.group(1), type=Design)
    except msgspec.DecodeError:
        return None
    if task is not None:
        task = TaskInfo(input_shape=tuple(task.input_shape), output_shape=tuple(task.output_shape), loss=str(task.loss))
        try:
            if design_source(task, design) != source:
                return None
        except (ValueError, IndexError):
            return None
    return design


def design_recipe(task: TaskInfo, design: Design, epochs: int = 0) -> dict[str, Any]:
    """The training recipe the rule planner gives `design` on `task` (`epochs` 0: the default)."""
    recipe = {**RECIPES[design.recipe], **_COMMON_RECIPE}
    if epochs:
        recipe["epochs"] = epochs
    if task.loss == "cross_entropy":
        recipe["label_smoothing"] = 0.1
    return recipe


def design_source(task: TaskInfo, design: Design) -> str:
    """A complete model file for `design` that passes the trainer's static gate."""
    if design.family == "mlp":
        return _mlp_source(task, design)
    dim = len(task.input_shape) - 1
    if dim not in (1, 2) or design.family not in ("cnn", "resnet"):
        raise ValueError(f"design {design.family!r} does not fit input shape {task.input_shape}")
    widths, downs, dense = stage_plan(task, design)
    names = {"conv": f"nn.Conv{dim}d", "bn": f"nn.BatchNorm{dim}d", "pool": f"nn.MaxPool{dim}d",
             "gap": f"nn.AdaptiveAvgPool{dim}d"}
    out = task.output_shape
    if dense:
        head_init = f"        self.head = {names['conv']}(channels, {out[0]}, kernel_size=1)\n"
        head_forward = "        return self.head(x)\n"
    else:
        head_init = (
            f"        self.pool = {names['gap']}(1)\n"
            f"        self.head = nn.Linear(channels, {math.prod(out)})\n"
        )
        head_forward = (
            "        x = self.head(torch.flatten(self.pool(x), 1))\n"
            f"        return x.reshape(x.shape[0], {_tuple_text(out)})\n"
        )
    header = (
        f'"""Rule-planner design: {design.family}, {design.depth} stages from width {design.width}; '
        f'input {tuple(task.input_shape)} -> output {tuple(out)}."""\n\n'
        f"{_marker(design)}"
        "import torch\nimport torch.nn as nn\n\n\n"
    )
    if design.family == "cnn":
        body = (
            "class Architecture(nn.Module):\n"
            "    def __init__(self):\n"
            "        super().__init__()\n"
            f"        widths = {widths}\n"
            f"        downsample = {downs}\n"
            "        layers = []\n"
            f"        channels = {task.input_shape[0]}\n"
            "        for width, down in zip(widths, downsample):\n"
            f"            layers.append({names['conv']}(channels, width, kernel_size=3, padding=1, bias=False))\n"
            f"            layers.append({names['bn']}(width))\n"
            "            layers.append(nn.ReLU())\n"
            "            if down:\n"
            f"                layers.append({names['pool']}(2))\n"
            "            channels = width\n"
            "        self.features = nn.Sequential(*layers)\n"
            f"{head_init}\n"
            "    def forward(self, x):\n"
            "        x = self.features(x)\n"
            f"{head_forward}"
        )
        return header + body
    stem = widths[0]
    body = (
        "class Block(nn.Module):\n"
        "    def __init__(self, channels_in, channels_out, stride):\n"
        "        super().__init__()\n"
        f"        self.conv1 = {names['conv']}(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)\n"
        f"        self.bn1 = {names['bn']}(channels_out)\n"
        f"        self.conv2 = {names['conv']}(channels_out, channels_out, 3, padding=1, bias=False)\n"
        f"        self.bn2 = {names['bn']}(channels_out)\n"
        "        self.shortcut = nn.Identity()\n"
        "        if stride != 1 or channels_in != channels_out:\n"
        "            self.shortcut = nn.Sequential(\n"
        f"                {names['conv']}(channels_in, channels_out, 1, stride=stride, bias=False),\n"
        f"                {names['bn']}(channels_out),\n"
        "            )\n\n"
        "    def forward(self, x):\n"
        "        out = torch.relu(self.bn1(self.conv1(x)))\n"
        "        out = self.bn2(self.conv2(out))\n"
        "        return torch.relu(out + self.shortcut(x))\n\n\n"
        "class Architecture(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.stem = nn.Sequential(\n"
        f"            {names['conv']}({task.input_shape[0]}, {stem}, 3, padding=1, bias=False),\n"
        f"            {names['bn']}({stem}),\n"
        "            nn.ReLU(),\n"
        "        )\n"
        f"        widths = {widths}\n"
        f"        strides = {[2 if d else 1 for d in downs]}\n"
        "        blocks = []\n"
        f"        channels = {stem}\n"
        "        for width, stride in zip(widths, strides):\n"
        "            blocks.append(Block(channels, width, stride))\n"
        "            channels = width\n"
        "        self.blocks = nn.Sequential(*blocks)\n"
        f"{head_init}\n"
        "    def forward(self, x):\n"
        "        x = self.blocks(self.stem(x))\n"
        f"{head_forward}"
    )
    return header + body


def _mlp_source(task: TaskInfo, design: Design) -> str:
    hidden = [design.width * 8] * design.depth
    out = task.output_shape
    return (
        f'"""Rule-planner design: mlp, {design.depth} hidden layers of {hidden[0]}; '
        f'input {tuple(task.input_shape)} -> output {tuple(out)}."""\n\n'
        f"{_marker(design)}"
        "import torch\nimport torch.nn as nn\n\n\n"
        "class Architecture(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        f"        widths = {hidden}\n"
        "        layers = []\n"
        f"        features = {math.prod(task.input_shape)}\n"
        "        for width in widths:\n"
        "            layers.append(nn.Linear(features, width))\n"
        "            layers.append(nn.LayerNorm(width))\n"
        "            layers.append(nn.GELU())\n"
        "            layers.append(nn.Dropout(0.1))\n"
        "            features = width\n"
        f"        layers.append(nn.Linear(features, {math.prod(out)}))\n"
        "        self.net = nn.Sequential(*layers)\n\n"
        "    def forward(self, x):\n"
        "        x = self.net(torch.flatten(x, 1))\n"
        f"        return x.reshape(x.shape[0], {_tuple_text(out)})\n"
    )


def _describe(task: TaskInfo, design: Design) -> str:
    recipe = RECIPES[design.recipe]
    kind = {"mlp": "MLP", "cnn": "plain CNN (conv-BN-ReLU stages, max-pool downsampling)",
            "resnet": "ResNet-style CNN (basic residual blocks, strided downsampling)"}[design.family]
    size = (f"{design.depth} hidden layers of {design.width * 8}" if design.family == "mlp"
            else f"{design.depth} stages of widths {_stage_widths(design)}")
    return (f"{kind}, {size}; trained with {recipe['optimizer']} at lr {recipe['lr']:g} "
            f"and a {recipe['scheduler']} schedule")


# ---------------------------------------------------------------- the planner


def _number(arch_id: str) -> int:
    tail = arch_id.rsplit("_", 1)[-1]
    return int(tail) if arch_id.startswith("arch_") and tail.isdigit() else -1


class RulePlanner:
    """Deterministic grid-and-refine planner; `decide(results)` -> Experiment | Stop."""

    def __init__(self, task_info: Any, n_parallel: int, budget: int, seed: int = 42,
                 *, stall_batches: int = 3, top_k: int = TOP_K, epochs: int = 0) -> None:
        if n_parallel < 1 or budget < 1:
            raise ValueError(f"n_parallel and budget must be >= 1, got {n_parallel} and {budget}")
        self.task = TaskInfo(input_shape=tuple(task_info.input_shape),
                             output_shape=tuple(task_info.output_shape), loss=str(task_info.loss))
        self.n_parallel = n_parallel
        self.epochs = epochs  # of the recipes it writes; 0 = the default (30)
        self.budget = budget
        self.seed = seed
        self.stall_batches = stall_batches
        self.top_k = min(top_k, TOP_K)
        self._grid = self._make_grid()

    def _make_grid(self) -> list[Design]:
        # Round-robin over families, each shuffled, so every batch mixes families.
        rng = random.Random(f"agentnas-rule-grid:{self.seed}")
        per_family = []
        for family in families_for(self.task.input_shape):
            designs = [Design(family=family, width=w, depth=d, recipe=r)
                       for w in WIDTHS for d in DEPTHS for r in range(len(RECIPES))]
            rng.shuffle(designs)
            per_family.append(designs)
        return [d for group in zip(*per_family, strict=True) for d in group]

    def decide(self, results: Iterable[Result]) -> Experiment | Stop:
        rows = sorted((r for r in results if _number(r[0]) >= 0), key=lambda r: _number(r[0]))
        designs, batches = self._replay(rows)
        ok = [(metric, _number(arch_id), arch_id) for arch_id, metric, status in rows
              if status == "ok" and metric is not None]
        if len(rows) >= self.budget:
            return self._stop(ok, f"budget of {self.budget} evaluations used")
        stalled = self._stalled(rows, batches)
        if stalled >= self.stall_batches:
            return self._stop(ok, f"{stalled} batches without improvement")
        chosen, best = self._choose(rows, designs, len(batches))
        if not chosen:
            return self._stop(ok, "every design of the built-in grid has been tried")
        proposals = [
            Proposal(arch_id=arch_id, description=_describe(self.task, design), reasoning=why,
                     recipe=self._recipe(design), source=design_source(self.task, design))
            for arch_id, design, why in chosen
        ]
        refined = sum(1 for _, _, why in chosen if why.startswith("one-step"))
        summary = (f"Rule-based batch {len(batches) + 1}: "
                   + (f"best so far {best[2]} at {best[0]:.4g}; " if best else "no successful result yet; ")
                   + f"{refined} variations of the best, {len(chosen) - refined} new grid designs.")
        return Experiment(proposals=proposals, summary=summary)

    def _replay(self, rows: list[Result]) -> tuple[dict[str, Design], list[list[str]]]:
        """Redo earlier choices to learn which design each id was, and the batch boundaries."""
        designs: dict[str, Design] = {}
        batches: list[list[str]] = []
        pos = 0
        while pos < len(rows):
            chosen, _ = self._choose(rows[:pos], designs, len(batches))
            ids = [arch_id for arch_id, _, _ in chosen]
            if not ids or ids != [r[0] for r in rows[pos:pos + len(ids)]]:
                break  # these results are not (all) ours; the rest stays unknown
            designs.update({arch_id: design for arch_id, design, _ in chosen})
            batches.append(ids)
            pos += len(ids)
        return designs, batches

    def _choose(self, rows: list[Result], designs: dict[str, Design], batch_index: int
                ) -> tuple[list[tuple[str, Design, str]], tuple[float, int, str] | None]:
        """The next batch as (arch_id, design, why), and the best (metric, number, id) so far."""
        size = min(self.n_parallel, self.budget - len(rows))
        used = set(designs.values())
        scored = [(metric, _number(a), a) for a, metric, status in rows
                  if status == "ok" and metric is not None and a in designs]
        best = min(scored) if scored else None
        picks: list[tuple[Design, str]] = []
        if best is not None:
            n_refine = size // 2 if size > 1 else batch_index % 2
            rng = random.Random(f"agentnas-rule-refine:{self.seed}:{batch_index}")
            neighbours = [d for d in self._neighbours(designs[best[2]]) if d not in used]
            rng.shuffle(neighbours)
            picks += [(d, f"one-step variation of the best so far, {best[2]} ({best[0]:.4g})")
                      for d in neighbours[:n_refine]]
        taken = used | {d for d, _ in picks}
        fresh = [d for d in self._grid if d not in taken]
        picks += [(d, "an unexplored point of the built-in grid") for d in fresh[: size - len(picks)]]
        first = max((_number(r[0]) for r in rows), default=0) + 1
        return [(format_arch_id(first + i), d, why) for i, (d, why) in enumerate(picks)], best

    def _neighbours(self, design: Design) -> list[Design]:
        """Designs one step away on one axis: adjacent width or depth, or another recipe."""
        out = []
        for axis, values in (("width", WIDTHS), ("depth", DEPTHS)):
            index = values.index(getattr(design, axis))
            for j in (index - 1, index + 1):
                if 0 <= j < len(values):
                    out.append(msgspec.structs.replace(design, **{axis: values[j]}))
        out += [msgspec.structs.replace(design, recipe=r) for r in range(len(RECIPES)) if r != design.recipe]
        return out

    def _recipe(self, design: Design) -> dict[str, Any]:
        return design_recipe(self.task, design, self.epochs)

    @staticmethod
    def _stalled(rows: list[Result], batches: list[list[str]]) -> int:
        """Trailing complete batches without a new best; all-failure batches do not count."""
        metric = {a: m for a, m, status in rows if status == "ok" and m is not None}
        best = math.inf
        stalled = 0
        for ids in batches:
            values = [metric[a] for a in ids if a in metric]
            if not values:
                continue  # failures neither advance nor reset (PROTOCOL.md patience rule)
            if min(values) < best:
                best, stalled = min(values), 0
            else:
                stalled += 1
        return stalled

    def _stop(self, ok: list[tuple[float, int, str]], reason: str) -> Stop:
        top = [arch_id for _, _, arch_id in sorted(ok)[: self.top_k]]
        if not top:
            return Stop(arch_ids=[], summary=f"Rule-based stop: {reason}; no architecture trained successfully.")
        return Stop(arch_ids=top, summary=f"Rule-based stop: {reason}; best {top[0]}, training the top {len(top)}.")
