"""`gdas` requests: the search finds the clearly best alternative, reports per epoch, fails cleanly,
and runs end to end in a sandboxed worker."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from agentnas.bus.messages import GdasOptions
from agentnas.bus.space import Alternative, Slot, SlottedSpace, assemble, load_space, seed_configuration
from agentnas.trainer_daemon.harness import Job, run_job
from agentnas.trainer_daemon.sandbox import Limits, WorkerPool
from agentnas.trainer_daemon.tasks import TaskData, TaskSpec

EXAMPLE = Path(__file__).parents[1] / "fixtures" / "space_example.json"

SCAFFOLD = """class Architecture(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = SLOT_body()

    def forward(self, x):
        return self.body(x)
"""
NOISY = """class SLOT_body_0(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x) + 3.0 * torch.randn_like(x)
"""
# starts at zero, so every step of its training brings it closer to the target from below
LINEAR = """class SLOT_body_1(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8, bias=False)
        nn.init.zeros_(self.fc.weight)

    def forward(self, x):
        return self.fc(x)
"""
ZERO = """class SLOT_body_2(nn.Module):
    def forward(self, x):
        return x.new_zeros((x.shape[0], 8))
"""


def regression_data() -> TaskData:
    """y = A x for a fixed random 8x8 A: only a learnable linear map can fit it."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 8)).astype(np.float32)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(n, 8)).astype(np.float32)
        return x, x @ a.T

    spec = TaskSpec(name="linear", input_shape=(8,), output_shape=(8,), loss="mse", metric="relative_l2")
    (tx, ty), (vx, vy), (sx, sy) = split(512), split(64), split(64)
    return TaskData(spec=spec, train_x=tx, train_y=ty, valid_x=vx, valid_y=vy, test_x=sx, test_y=sy)


def regression_space() -> SlottedSpace:
    body = Slot(name="body", class_name="SLOT_body", input_shape=(8,), output_shape=(8,), alternatives=(
        Alternative(role="seed", description="linear map plus large noise", source=NOISY),
        Alternative(description="linear map", source=LINEAR),
        Alternative(role="zero", description="zeros", source=ZERO),
    ))
    return SlottedSpace(scaffold_source=SCAFFOLD, slots=(body,),
                        seed_recipe={"optimizer": "adam", "lr": 0.05, "batch_size": 32, "epochs": 10,
                                     "scheduler": "none"})


def gdas_job(space: SlottedSpace, **fields) -> Job:
    fields.setdefault("gdas", GdasOptions(epochs=6, arch_lr=0.05))
    return Job(eval_id="search", request="gdas", model_source=assemble(space, seed_configuration(space)),
               space=space, **fields)


def run(job: Job, data: TaskData | None = None):
    progress: list[dict] = []
    return run_job(job, data or regression_data(), "cpu", progress.append), progress


def test_the_search_picks_the_clearly_best_alternative():
    result, progress = run(gdas_job(regression_space()))
    assert result.status == "ok", (result.reason, result.traceback[-1500:])
    assert result.choices == [1]
    assert result.params == 64 and result.flops == 2 * 64  # the chosen linear map's
    assert result.epochs_done == 6 and result.device_time_s > 0 and result.peak_memory_mb > 0
    assert result.val_metric is None and result.weights_path == ""
    assert [p["epoch"] for p in progress] == list(range(1, 7)) and all(p["epochs"] == 6 for p in progress)
    assert progress[0]["tau"] == 10.0 and progress[-1]["tau"] == 0.1
    assert all(len(p["choices"]) == 1 and p["val_metric"] is None for p in progress)
    assert progress[-1]["choices"] == result.choices
    assert progress[-1]["train_loss"] < progress[0]["train_loss"]


def test_the_same_seed_searches_the_same_way():
    strip = lambda progress: [{k: v for k, v in p.items() if k != "device_time_s"} for p in progress]  # noqa: E731
    job = gdas_job(regression_space(), gdas=GdasOptions(epochs=2, arch_lr=0.05))
    first, second = run(job), run(job)
    assert strip(first[1]) == strip(second[1]) and first[0].choices == second[0].choices
    other = run(msgspec.structs.replace(job, seed=7))
    assert strip(other[1]) != strip(first[1])


def test_a_request_recipe_replaces_the_seed_recipe_and_is_fit_to_the_search():
    job = gdas_job(regression_space(), gdas=GdasOptions(epochs=1), recipe={"batch_size": 1000, "optimizer": "lion"})
    result, progress = run(job)
    assert result.status == "ok", result.reason
    assert any(w.startswith("optimizer") for w in result.warnings)
    assert any("clamped to 256" in w for w in result.warnings)  # half of the 512 training samples
    assert len(progress) == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (dict(gdas=None), "a gdas request needs gdas options"),
        (dict(gdas=GdasOptions(epochs=0)), "gdas.epochs must be >= 1, got 0"),
        (dict(gdas=GdasOptions(epochs=2, tau_min=5.0, tau_max=1.0)), "gdas temperatures need 0 < tau_min <= tau_max"),
        (dict(space=None), "a gdas request needs the space to search"),
    ],
)
def test_bad_requests_are_rejected(change, reason):
    result, _ = run(msgspec.structs.replace(gdas_job(regression_space()), **change))
    assert result.status == "rejected" and result.reason.startswith(reason), result.reason


def _with_body(source: str, k: int = 1) -> SlottedSpace:
    space = regression_space()
    alternatives = list(space.slots[0].alternatives)
    alternatives[k] = msgspec.structs.replace(alternatives[k], source=source)
    return msgspec.structs.replace(space, slots=(msgspec.structs.replace(space.slots[0], alternatives=tuple(alternatives)),))


def test_each_alternative_passes_the_gate():
    result, _ = run(gdas_job(_with_body(LINEAR.replace("return self.fc(x)", "return self.fc(torch.load(x))"))))
    assert result.status == "rejected"
    assert result.reason == "slot 'body' alternative 1: line 8: use of 'torch.load' is not allowed"


def test_broken_alternatives_are_rejected_with_their_slot():
    result, _ = run(gdas_job(_with_body(LINEAR.replace("return self.fc(x)", "return self.fc(x)[:, :4]"))))
    assert result.status == "rejected"
    assert result.reason == "slot 'body': alternative 1 outputs (8, 4) but alternative 0 outputs (8, 8)"
    result, _ = run(gdas_job(_with_body(LINEAR.replace("super().__init__()", "super().__init__()\n        1 / 0"))))
    assert result.status == "rejected"
    assert result.reason == "build (the supernet of every alternative) failed: ZeroDivisionError: division by zero"
    assert "<slot body alternative 1>" in result.traceback  # the alternative's own lines are quoted


def test_lazy_alternatives_search_too():
    lazy = LINEAR.replace("nn.Linear(8, 8, bias=False)", "nn.LazyLinear(8, bias=False)").replace(
        "        nn.init.zeros_(self.fc.weight)\n", "")
    result, _ = run(gdas_job(_with_body(lazy), gdas=GdasOptions(epochs=1)))
    assert result.status == "ok", (result.reason, result.traceback[-1500:])
    assert result.params == {0: 72, 1: 64, 2: 0}[result.choices[0]]  # the lazy map counted once initialised


def test_the_device_time_cap_stops_the_search():
    result, progress = run(gdas_job(regression_space(), time_cap_s=1e-4))
    assert result.status == "timeout" and "exceeded the cap of 0.0001 s during epoch 1" in result.reason
    assert progress == []


# ---------------------------------------------------------------- in a sandboxed worker


def _write_task(folder: Path) -> str:
    """A tiny task shaped like the docs/SPACES.md example: 3x16x16 images, 10 classes."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    files = []
    for split, n in (("train", 256), ("valid", 64), ("test", 64)):
        np.save(folder / f"{split}_x.npy", rng.standard_normal((n, 3, 16, 16)).astype(np.float32))
        np.save(folder / f"{split}_y.npy", rng.integers(0, 10, n))
        files += [f'{split}_x = "{split}_x.npy"', f'{split}_y = "{split}_y.npy"']
    toml = folder / "toy.toml"
    toml.write_text('name = "toy"\ninput_shape = [3, 16, 16]\noutput_shape = [10]\nloss = "cross_entropy"\n'
                    'metric = "error_pct"\n[files]\n' + "\n".join(files) + "\n")
    return str(toml)


@pytest.mark.timeout(300)
async def test_a_gdas_job_runs_in_the_sandbox(tmp_path):
    space = load_space(EXAMPLE)
    limits = Limits(memory_mb=1024, cpu_s=120, file_mb=8, wall_s=120, threads=1)
    job = Job(eval_id="gdas-sandbox", request="gdas", model_source=assemble(space, seed_configuration(space)),
              space=space, gdas=GdasOptions(epochs=2), time_cap_s=60.0)
    progress: list[dict] = []
    async with WorkerPool(_write_task(tmp_path / "task"), "cpu", spares=1, limits=limits,
                          scratch_root=tmp_path / "scratch") as pool:
        result = await pool.run(job, progress.append)
    assert result.status == "ok", (result.reason, result.traceback[-1500:])
    assert result.choices is not None and len(result.choices) == 2
    assert all(0 <= k < 3 for k in result.choices)
    assert [p["epoch"] for p in progress] == [1, 2] and all(len(p["choices"]) == 2 for p in progress)
    assert result.params and result.flops and result.weights_path == ""


@pytest.mark.timeout(300)
async def test_a_reused_worker_serves_the_new_kinds_without_retiring(tmp_path):
    """The GPU default (one process, many candidates) on CPU: gdas, equivalence and a capped validate
    leave the shared runtime as they found it (signal handler, timers, modules)."""
    space = load_space(EXAMPLE)
    seed_source = assemble(space, seed_configuration(space))
    limits = Limits(memory_mb=1024, cpu_s=120, file_mb=8, wall_s=120, threads=1)
    jobs = [
        Job(eval_id="r1", request="gdas", model_source=seed_source, space=space, gdas=GdasOptions(epochs=1)),
        Job(eval_id="r2", request="equivalence", model_source=seed_source, reference_source=seed_source,
            time_cap_s=30.0),
        Job(eval_id="r3", request="validate", model_source=seed_source, time_cap_s=30.0),
    ]
    async with WorkerPool(_write_task(tmp_path / "task"), "cpu", spares=1, limits=limits, fork=False,
                          jobs_per_worker=4, scratch_root=tmp_path / "scratch") as pool:
        results = [await pool.run(job, lambda p: None) for job in jobs]
    for result in results:
        assert result.status == "ok", (result.reason, result.traceback[-800:])
        assert not [w for w in result.warnings if "retired" in w or "changed" in w], result.warnings
    assert results[1].max_abs_diff == 0.0


# the slot's output is finite, but now and then (20% of forward passes, from the seeded global RNG)
# its gradient is NaN: 0 * sqrt(y * 0) is 0 forward and 0 / 0 backward
SOMETIMES_NAN_GRADIENT = SCAFFOLD.replace("        return self.body(x)\n", """        y = self.body(x)
        if torch.rand(()) < 0.2:
            return y + 0.0 * torch.sqrt(y * 0.0)
        return y
""")
ALWAYS_NAN_GRADIENT = SCAFFOLD.replace("return self.body(x)", "y = self.body(x)\n        return y + 0.0 * torch.sqrt(y * 0.0)")


def test_steps_with_a_non_finite_gradient_are_skipped_not_fatal():
    space = msgspec.structs.replace(regression_space(), scaffold_source=SOMETIMES_NAN_GRADIENT)
    result, _ = run(gdas_job(space))
    assert result.status == "ok", (result.reason, result.traceback[-1500:])
    assert result.choices == [1]  # still the clearly best alternative
    (warning,) = [w for w in result.warnings if "not finite" in w]
    assert "weight steps" in warning and "architecture steps skipped" in warning
    space = msgspec.structs.replace(regression_space(), scaffold_source=ALWAYS_NAN_GRADIENT)
    result, _ = run(gdas_job(space))
    assert result.status == "error" and result.epochs_done == 1
    assert result.reason.startswith("search failed: ") and "gradients were not finite" in result.reason
