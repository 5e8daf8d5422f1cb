"""What a finished run hands over: its result folder, and the lines that end `agentnas run`.

    <home>/runs/<run>/result/
        model.py      the winner's code, plus `load(path)` that builds it and loads the weights
        weights.pt    wave-2 weights (trained on train+valid), a self-describing checkpoint
        recipe.json   the training recipe
        metrics.json  test and validation metric (name, direction), params, FLOPs, time per stage

Everything is written from the run's events (`run.finished` carries a RunResult), so the
folder can be written again at any time, on any machine that has the log and the weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec

from agentnas.bus import messages as m
from agentnas.bus.settings import TaskInfo

# How each metric reads in a sentence: (name, unit).
METRIC_WORDS = {
    "error_pct": ("error", " %"),
    "one_minus_map": ("1 - mAP", ""),
    "one_minus_auroc": ("1 - AUROC", ""),
    "one_minus_macro_f1": ("1 - macro F1", ""),
    "relative_l2": ("relative L2 error", ""),
    "mae8": ("MAE8", ""),
    "one_minus_pixel_auroc": ("1 - pixel AUROC", ""),
}

LOADER = '''

# --- added by agentnas: build the network and load its trained weights (needs torch only) ---
def load(path="weights.pt", device="cpu"):
    """Architecture() with the weights of `path` loaded, in eval mode."""
    import os

    if not os.path.isabs(path):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), path)
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    model = Architecture()
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval()
'''


def metric_text(metric: str, value: float | None) -> str:
    """"error 12.3 %" ... "-" when missing."""
    name, unit = METRIC_WORDS.get(metric, (metric, ""))
    if value is None:
        return f"{name} -"
    return f"{name} {value:.4g}{unit}"


def result_folder(home: Path, run_id: str) -> Path:
    return home / "runs" / run_id / "result"


def write_result(home: Path, run_id: str, result: m.RunResult, task: TaskInfo) -> Path:
    """Write (or rewrite) the run's result folder; returns it."""
    folder = result_folder(home, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    winner = result.winner
    source = winner.source.rstrip() + "\n"
    if "import torch" not in source:
        source = "import torch\n" + source
    (folder / "model.py").write_text(source + LOADER)
    (folder / "recipe.json").write_text(json.dumps(winner.recipe, indent=2, sort_keys=True) + "\n")
    weights = Path(winner.weights_path) if winner.weights_path else None
    copied = weights is not None and weights.is_file()
    if copied:
        shutil.copyfile(weights, folder / "weights.pt")
    metrics = {
        "run": run_id,
        "task": task.name,
        "metric": result.metric,
        "direction": "lower is better",
        "test_metric": winner.test_metric,
        "val_metric": winner.val_metric,
        "arch_id": winner.arch_id,
        "phase": winner.phase,
        "params": winner.params,
        "flops_per_sample": winner.flops,
        "config_key": winner.config_key or None,
        "slot_choices": [list(c) for c in winner.choices] or None,
        "rule": result.rule,
        "weights": "weights.pt" if copied else f"not on this machine ({winner.weights_path or 'not saved'})",
        "seed": msgspec.to_builtins(_numbers(result.seed)) if result.seed else None,
        "stages": [msgspec.to_builtins(p) for p in result.phases],
        "device_hours": round(sum(p.device_s for p in result.phases) / 3600, 4),
        "llm_tokens": sum(p.input_tokens + p.output_tokens for p in result.phases),
        "llm_cost_usd": round(sum(p.cost_usd for p in result.phases), 4),
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return folder


def _numbers(outcome: m.Outcome) -> dict:
    return {"arch_id": outcome.arch_id, "phase": outcome.phase, "val_metric": outcome.val_metric,
            "test_metric": outcome.test_metric, "params": outcome.params}


def result_lines(run_id: str, result: m.RunResult, task: TaskInfo, folder: Path,
                 chance: float | None = None) -> list[str]:
    """The last lines on the screen: the winner, its metric with name and direction, where it is."""
    winner = result.winner
    origin = "the Phase 1 seed" if winner.phase == 1 else "found by the Phase 3 search"
    lines = [f"result of {run_id}: {winner.arch_id} ({origin})",
             f"  test {metric_text(result.metric, winner.test_metric)} (lower is better); "
             f"wave-1 validation {metric_text(result.metric, winner.val_metric)}"]
    if result.seed is not None:
        lines.append(f"  the seed {result.seed.arch_id}: test {metric_text(result.metric, result.seed.test_metric)}")
    reference = []
    if chance is not None:
        reference.append(f"a constant guess scores {metric_text(result.metric, chance)}")
    if task.published_best is not None and not task.blind:
        reference.append(f"best published {metric_text(result.metric, task.published_best)}")
    if reference:
        lines.append("  for reference: " + "; ".join(reference))
    size = [f"{winner.params:,} parameters" if winner.params is not None else "",
            f"{winner.flops:,} FLOPs per sample" if winner.flops is not None else ""]
    if any(size):
        lines.append("  " + ", ".join(s for s in size if s))
    lines.append(f"  chosen by: {result.rule}")
    lines.append(f"  result folder: {folder} (model.py, weights.pt, recipe.json, metrics.json)")
    return lines


def chance_level(task_ref: str) -> float | None:
    """What a constant guess scores on the test split (None when the task cannot be loaded here)."""
    from agentnas.trainer_daemon.metrics import trivial_baseline
    from agentnas.trainer_daemon.tasks import TaskError, load_task

    try:
        data = load_task(task_ref)
        spec = data.spec
        return trivial_baseline(spec.metric, spec.loss, data.train_y, data.test_y, tuple(spec.output_shape),
                                data.test_groups)
    except (TaskError, ValueError, OSError):
        return None
