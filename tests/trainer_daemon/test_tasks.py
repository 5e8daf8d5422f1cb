"""Built-in digit tasks and custom TOML tasks."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import msgspec
import numpy as np
import pytest
from sklearn.datasets import load_digits

from agentnas.trainer_daemon import tasks
from agentnas.trainer_daemon.metrics import METRICS
from agentnas.trainer_daemon.tasks import (
    BUILTIN_TASKS,
    LOSSES_FOR_METRIC,
    TaskData,
    TaskError,
    TaskSpec,
    list_tasks,
    load_task,
    output_shape_problem,
)

SPLITS = ("train", "valid", "test")
ARRAY_FIELDS = (
    "train_x", "train_y", "valid_x", "valid_y", "test_x", "test_y", "valid_groups", "test_groups",
)


def _digest(data: TaskData) -> str:
    h = hashlib.sha256()
    for field in ARRAY_FIELDS:
        array = getattr(data, field)
        if array is not None:
            h.update(field.encode() + str(array.dtype).encode() + np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- built-ins


def test_names_agree_with_the_metrics_module():
    assert set(get_args(tasks.Metric)) == set(METRICS) == set(LOSSES_FOR_METRIC)
    assert {loss for losses in LOSSES_FOR_METRIC.values() for loss in losses} == set(tasks.LOSSES)


def test_builtin_names_and_specs():
    assert BUILTIN_TASKS == ("addigits", "multdigits", "digitwave", "digitsmooth")
    specs = list_tasks()
    assert [s.name for s in specs] == list(BUILTIN_TASKS)
    for spec in specs:
        assert spec.metric in METRICS
        assert spec.loss in LOSSES_FOR_METRIC[spec.metric]
        assert output_shape_problem(spec.metric, spec.output_shape) is None
        assert spec.published_best is None and len(spec.description) > 100


def test_generation_is_deterministic_within_and_across_processes():
    first = {name: _digest(load_task(name)) for name in BUILTIN_TASKS}
    tasks._builtin_arrays.cache_clear()  # regenerate from scratch
    assert {name: _digest(load_task(name)) for name in BUILTIN_TASKS} == first
    # a fresh interpreter (as each sandboxed worker is) must generate the same bytes
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_tasks import _digest, BUILTIN_TASKS, load_task\n"
        "print(' '.join(_digest(load_task(n)) for n in BUILTIN_TASKS))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [first[n] for n in BUILTIN_TASKS]


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_builtin_shapes_dtypes_and_ranges(name):
    data = load_task(name)
    spec = data.spec
    for split in SPLITS:
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        assert x.dtype == np.float32 and x.shape[1:] == spec.input_shape and len(x) > 100
        assert np.all(np.isfinite(x)) and not x.flags.writeable
        assert len(y) == len(x) and not y.flags.writeable
        if spec.loss == "cross_entropy":
            assert y.dtype == np.int64 and y.ndim == 1
            assert 0 <= y.min() and y.max() < spec.output_shape[0]
        else:
            assert y.dtype == np.float32 and y.shape[1:] == spec.output_shape
    if spec.loss == "cross_entropy":  # every class is seen in training
        assert set(np.unique(data.train_y)) == set(range(spec.output_shape[0]))
    grouped = spec.metric in ("one_minus_macro_f1", "one_minus_map")
    assert (data.valid_groups is not None) == grouped and (data.test_groups is not None) == grouped


def _channel_digits(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undo the pixel standardisation, then look every 8x8 channel up among the bundled digits.

    Returns (digit value, dataset index) per channel; fails if a channel is not a bundled image.
    """
    digits = load_digits()
    lookup = {img.astype(np.uint8).tobytes(): i for i, img in enumerate(digits.images)}
    levels = np.unique(x)
    step = np.min(np.diff(levels))  # one grey level (1/16) in standardised units
    grey = np.round((x - levels.min()) / step).astype(np.uint8)
    index = np.array([lookup[g.tobytes()] for g in grey.reshape(-1, 8, 8)]).reshape(x.shape[:2])
    return digits.target[index], index


@pytest.mark.parametrize(
    "name, combine",
    [("addigits", lambda d: d.sum(1)), ("multdigits", lambda d: d.prod(1) % 10)],
)
def test_stacked_digit_labels_and_disjoint_image_pools(name, combine):
    data = load_task(name)
    seen = {}
    for split in SPLITS:
        values, index = _channel_digits(getattr(data, f"{split}_x"))
        np.testing.assert_array_equal(getattr(data, f"{split}_y"), combine(values))
        seen[split] = set(index.ravel().tolist())
    assert not seen["train"] & seen["test"]
    assert not seen["train"] & seen["valid"]
    assert not seen["valid"] & seen["test"]


def test_digit_pools_partition_the_images_by_digit():
    labels = load_digits().target
    pools = tasks._digit_pools(labels)
    together = np.concatenate(pools)
    assert sorted(together.tolist()) == list(range(len(labels)))  # disjoint and complete
    for pool, fraction in zip(pools, (0.6, 0.2, 0.2)):
        counts = np.bincount(labels[pool], minlength=10)
        assert np.all(np.abs(counts - fraction * np.bincount(labels)) <= 1.5)


def test_digitwave_records_are_overlapping_windows_of_one_label():
    data = load_task("digitwave")
    assert data.train_x.shape[1:] == (1, 64)
    for split in ("valid", "test"):
        x, y = getattr(data, f"{split}_x")[:, 0], getattr(data, f"{split}_y")
        groups = getattr(data, f"{split}_groups")
        assert np.all(np.diff(groups) >= 0)  # a record's windows are consecutive
        for record in np.unique(groups)[:50]:
            windows = x[groups == record]
            assert len(windows) in (5, 9)  # 2 or 3 periods of 64 samples, stride 16
            assert len(set(y[groups == record].tolist())) == 1
            np.testing.assert_array_equal(windows[1:, :48], windows[:-1, 16:])  # they overlap by 48


def _loop_smooth(image: np.ndarray) -> np.ndarray:
    out = np.zeros_like(image, dtype=np.float64)
    h, w = image.shape
    for i in range(h):
        for j in range(w):
            total = 0.0
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    total += image[min(max(i + di, 0), h - 1), min(max(j + dj, 0), w - 1)]
            out[i, j] = np.tanh(3.0 * total / 9.0)
    return out


def test_digitsmooth_target_is_the_fixed_operator():
    data = load_task("digitsmooth")
    assert 0.0 <= data.train_x.min() and data.train_x.max() <= 1.0
    for i in range(0, 1000, 97):
        expected = _loop_smooth(data.test_x[i, 0].astype(np.float64))
        np.testing.assert_allclose(data.test_y[i, 0], expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.linalg.norm(data.train_y.reshape(len(data.train_y), -1), axis=1) > 0)


def test_unknown_task_name():
    with pytest.raises(TaskError, match="unknown task 'cifar10'.*addigits"):
        load_task("cifar10")


# ---------------------------------------------------------------- custom TOML tasks


def _good_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays = {}
    for split, n in zip(SPLITS, (20, 8, 6)):
        arrays[f"{split}_x"] = rng.normal(size=(n, 2, 4, 4))  # float64 on disk
        arrays[f"{split}_y"] = rng.integers(0, 3, size=n).astype(np.int32)
    arrays["valid_y"][:4] = arrays["valid_y"][0]  # the first group shares a label
    arrays["test_y"][:2] = arrays["test_y"][0]
    arrays["valid_groups"] = np.array([0, 0, 0, 0, 1, 2, 3, 4])
    arrays["test_groups"] = np.array([7, 7, 8, 9, 10, 11])
    return arrays


GOOD_TOML = {
    "name": '"mytask"',
    "description": '"records of three kinds"',
    "input_shape": "[2, 4, 4]",
    "output_shape": "[3]",
    "loss": '"cross_entropy"',
    "metric": '"one_minus_macro_f1"',
    "blind": "true",
    "published_best": "12",
}


def _write_task(tmp_path, fields=None, arrays=None, drop=(), extra_files="") -> str:
    """A custom task in tmp_path/task (npy files in a data/ subfolder); returns the TOML path."""
    folder = tmp_path / "task"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    arrays = _good_arrays(np.random.default_rng(0)) if arrays is None else arrays
    lines = [f"{k} = {v}" for k, v in {**GOOD_TOML, **(fields or {})}.items() if k not in drop]
    lines.append("[files]")
    for field, array in arrays.items():
        if isinstance(array, np.ndarray):
            np.save(folder / "data" / f"{field}.npy", array)
        lines.append(f'{field} = "data/{field}.npy"')
    path = folder / "task.toml"
    path.write_text("\n".join(lines) + "\n" + extra_files)
    return str(path)


def test_custom_task_round_trip(tmp_path, monkeypatch):
    arrays = _good_arrays(np.random.default_rng(0))
    path = _write_task(tmp_path, arrays=arrays)
    monkeypatch.chdir(tmp_path)  # file paths are relative to the TOML, not the cwd
    data = load_task(path)
    assert data.spec == TaskSpec(
        name="mytask", input_shape=(2, 4, 4), output_shape=(3,), loss="cross_entropy",
        metric="one_minus_macro_f1", blind=True, published_best=12.0,
        description="records of three kinds",
    )
    for field, array in arrays.items():
        loaded = getattr(data, field)
        expected = array.astype(np.float32) if field.endswith("_x") else array
        np.testing.assert_array_equal(loaded, expected)
        assert not loaded.flags.writeable
    assert data.train_x.dtype == np.float32 and data.train_y.dtype == np.int64
    assert data.valid_groups.dtype == np.int64


def test_custom_dense_task_with_optional_fields_left_out(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in zip(SPLITS, (5, 3, 3)):
        arrays[f"{split}_x"] = rng.normal(size=(n, 1, 6, 6)).astype(np.float32)
        arrays[f"{split}_y"] = rng.choice([-1, 0, 1], size=(n, 1, 6, 6)).astype(np.int8)
    fields = {"loss": '"masked_bce"', "metric": '"one_minus_pixel_auroc"', "input_shape": "[1, 6, 6]",
              "output_shape": "[1, 6, 6]"}
    path = _write_task(tmp_path, fields, arrays, drop=("blind", "published_best", "description"))
    data = load_task(path)
    assert data.spec.blind is False and data.spec.published_best is None and data.spec.description == ""
    assert data.test_y.dtype == np.float32 and data.valid_groups is None
    np.testing.assert_array_equal(data.test_y, arrays["test_y"])


def _with(**changes):
    def make():
        arrays = _good_arrays(np.random.default_rng(0))
        arrays.update(changes)
        return arrays
    return make


BAD_CASES = [
    # (case id, toml fields, arrays factory, extra [files] text, text the message must contain)
    ("unknown key", {"colour": '"red"'}, None, "", "unknown field `colour`"),
    ("unknown files key", {}, None, 'extra = "x.npy"\n', "unknown field `extra` - at `$.files`"),
    ("wrong type", {"input_shape": '"2x4x4"'}, None, "", "$.input_shape"),
    ("wrong type inside", {"blind": '"yes"'}, None, "", "$.blind"),
    ("missing name", {"name": None}, None, "", "missing required field `name`"),
    ("empty name", {"name": '" "'}, None, "", "name: must not be empty"),
    ("unknown loss", {"loss": '"hinge"'}, None, "", "loss: unknown 'hinge'"),
    ("unknown metric", {"metric": '"accuracy"'}, None, "", "metric: unknown 'accuracy'"),
    ("loss vs metric", {"loss": '"mse"'}, None, "", "loss: 'mse' does not suit metric"),
    ("bad input_shape", {"input_shape": "[2, 0, 4]"}, None, "", "input_shape: must be"),
    ("output_shape vs metric", {"output_shape": "[3, 2]"}, None, "", "output_shape: [3, 2] metric"),
    ("one class", {"output_shape": "[1]"}, None, "", "at least 2 classes"),
    ("published_best nan", {"published_best": "nan"}, None, "", "published_best: must be a finite"),
    ("x shape", {}, _with(valid_x=np.zeros((8, 2, 4, 5))), "", "files.valid_x: shape (8, 2, 4, 5)"),
    ("x empty", {}, _with(test_x=np.zeros((0, 2, 4, 4)), test_y=np.zeros(0, int)), "", "files.test_x"),
    ("x nan", {}, _with(train_x=np.full((20, 2, 4, 4), np.nan)), "", "files.train_x: inputs contain NaN"),
    ("y length", {}, _with(train_y=np.zeros(19, int)), "", "files.train_y: 19 targets for 20 inputs"),
    ("y scalar", {}, _with(valid_y=np.array(1)), "", "files.valid_y: a scalar, not targets for 8"),
    ("y range", {}, _with(train_y=np.full(20, 3)), "", "files.train_y: class ids span [3, 3]"),
    ("y fractional", {}, _with(train_y=np.full(20, 0.5)), "",
     "files.train_y: shape (20,) dtype float64"),
    ("y 2-D", {}, _with(train_y=np.zeros((20, 3))), "", "expected integer class ids"),
    ("groups with lonely valid", {}, _with(test_groups=None), "", "files: valid_groups and test_groups"),
    ("groups length", {}, _with(test_groups=np.arange(5)), "", "files.test_groups: shape (5,)"),
    ("groups dtype", {}, _with(test_groups=np.arange(6.0)), "",
     "files.test_groups: shape (6,) dtype float64"),
    ("groups mixed labels", {}, _with(valid_groups=np.zeros(8, int)), "",
     "files.valid_groups: samples of one group"),
    ("groups unused", {"metric": '"error_pct"'}, None, "",
     "files.valid_groups: metric 'error_pct' does not use"),
    ("object npy", {}, _with(train_y=np.array([{"a": 1}] * 20, dtype=object)), "",
     "files.train_y: "),
    ("complex npy", {}, _with(train_x=np.zeros((20, 2, 4, 4), complex)), "", "files.train_x: "),
]


@pytest.mark.parametrize(
    "case, fields, make_arrays, extra, expected", BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_bad_custom_task_is_one_line_naming_file_and_field(
    tmp_path, case, fields, make_arrays, extra, expected
):
    drop = tuple(k for k, v in fields.items() if v is None)
    fields = {k: v for k, v in fields.items() if v is not None}
    arrays = make_arrays() if make_arrays else None
    if arrays is not None:
        arrays = {k: v for k, v in arrays.items() if v is not None}
    path = _write_task(tmp_path, fields, arrays, drop=drop, extra_files=extra)
    with pytest.raises(TaskError) as caught:
        load_task(path)
    message = str(caught.value)
    assert message.startswith(path + ": ") and "\n" not in message
    assert expected in message


def test_missing_and_unreadable_npy_files(tmp_path):
    path = _write_task(tmp_path)
    data_dir = tmp_path / "task" / "data"
    (data_dir / "valid_y.npy").write_text("this is not an npy file")
    with pytest.raises(TaskError, match=r"files\.valid_y: .*valid_y\.npy is not a \.npy file"):
        load_task(path)
    np.save(data_dir / "valid_y.npy", np.zeros(8, np.int64))
    (data_dir / "valid_y.npy").write_bytes((data_dir / "valid_y.npy").read_bytes()[:-10])
    with pytest.raises(TaskError, match=r"files\.valid_y: .*valid_y\.npy is shorter than its header says"):
        load_task(path)
    (data_dir / "valid_y.npy").unlink()
    (data_dir / "valid_y.npy").mkdir()
    with pytest.raises(TaskError, match=r"files\.valid_y: .*valid_y\.npy is a folder"):
        load_task(path)
    (data_dir / "train_x.npy").unlink()
    with pytest.raises(TaskError, match=r"files\.train_x: no such file .*train_x\.npy"):
        load_task(path)


def test_toml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\ninput_shape = [3,\n')
    with pytest.raises(TaskError) as caught:
        load_task(str(path))
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_task_error_is_a_value_error():
    assert issubclass(TaskError, ValueError)


@pytest.mark.parametrize(
    "metric, shape, ok",
    [("error_pct", (10,), True), ("error_pct", (1,), False), ("one_minus_map", (200,), True),
     ("one_minus_auroc", (2, 3), False), ("mae8", (1, 64, 64), True), ("mae8", (64, 64), True),
     ("mae8", (2, 64, 64), False), ("mae8", (1, 64, 32), False), ("mae8", (64,), False),
     ("relative_l2", (1, 85, 85), True), ("one_minus_pixel_auroc", (1, 128, 128), True),
     ("relative_l2", (), False), ("relative_l2", (0, 3), False)],
)
def test_output_shape_rules(metric, shape, ok):
    assert (output_shape_problem(metric, shape) is None) == ok


# ---------------------------------------------------------------- misleading messages (issue 10)


def test_text_file_named_npy_is_not_a_npy_file(tmp_path):
    path = _write_task(tmp_path)
    (tmp_path / "task" / "data" / "train_y.npy").write_text("0 1 2 0 1 2\n")
    with pytest.raises(TaskError) as caught:
        load_task(path)
    assert "files.train_y:" in str(caught.value) and "is not a .npy file" in str(caught.value)
    assert "pickle" not in str(caught.value)


def test_pickled_objects_are_named_as_such(tmp_path):
    path = _write_task(tmp_path, arrays=_with(train_y=np.array([{"a": 1}] * 20, dtype=object))())
    with pytest.raises(TaskError, match=r"files\.train_y: .* holds Python objects, expected a numeric array"):
        load_task(path)


@pytest.mark.parametrize("fields, field, value", [
    ({}, "train_y", lambda a: np.where(np.arange(20) == 3, np.nan, a.astype(float))),
    ({"loss": '"mse"', "metric": '"relative_l2"', "output_shape": "[3]"}, "valid_y", None),
])
def test_nan_in_labels_says_nan(tmp_path, fields, field, value):
    arrays = _good_arrays(np.random.default_rng(0))
    del arrays["valid_groups"], arrays["test_groups"]
    fields = {"metric": '"error_pct"', **fields}
    if value is None:  # regression targets
        for split, n in zip(SPLITS, (20, 8, 6)):
            arrays[f"{split}_y"] = np.ones((n, 3))
        arrays[field][2, 1] = np.nan
    else:
        arrays[field] = value(arrays[field])
    path = _write_task(tmp_path, fields, arrays)
    with pytest.raises(TaskError) as caught:
        load_task(path)
    assert f"files.{field}: labels contain NaN" in str(caught.value)
    assert "dtype" not in str(caught.value)


@pytest.mark.parametrize("field", ["train_x", "test_x"])
def test_inputs_that_overflow_float32_are_named_without_warnings(tmp_path, field):
    arrays = _good_arrays(np.random.default_rng(0))
    arrays[field] = arrays[field] * 1e300
    path = _write_task(tmp_path, arrays=arrays)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning would fail here
        with pytest.raises(TaskError) as caught:
            load_task(path)
    assert f"files.{field}: values up to" in str(caught.value) and "overflow float32" in str(caught.value)


def test_overflowing_inputs_print_no_warning_in_a_fresh_process(tmp_path):
    arrays = _good_arrays(np.random.default_rng(0))
    arrays["train_x"] = arrays["train_x"] * 1e300
    path = _write_task(tmp_path, arrays=arrays)
    script = ("from agentnas.trainer_daemon.tasks import load_task, TaskError\n"
              f"try:\n    load_task({path!r})\nexcept TaskError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stderr == "" and "overflow float32" in out.stdout


def test_relative_task_file_and_paths_relative_to_its_folder(tmp_path, monkeypatch):
    _write_task(tmp_path)
    monkeypatch.chdir(tmp_path)
    data = load_task("task/task.toml")
    assert data.spec.name == "mytask" and len(data.train_x) == 20
    monkeypatch.chdir(tmp_path / "task" / "data")
    assert load_task("../task.toml").spec.name == "mytask"


def test_task_reference_that_is_a_folder_or_a_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds").mkdir()
    with pytest.raises(TaskError, match=r"^task 'ds' is a folder, not a task \.toml file"):
        load_task("ds")
    with pytest.raises(TaskError, match=r"^no such task file ds/cls\.toml"):
        load_task("ds/cls.toml")
    with pytest.raises(TaskError, match=r"^unknown task 'my task': neither a built-in"):
        load_task("my task")


def test_describe_task_counts_shapes_classes(tmp_path):
    data = load_task(_write_task(tmp_path))
    assert tasks.describe_task(data) == (
        "train 20, valid 8, test 6 samples; input 2x4x4, output 3 (3 classes); "
        "loss cross_entropy, metric one_minus_macro_f1; groups in valid and test"
    )
    dense = tasks.describe_task(load_task("digitsmooth"))
    assert dense.startswith("train 4000, valid 1000, test 1000 samples; input 1x8x8, output 1x8x8; loss relative_l2")


# ---------------------------------------------------------------- docs/DATASETS.md stays true

DATASETS_DOC = Path(__file__).resolve().parents[2] / "docs" / "DATASETS.md"


def _doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DATASETS_DOC.read_text(), flags=re.S)


def test_datasets_doc_names_every_key_loss_and_metric():
    doc = DATASETS_DOC.read_text()
    keys = [f.name for f in msgspec.structs.fields(tasks._TaskFile) if f.name != "files"]
    keys += [f"files.{f.name}" for f in msgspec.structs.fields(tasks._TaskFiles)]
    for name in keys + list(LOSSES_FOR_METRIC) + list(tasks.LOSSES):
        assert f"`{name.split('.')[-1]}`" in doc or f"`{name}`" in doc, name
    for metric, losses in LOSSES_FOR_METRIC.items():  # the metrics table pairs each metric with its losses
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{metric}` |"))
        assert row.rstrip(" |").endswith(", ".join(f"`{loss}`" for loss in losses)), row
    template = _doc_blocks("toml")[0]  # the annotated template decodes and passes the spec checks
    spec = tasks._spec_from_file("template", msgspec.toml.decode(template, type=tasks._TaskFile))
    assert spec.name == "where_square"


def test_datasets_doc_example_runs_as_written(tmp_path):
    from tests.conftest import run_cli

    files = {}
    for language in ("python", "toml"):
        for block in _doc_blocks(language):
            first = block.splitlines()[0]
            if first.startswith("# file: "):
                files[first.removeprefix("# file: ").strip()] = block
    assert set(files) == {"make_my_task.py", "my_task.toml", "model.py"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (commands,) = [b for b in _doc_blocks("bash") if "python make_my_task.py" in b]
    lines = [line.split("#")[0].strip() for line in commands.splitlines() if line.strip()]
    assert lines == ["python make_my_task.py", "agentnas tasks my_task.toml",
                     "agentnas check-model model.py --task my_task.toml", "agentnas run my_task.toml --llm none"]
    made = subprocess.run([sys.executable, "make_my_task.py"], cwd=tmp_path, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    env = {"AGENTNAS_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    listed = run_cli("tasks", "my_task.toml", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    (shown,) = [b for b in _doc_blocks("text") if b.startswith("ok  my_task.toml")]
    assert listed.stdout == shown  # the doc shows exactly what the command prints
    checked = run_cli("check-model", "model.py", "--task", "my_task.toml", cwd=tmp_path, env=env, timeout=180)
    assert checked.returncode == 0 and checked.stdout.startswith("ok"), checked.stdout + checked.stderr
    # `agentnas run` is the search itself (minutes); its start-up path for a task file is tested in tests/ops
