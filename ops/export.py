"""`agentnas export RUN --out DIR`: the run's result as a standalone folder.

The result folder (model.py with its loader, weights.pt, recipe.json, metrics.json; see
result.py), the searched space when there was one, and a README saying how the network
was found and scored. Nothing in it imports agentnas: `model.py` needs torch only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from agentnas.bus import space as sp
from agentnas.ops.result import metric_text, write_result
from agentnas.store.state import RunState


class ExportError(ValueError):
    """A run that has nothing to export (one line)."""


def export_run(home: Path, state: RunState, out: Path) -> Path:
    if state.result is None or state.settings is None:
        raise ExportError(f"run {state.run_id} has no result to export (status: {state.status}); "
                          "only a finished run hands over a network")
    folder = write_result(home, state.run_id, state.result, state.settings.task)  # rewritten from the log
    out.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        shutil.copyfile(item, out / item.name)
    if state.space.accepted is not None:
        sp.save_space(state.space.accepted.space, out / "space.json")
    (out / "README.md").write_text(readme(state, has_weights=(out / "weights.pt").exists()))
    return out


def readme(state: RunState, *, has_weights: bool) -> str:
    result, settings = state.result, state.settings
    w, metric = result.winner, result.metric
    task = settings.task
    lines = [f"# {w.arch_id}: a network for `{task.name}`", "",
             f"Found by agentnas run `{state.run_id}` (phases {', '.join(map(str, settings.phases))}).", "",
             "## Score", "",
             f"- test {metric_text(metric, w.test_metric)} (lower is better): trained from scratch on the training "
             "and validation splits with `recipe.json`, last weights, evaluated once on the test split (wave 2);",
             f"- validation {metric_text(metric, w.val_metric)}: full training on the training split, best epoch "
             "(wave 1); this is the number every decision used;",
             f"- {w.params if w.params is not None else '?'} parameters, "
             f"{w.flops if w.flops is not None else '?'} FLOPs per sample.", "",
             "## How it was found", ""]
    if state.phase1.archs:
        p1 = state.phase1
        lines.append(f"- Phase 1 (LLM seed search): {p1.budget_used} evaluations of {settings.phase1.budget}; "
                     f"stopped by {p1.stopped.reason if p1.stopped else '-'}; seed "
                     f"{p1.seed.arch_id if p1.seed else '-'}.")
    if state.space.accepted is not None:
        accepted = state.space.accepted
        lines.append(f"- Phase 2: the seed rewritten as a slotted space of {len(accepted.space.slots)} slots, "
                     f"{accepted.size:,} configurations (`space.json`).")
    if state.search.trials:
        found = state.search
        lines.append(f"- Phase 3 ({settings.evolution.algorithm}): {found.budget_used} evaluations of "
                     f"{settings.evolution.budget}; stopped by {found.stopped.reason if found.stopped else '-'}.")
    lines += [f"- Reporting rule: {result.rule}.", ""]
    if w.choices:
        lines += ["## Slot choices", "", *[f"- `{slot}`: {choice}" for slot, choice in w.choices], ""]
    if result.seed is not None:
        lines += [f"The seed ({result.seed.arch_id}) scored test {metric_text(metric, result.seed.test_metric)}.", ""]
    lines += ["## Use", "", "```python",
              "from model import load  # needs torch only",
              "model = load('weights.pt')  # eval mode",
              "```", "",
              f"Input: a float tensor of shape (batch, {', '.join(map(str, task.input_shape))}); output: "
              f"(batch, {', '.join(map(str, task.output_shape))}), raw "
              f"{'logits' if task.loss in ('cross_entropy', 'bce_with_logits', 'masked_bce') else 'predictions'}.",
              ""]
    if not has_weights:
        lines += ["Note: the weights were not on the machine that exported this folder; see metrics.json.", ""]
    return "\n".join(lines)
