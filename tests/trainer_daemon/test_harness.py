"""run_job on CPU with tiny data and tiny models: statuses, waves, losses, augmentation, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agentnas.trainer_daemon.batches import augment, random_erase, task_loss
from agentnas.trainer_daemon.harness import Job, Plateau, build_model, run_job
from agentnas.trainer_daemon.metrics import compute_metric
from agentnas.trainer_daemon.tasks import TaskData, TaskSpec

SHAPE = (3, 8, 8)

LINEAR = """
import torch
from torch import nn

class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(192, 2)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""

CONV = """
import torch
from torch import nn

class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, OUT))

    def forward(self, x):
        return self.body(x)
"""

# Counts its training forwards in a saved buffer and answers right (in eval mode) only
# while the count is in [16, 24): after epoch 2 of 8-step epochs, plus one probe forward.
COUNTER = """
import torch
from torch import nn

class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if self.training:
            self.calls += 1
        s = x[:, 0].mean(dim=(1, 2))
        logits = torch.stack([-s, s], dim=1) + 0 * self.w  # training must not change the answers
        right = self.training or int(self.calls) // 8 == 2
        return logits if right else -logits
"""


def _split(rng: np.random.Generator, n: int, loss: str) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, *SHAPE)).astype(np.float32)
    if loss == "cross_entropy":
        y = (x[:, 0].mean(axis=(1, 2)) > 0).astype(np.int64)
    elif loss == "bce_with_logits":  # four labels, each the sign of one channel/row mean
        y = np.stack([x[:, k % 3, k].mean(axis=1) > 0 for k in range(4)], axis=1).astype(np.float32)
    else:  # dense regression: the channel mean, plus an offset so no target is near zero
        y = (x.mean(axis=1, keepdims=True) + 2.0).astype(np.float32)
    return x, y


def make_data(loss: str = "cross_entropy", n_train: int = 256) -> TaskData:
    shapes = {"cross_entropy": ((2,), "error_pct"), "bce_with_logits": ((4,), "one_minus_auroc"),
              "relative_l2": ((1, 8, 8), "relative_l2")}
    output_shape, metric = shapes[loss]
    spec = TaskSpec(name=f"tiny_{loss}", input_shape=SHAPE, output_shape=output_shape, loss=loss, metric=metric)
    rng = np.random.default_rng(0)
    (tx, ty), (vx, vy), (sx, sy) = (_split(rng, n, loss) for n in (n_train, 128, 128))
    return TaskData(spec=spec, train_x=tx, train_y=ty, valid_x=vx, valid_y=vy, test_x=sx, test_y=sy)


def conv(out: int = 2) -> str:
    return CONV.replace("OUT", str(out))


def linear(out: int) -> str:
    return LINEAR.replace("nn.Linear(192, 2)", f"nn.Linear(192, {out})")


def run(request: str, source: str, data: TaskData | None = None, **fields):
    reports: list[dict] = []
    fields.setdefault("recipe", {"epochs": 2, "batch_size": 32, "lr": 0.01})
    job = Job(eval_id="arch_001", request=request, model_source=source, **fields)
    result = run_job(job, data or make_data(), "cpu", reports.append)
    return result, reports


def metric_with_weights(source: str, path: str, x: np.ndarray, y: np.ndarray, metric: str) -> float:
    """An independent evaluation of saved weights."""
    model = build_model(source, "check")
    model.load_state_dict(torch.load(path)["state_dict"])
    model.eval()
    with torch.no_grad():
        outputs = model(torch.tensor(x)).numpy()
    return compute_metric(metric, outputs, y)


# ---------------------------------------------------------------- validate


def test_validate_reports_params_flops_and_memory():
    result, reports = run("validate", LINEAR)
    assert result.status == "ok", result.reason
    assert result.params == 192 * 2 + 2
    assert result.flops == 2 * 192 * 2  # one sample through one 192x2 matmul
    assert result.peak_memory_mb and result.peak_memory_mb > 0
    assert result.metric_name == "error_pct" and result.val_metric is None
    assert reports == [] and result.epochs_done == 0


def test_wrong_output_shape_is_rejected():
    result, _ = run("validate", conv(out=28))
    assert result.status == "rejected"
    assert result.reason == "output shape (8, 28) != expected (8, 2)"


def test_exception_in_init_is_rejected_with_traceback():
    source = LINEAR.replace("self.fc = nn.Linear(192, 2)", "self.fc = nn.Linear(192, 2)\n        1 / 0")
    result, _ = run("proxy", source)
    assert result.status == "rejected"
    assert result.reason == "build failed: ZeroDivisionError: division by zero"
    assert "ZeroDivisionError" in result.traceback and "1 / 0" in result.traceback  # the candidate's line
    assert len(result.traceback) <= 4000


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("x = (", "build failed: SyntaxError"),
        ("import torch\nclass Model(torch.nn.Module):\n    pass\n", "the source defines no class Architecture"),
        (LINEAR.replace("return self.fc(x.flatten(1))", "return self.fc(x.flatten(1)), x"), "forward returned tuple"),
        (LINEAR.replace("super().__init__()", "super().__init__()\n        raise SystemExit(3)"), "build failed: SystemExit"),
        (LINEAR.replace("return self.fc(x.flatten(1))", "return self.fc(x)"), "probe (forward/backward on 8 samples) failed"),
    ],
)
def test_broken_sources_are_rejected(source, reason):
    result, _ = run("validate", source)
    assert result.status == "rejected"
    assert result.reason.startswith(reason), result.reason
    assert "\n" not in result.reason


def test_memory_error_is_oom():
    source = LINEAR.replace("return self.fc(x.flatten(1))", "raise MemoryError('no room')")
    result, _ = run("validate", source)
    assert result.status == "oom" and "MemoryError" in result.reason


def test_malformed_recipe_is_rejected():
    result, _ = run("validate", LINEAR, recipe='{"lr": 0.1,')
    assert result.status == "rejected" and "malformed JSON" in result.reason
    result, _ = run("proxy", LINEAR, recipe={"lr": 0})
    assert result.status == "rejected" and result.reason.startswith("recipe.lr")


def test_recipe_warnings_and_batch_clamp_are_returned():
    data = make_data("bce_with_logits")
    recipe = {"epochs": 1, "batch_size": 1000, "optimizer": "lion", "augmentations": ["mixup"]}
    result, reports = run("proxy", conv(out=4), data, recipe=recipe)
    assert result.status == "ok", result.reason
    assert any(w.startswith("optimizer") for w in result.warnings)
    assert any("clamped to 256" in w for w in result.warnings)
    assert any("mixup needs a cross_entropy task" in w for w in result.warnings)
    assert len(reports) == 1  # one full-data step per epoch, no crash


# ---------------------------------------------------------------- failures during training


def test_nan_model_is_rejected_by_validate_and_errors_in_training():
    source = LINEAR.replace("return self.fc(x.flatten(1))", "return self.fc(x.flatten(1)) * float('nan')")
    result, _ = run("validate", source)
    assert result.status == "rejected" and "non-finite" in result.reason
    result, reports = run("proxy", source)
    assert result.status == "error"
    assert result.reason == "non-finite loss at epoch 1 step 1"
    assert reports == []


def test_nan_midway_names_its_step():
    # training forward number 11 (after the probe's one) is epoch 2 step 3 with 8 steps per epoch
    source = COUNTER.replace("return logits if right else -logits",
                             "out = logits if right else -logits\n"
                             "        return out * float('nan') if int(self.calls) >= 12 else out")
    result, reports = run("final_wave1", source, recipe={"epochs": 3, "batch_size": 32})
    assert result.status == "error"
    assert result.reason == "non-finite loss at epoch 2 step 3"
    assert len(reports) == 1 and result.epochs_done == 1


def test_time_cap_gives_timeout():
    result, reports = run("final_wave1", conv(), time_cap_s=0.01, recipe={"epochs": 50, "batch_size": 8})
    assert result.status == "timeout"
    assert "cap of 0.01 s" in result.reason
    assert result.device_time_s > 0.01 and result.epochs_done < 50


def test_memory_cap_gives_oom():
    for request in ("validate", "proxy"):
        result, reports = run(request, LINEAR, memory_cap_mb=1.0)
        assert result.status == "oom", request
        assert "exceeded the cap of 1 MB" in result.reason
        assert result.peak_memory_mb > 1.0 and reports == []


# ---------------------------------------------------------------- requests


def test_proxy_runs_scaled_epochs_and_reports_each():
    result, reports = run("proxy", conv(), recipe={"epochs": 10, "batch_size": 32, "lr": 0.01})
    assert result.status == "ok", result.reason
    assert result.epochs_done == 3 and [r["epoch"] for r in reports] == [1, 2, 3]
    assert all(r["epochs"] == 3 and set(r) == {"epoch", "epochs", "train_loss", "val_metric", "device_time_s"}
               for r in reports)
    assert result.val_metric == reports[-1]["val_metric"]  # the last epoch's, not the best
    metrics = [r["val_metric"] for r in reports]
    assert result.best_epoch == metrics.index(min(metrics)) + 1
    times = [r["device_time_s"] for r in reports]
    assert times == sorted(times) and result.device_time_s == times[-1] > 0
    assert result.test_metric is None and result.weights_path == ""


def test_wave1_keeps_the_best_epoch_and_saves_it(tmp_path):
    data = make_data()
    result, reports = run("final_wave1", COUNTER, data, recipe={"epochs": 4, "batch_size": 32},
                          weights_dir=str(tmp_path / "weights"))
    assert result.status == "ok", result.reason
    assert [r["val_metric"] for r in reports] == [100.0, 0.0, 100.0, 100.0]
    assert result.best_epoch == 2 and result.val_metric == 0.0 and result.epochs_done == 4
    assert result.weights_path == str(tmp_path / "weights" / "arch_001.pt")
    checkpoint = torch.load(result.weights_path)
    assert checkpoint["epoch"] == 2 and checkpoint["val_metric"] == 0.0 and checkpoint["seed"] == 42
    assert int(checkpoint["state_dict"]["calls"]) == 17  # 1 probe + 2 epochs x 8 steps
    assert metric_with_weights(COUNTER, result.weights_path, data.valid_x, data.valid_y, "error_pct") == 0.0


def test_wave2_trains_on_train_and_valid_and_reports_test_only(tmp_path):
    data = make_data()
    result, reports = run("final_wave2", COUNTER.replace("// 8 == 2", "> 0"), data,
                          recipe={"epochs": 2, "batch_size": 32}, weights_dir=str(tmp_path))
    assert result.status == "ok", result.reason
    assert result.val_metric is None and result.best_epoch is None
    assert all(r["val_metric"] is None for r in reports) and len(reports) == 2
    checkpoint = torch.load(result.weights_path)
    assert int(checkpoint["state_dict"]["calls"]) == 1 + 2 * (256 + 128) // 32
    assert checkpoint["test_metric"] == result.test_metric == 0.0
    source = COUNTER.replace("// 8 == 2", "> 0")
    assert metric_with_weights(source, result.weights_path, data.test_x, data.test_y, "error_pct") == 0.0


def test_wave2_test_metric_matches_an_independent_evaluation(tmp_path):
    data = make_data()
    result, _ = run("final_wave2", conv(), data, weights_dir=str(tmp_path))
    assert result.status == "ok", result.reason
    independent = metric_with_weights(conv(), result.weights_path, data.test_x, data.test_y, "error_pct")
    assert result.test_metric == pytest.approx(independent)


def test_weights_that_cannot_be_written_are_the_machinerys_fault_not_the_candidates(tmp_path):
    """A full or unwritable weights folder: the job comes back as a fault (the daemon retries it)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result, _ = run("final_wave2", conv(), weights_dir=str(blocker / "weights"))
    assert result.fault and "cannot write the weights to" in result.fault and str(blocker) in result.fault
    assert not result.weights_path


def test_same_seed_same_result_other_seed_differs():
    recipe = {"epochs": 2, "batch_size": 32, "augmentations": ["mixup", "random_erasing"]}
    first = run("final_wave1", conv(), recipe=recipe, seed=7)
    second = run("final_wave1", conv(), recipe=recipe, seed=7)
    other = run("final_wave1", conv(), recipe=recipe, seed=8)
    strip = [{k: v for k, v in r.items() if k != "device_time_s"} for r in first[1]]
    assert strip == [{k: v for k, v in r.items() if k != "device_time_s"} for r in second[1]]
    assert first[0].val_metric == second[0].val_metric
    assert [r["train_loss"] for r in other[1]] != [r["train_loss"] for r in first[1]]


# ---------------------------------------------------------------- losses learn


@pytest.mark.parametrize(
    ("loss", "source", "recipe", "good"),
    [
        ("cross_entropy", conv(2), {"label_smoothing": 0.1, "augmentations": ["mixup", "cutmix", "random_erasing"]}, 25.0),
        ("cross_entropy", conv(2), {"optimizer": "sgd", "lr": 0.1, "scheduler": "step", "grad_clip": 1.0}, 25.0),
        ("bce_with_logits", linear(4), {"scheduler": "plateau", "optimizer": "adam", "weight_decay": 0.0}, 0.3),  # chance is 0.5
    ],
)
def test_classification_losses_go_down(loss, source, recipe, good):
    recipe = {"epochs": 6, "batch_size": 32, "lr": 0.02, **recipe}
    result, reports = run("final_wave1", source, make_data(loss), recipe=recipe)
    assert result.status == "ok", result.reason
    assert reports[-1]["train_loss"] < 0.9 * reports[0]["train_loss"]
    assert result.val_metric < good


def test_relative_l2_regression_goes_down():
    source = """
from torch import nn

class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return self.mix(x)
"""
    recipe = {"epochs": 8, "batch_size": 32, "lr": 0.05, "scheduler": "warmup_cosine"}
    result, reports = run("final_wave1", source, make_data("relative_l2"), recipe=recipe)
    assert result.status == "ok", result.reason
    assert reports[-1]["train_loss"] < 0.5 * reports[0]["train_loss"]
    assert result.val_metric < 0.2


# ---------------------------------------------------------------- pieces


def test_task_losses_match_numpy():
    rng = np.random.default_rng(1)
    out = rng.normal(size=(5, 1, 4, 4)).astype(np.float32)
    y = rng.normal(size=(5, 1, 4, 4)).astype(np.float32)
    rel = np.mean([np.linalg.norm(out[i] - y[i]) / np.linalg.norm(y[i]) for i in range(5)])
    got = task_loss("relative_l2", torch.tensor(out), torch.tensor(y), 0.0)
    assert float(got) == pytest.approx(rel, rel=1e-5)
    assert float(task_loss("mse", torch.tensor(out), torch.tensor(y), 0.0)) == pytest.approx(np.mean((out - y) ** 2), rel=1e-5)
    mask_y = rng.integers(-1, 2, size=(5, 1, 4, 4)).astype(np.float32)  # -1 = ignored
    keep = mask_y >= 0
    bce = np.log1p(np.exp(-np.abs(out))) + np.maximum(out, 0) - out * mask_y
    got = task_loss("masked_bce", torch.tensor(out), torch.tensor(mask_y), 0.0)
    assert float(got) == pytest.approx(bce[keep].mean(), rel=1e-5)


def test_random_erase_zeroes_one_rectangle_across_channels():
    torch.manual_seed(0)
    x = torch.ones(64, 3, 16, 16)
    assert torch.equal(random_erase(x, 0.0), x)
    erased = random_erase(x, 1.0)
    zero = erased == 0
    assert torch.equal(zero[:, :1].expand_as(zero), zero)  # the same rectangle in every channel
    for mask in zero[:, 0]:
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        area = int(mask.sum())
        assert area == len(rows) * len(cols) and 1 <= area <= 0.5 * 256  # a filled rectangle
        assert int(rows.max() - rows.min()) + 1 == len(rows)


def test_cutmix_weight_is_the_area_kept():
    torch.manual_seed(0)
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 10, 10).contiguous()
    y = torch.arange(4)
    params = {"cutmix_alpha": 1.0}
    for seed in range(5):
        mixed, partner, lam = augment(x, y, ["cutmix"], params, np.random.default_rng(seed))
        for i in range(4):
            own = float((mixed[i] == x[i, 0, 0, 0]).float().mean())
            if partner[i] != y[i]:
                assert own == pytest.approx(lam)


def test_plateau_reduces_after_patience():
    plateau = Plateau(patience=1, factor=0.5)
    for value in (1.0, 0.5, 0.6, 0.6):
        plateau.step(value)
    assert plateau.scale == 0.5 and plateau.bad_epochs == 0
    plateau.step(math.nan)
    plateau.step(0.1)
    assert plateau.scale == 0.5 and plateau.best == 0.1


@pytest.mark.parametrize("task_name", ["addigits", "multdigits", "digitwave", "digitsmooth"])
@pytest.mark.parametrize("request_kind", ["validate", "proxy", "final_wave1", "final_wave2"])
def test_every_request_kind_on_every_builtin_task(task_name, request_kind, tmp_path):
    from agentnas.trainer_daemon import harness
    from agentnas.trainer_daemon.tasks import load_task

    data = load_task(task_name)
    spec = data.spec
    source = harness._WARM_UP_SOURCE.format(input_shape=tuple(spec.input_shape), output_shape=tuple(spec.output_shape))
    job = harness.Job(eval_id=f"{task_name}-{request_kind}", request=request_kind, model_source=source,
                      recipe={"epochs": 2, "batch_size": 256, "lr": 0.003}, weights_dir=str(tmp_path))
    progress = []
    result = harness.run_job(job, data, "cpu", progress.append)
    assert result.status == "ok", (result.reason, result.traceback[-500:])
    assert result.params and result.flops and result.metric_name == spec.metric
    if request_kind == "validate":
        assert result.epochs_done == 0 and result.val_metric is None
    elif request_kind == "proxy":
        assert result.epochs_done == 1 and len(progress) == 1 and result.val_metric is not None  # max(1, round(0.6))
    elif request_kind == "final_wave1":
        assert result.epochs_done == 2 and result.best_epoch in (1, 2) and result.weights_path
    else:
        assert result.test_metric is not None and result.val_metric is None and result.weights_path
    for metric in (result.val_metric, result.test_metric):
        assert metric is None or (metric >= 0 and math.isfinite(metric))


# ---------------------------------------------------------------- lazy modules

LAZY = """
import torch
from torch import nn

class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.LazyConv2d(8, 3, padding=1)
        self.bn = nn.LazyBatchNorm2d()
        self.head = nn.LazyLinear(2)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))
"""
LAZY_PARAMS = (8 * 3 * 9 + 8) + 2 * 8 + (8 * 2 + 2)


@pytest.mark.parametrize("request_kind", ["validate", "proxy", "final_wave1", "final_wave2"])
def test_lazy_modules_work_in_every_request_kind(request_kind, tmp_path):
    recipe = {"epochs": 10, "batch_size": 32, "lr": 0.02}
    result, reports = run(request_kind, LAZY, recipe=recipe, weights_dir=str(tmp_path))
    assert result.status == "ok", (result.reason, result.traceback[-800:])
    assert result.params == LAZY_PARAMS  # counted after the probe's forward initialised them
    assert result.flops and result.flops > 0
    if request_kind == "validate":
        return
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]  # the optimizer holds the initialised parameters
    if request_kind == "proxy":
        assert result.epochs_done == 3 and result.val_metric is not None and result.val_metric < 50
    else:
        state = torch.load(result.weights_path)["state_dict"]
        assert tuple(state["conv.weight"].shape) == (8, 3, 3, 3) and tuple(state["head.weight"].shape) == (2, 8)


# ---------------------------------------------------------------- equivalence requests

INLINE = """
import torch
from torch import nn
import torch.nn.functional as F

class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.relu(x + self.bn1(self.conv1(x)))
        return self.head(x.mean(dim=(2, 3)))
"""
STAGED = """
import torch
from torch import nn
import torch.nn.functional as F

class Stage1(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return F.relu(x + self.bn(self.conv(x)))

class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.stage1 = Stage1()
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        return self.head(self.stage1(x).mean(dim=(2, 3)))
"""


def equivalence(rewrite: str, reference: str = INLINE, **fields):
    return run("equivalence", rewrite, reference_source=reference, **fields)


def test_equivalence_accepts_a_faithful_rewrite():
    result, reports = equivalence(STAGED)
    assert result.status == "ok", (result.reason, result.traceback[-800:])
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-6
    assert result.params == 3 * 8 * 9 + 16 + 8 * 8 * 9 + 16 + 8 * 2 + 2
    assert reports == [] and result.epochs_done == 0 and result.weights_path == ""


@pytest.mark.parametrize(
    ("rewrite", "reason"),
    [
        (STAGED.replace("return F.relu(x + self.bn", "return F.gelu(x + self.bn"), "outputs differ: max |diff| "),
        (STAGED.replace("nn.Linear(8, 2)", "nn.Linear(8, 2, bias=False)"), "parameter count 840 != 842 of the original"),
        (STAGED.replace("self.stage1 = Stage1()", "self.pre = nn.Parameter(torch.ones(1))\n        self.stage1 = Stage1()"),
         "parameter count 843 != 842 of the original"),
        (STAGED.replace("        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)\n        self.bn = nn.BatchNorm2d(8)\n",
                        "        self.bn = nn.BatchNorm2d(8)\n        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)\n"),
         "construction order differs at parameter 3: (8,) (stage1.bn.weight) vs (8, 8, 3, 3) (conv1.weight) in the original"),
    ],
    ids=["activation", "dropped bias", "added parameter", "construction order"],
)
def test_equivalence_rejects_with_the_reason(rewrite, reason):
    result, _ = equivalence(rewrite)
    assert result.status == "rejected"
    assert result.reason.startswith(reason), result.reason


def test_equivalence_tolerances_come_from_the_request():
    from agentnas.bus.messages import EquivalenceOptions

    nudged = STAGED.replace("return self.head(self.stage1(x).mean(dim=(2, 3)))",
                            "return self.head(self.stage1(x).mean(dim=(2, 3))) + 1e-4")
    assert equivalence(nudged)[0].status == "rejected"
    result, _ = equivalence(nudged, equivalence=EquivalenceOptions(atol=1e-3, samples=3))
    assert result.status == "ok" and result.max_abs_diff == pytest.approx(1e-4, rel=1e-2)


def test_equivalence_with_lazy_modules():
    lazy_staged = LAZY.replace("self.conv = nn.LazyConv2d(8, 3, padding=1)\n        self.bn = nn.LazyBatchNorm2d()",
                               "self.stage1 = nn.Sequential(nn.LazyConv2d(8, 3, padding=1), nn.LazyBatchNorm2d())")
    lazy_staged = lazy_staged.replace("self.bn(self.conv(x))", "self.stage1(x)")
    result, _ = equivalence(lazy_staged, reference=LAZY)
    assert result.status == "ok", (result.reason, result.traceback[-800:])
    assert result.params == LAZY_PARAMS


def test_equivalence_gates_and_builds_the_reference_itself():
    result, _ = equivalence(STAGED, reference="")
    assert result.status == "rejected" and "needs reference_source" in result.reason
    result, _ = equivalence(STAGED, reference="import os\n" + INLINE)
    assert result.status == "rejected" and result.reason == "reference_source: line 1: import of 'os' is not allowed"
    result, _ = equivalence(STAGED, reference=INLINE.replace("super().__init__()", "super().__init__()\n        1 / 0"))
    assert result.status == "rejected"
    assert result.reason == "build (reference_source) failed: ZeroDivisionError: division by zero"
    assert '"<reference>"' in result.traceback
    result, _ = equivalence(STAGED.replace("return self.head(", "return self.nope("))
    assert result.status == "rejected" and result.reason.startswith("equivalence check (on 8 training samples) failed: "
                                                                    "ForwardFailed: the rewrite's forward raised")


# ---------------------------------------------------------------- the whole-job cap of validate


@pytest.mark.parametrize(
    ("source", "stage"),
    [
        (LINEAR.replace("super().__init__()", "super().__init__()\n        while True:\n            pass"), "build"),
        (LINEAR.replace("return self.fc(x.flatten(1))", "while True:\n            pass"),
         "probe (forward/backward on 8 samples)"),
    ],
    ids=["constructor", "forward"],
)
def test_validate_time_cap_covers_the_whole_job(source, stage):
    import time

    started = time.monotonic()
    result, _ = run("validate", source, time_cap_s=1.0)
    assert time.monotonic() - started < 5
    assert result.status == "timeout"
    assert result.reason == f"validate took longer than its cap of 1 s (wall clock, the whole job) during {stage}"


def test_equivalence_time_cap_covers_the_whole_job():
    slow = INLINE.replace("super().__init__()", "super().__init__()\n        while True:\n            pass")
    result, _ = equivalence(STAGED, reference=slow, time_cap_s=0.5)
    assert result.status == "timeout" and result.reason.endswith("during build (reference_source)")


def test_training_requests_keep_a_device_time_cap_only():
    # a proxy's cap is device seconds of training steps: a slow constructor is not what it measures
    slow = LINEAR.replace("super().__init__()", "super().__init__()\n        for _ in range(3_000_000):\n            pass")
    result, _ = run("proxy", slow, time_cap_s=0.05, recipe={"epochs": 1, "batch_size": 256})
    assert result.status == "ok", result.reason
