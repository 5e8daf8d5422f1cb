"""Tasks: what a candidate model sees and how it is scored.

A task is a TaskSpec (shapes, loss, metric) plus its three splits as numpy
arrays. Two sources: built-in offline tasks generated deterministically from
scikit-learn's bundled 8x8 digits (small enough that a CPU trains an epoch in
about a second), and custom tasks described by a TOML file that points at .npy
files. Every problem with a custom task raises TaskError with one line naming
the file and the field. Arrays handed out are read-only: the built-ins are
cached and shared, and custom files are memory-mapped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

import msgspec
import numpy as np

from agentnas.trainer_daemon.metrics import GROUPED_METRICS

__all__ = ["BUILTIN_TASKS", "TaskData", "TaskError", "TaskSpec", "describe_task", "list_tasks", "load_task"]

Loss = Literal["cross_entropy", "bce_with_logits", "mse", "relative_l2", "masked_bce"]
Metric = Literal[
    "error_pct", "one_minus_map", "one_minus_auroc", "one_minus_macro_f1",
    "relative_l2", "mae8", "one_minus_pixel_auroc",
]
LOSSES: tuple[str, ...] = get_args(Loss)


class TaskError(ValueError):
    """A task that cannot be loaded; the message is one line naming file and field."""


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    input_shape: tuple[int, ...]  # per sample, channels first
    output_shape: tuple[int, ...]  # (num_classes,) or the full dense per-sample shape
    loss: Loss
    metric: Metric  # every metric is an error: lower is better
    blind: bool = False
    published_best: float | None = None
    description: str = ""


class TaskData(msgspec.Struct, kw_only=True):
    spec: TaskSpec
    train_x: np.ndarray
    train_y: np.ndarray
    valid_x: np.ndarray
    valid_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    valid_groups: np.ndarray | None = None  # e.g. record id per window, for grouped metrics
    test_groups: np.ndarray | None = None


# Which losses train for which metric; the loss is fixed by the task.
LOSSES_FOR_METRIC: dict[str, tuple[str, ...]] = {
    "error_pct": ("cross_entropy",),
    "one_minus_macro_f1": ("cross_entropy",),
    "one_minus_map": ("bce_with_logits",),
    "one_minus_auroc": ("bce_with_logits",),
    "relative_l2": ("relative_l2", "mse"),
    "mae8": ("mse", "relative_l2"),
    "one_minus_pixel_auroc": ("masked_bce", "bce_with_logits"),
}


def output_shape_problem(metric: str, shape: tuple[int, ...]) -> str | None:
    """Why `shape` cannot carry `metric`'s outputs, or None when it can."""
    if not shape or any(d < 1 for d in shape):
        return "must be a non-empty list of positive sizes"
    if metric in ("error_pct", "one_minus_macro_f1") and (len(shape) != 1 or shape[0] < 2):
        return f"metric {metric!r} needs [num_classes] with at least 2 classes"
    if metric in ("one_minus_map", "one_minus_auroc") and len(shape) != 1:
        return f"metric {metric!r} needs [num_labels]"
    if metric == "mae8":
        square = shape[-1] == shape[-2] if len(shape) >= 2 else False
        if not square or len(shape) not in (2, 3) or (len(shape) == 3 and shape[0] != 1):
            return "metric 'mae8' needs a distance map [1, L, L] or [L, L]"
    return None


# ---------------------------------------------------------------- built-in tasks

_POOL_SEED = 360  # the split of the 1797 digit images into train/valid/test pools
_POOL_FRACTIONS = (0.6, 0.2)  # train, valid; the rest is test
_WAVE_WINDOW, _WAVE_STRIDE = 64, 16


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 bundled 8x8 digit images scaled to [0, 1], and their labels."""
    from sklearn.datasets import load_digits  # local: importing tasks stays light

    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def _digit_pools(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint image indices for train/valid/test, stratified by digit, so test images are unseen."""
    rng = np.random.default_rng(_POOL_SEED)
    pools: tuple[list, list, list] = ([], [], [])
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        n_train = round(_POOL_FRACTIONS[0] * len(idx))
        n_valid = round(_POOL_FRACTIONS[1] * len(idx))
        for pool, part in zip(pools, np.split(idx, [n_train, n_train + n_valid])):
            pool.append(part)
    return tuple(np.sort(np.concatenate(p)) for p in pools)  # type: ignore[return-value]


def _stacked_digits(seed: int, combine: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
    """Three random digits of a pool as channels (3, 8, 8); the label combines their values."""
    images, labels = _digits()
    rng = np.random.default_rng(seed)
    pools = _digit_pools(labels)
    train_pixels = images[pools[0]]
    mean, std = train_pixels.mean(), train_pixels.std()
    arrays = {}
    for split, pool, n in zip(("train", "valid", "test"), pools, (6000, 1500, 1500)):
        picks = rng.choice(pool, size=(n, 3))
        arrays[f"{split}_x"] = ((images[picks] - mean) / std).astype(np.float32)
        arrays[f"{split}_y"] = combine(labels[picks]).astype(np.int64)
    return arrays


def _addigits() -> dict[str, np.ndarray]:
    return _stacked_digits(1, lambda d: d.sum(axis=1))


def _multdigits() -> dict[str, np.ndarray]:
    return _stacked_digits(2, lambda d: d.prod(axis=1) % 10)


def _wave_record(period: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One record: 2-3 periods of the digit's 64-sample trace, random phase and gain, noise, z-scored."""
    n_periods = int(rng.integers(2, 4))
    phase = int(rng.integers(0, period.size))
    signal = np.tile(period, n_periods + 1)[phase : phase + n_periods * period.size]
    signal = signal * rng.uniform(0.8, 1.2) + rng.normal(0.0, 0.1, signal.size)
    return (signal - signal.mean()) / signal.std()  # per record, as for ECG


def _digitwave() -> dict[str, np.ndarray]:
    images, labels = _digits()
    rng = np.random.default_rng(3)
    arrays = {}
    pools = _digit_pools(labels)
    for split, pool, n_records in zip(("train", "valid", "test"), pools, (1500, 300, 300)):
        xs, ys, groups = [], [], []
        for record, image in enumerate(rng.choice(pool, size=n_records)):
            signal = _wave_record(images[image].reshape(-1), rng)
            starts = range(0, signal.size - _WAVE_WINDOW + 1, _WAVE_STRIDE)
            xs.extend(signal[s : s + _WAVE_WINDOW] for s in starts)
            ys.extend([labels[image]] * len(starts))
            groups.extend([record] * len(starts))
        arrays[f"{split}_x"] = np.stack(xs)[:, None, :].astype(np.float32)
        arrays[f"{split}_y"] = np.array(ys, dtype=np.int64)
        if split != "train":
            arrays[f"{split}_groups"] = np.array(groups, dtype=np.int64)
    return arrays


def box_blur(images: np.ndarray) -> np.ndarray:
    """3x3 mean over the last two axes, edges padded by repetition."""
    pad = [(0, 0)] * (images.ndim - 2) + [(1, 1), (1, 1)]
    padded = np.pad(images, pad, mode="edge")
    h, w = images.shape[-2:]
    return sum(padded[..., i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def smooth_target(images: np.ndarray) -> np.ndarray:
    """digitsmooth's fixed operator: a box blur followed by a saturating nonlinearity."""
    return np.tanh(3.0 * box_blur(images))


def _digitsmooth() -> dict[str, np.ndarray]:
    images, labels = _digits()
    rng = np.random.default_rng(4)
    arrays = {}
    for split, pool, n in zip(("train", "valid", "test"), _digit_pools(labels), (4000, 1000, 1000)):
        x = images[rng.choice(pool, size=n)] * rng.uniform(0.6, 1.0, size=(n, 1, 1))
        # a random one of the 8 rotations/reflections per sample, for variety
        turns, flips = rng.integers(0, 4, size=n), rng.integers(0, 2, size=n)
        for k in range(4):
            x[turns == k] = np.rot90(x[turns == k], k, axes=(1, 2))
        x[flips == 1] = x[flips == 1, :, ::-1]
        arrays[f"{split}_x"] = x[:, None].astype(np.float32)
        arrays[f"{split}_y"] = smooth_target(x)[:, None].astype(np.float32)
    return arrays


_BUILTINS: dict[str, tuple[TaskSpec, Callable[[], dict[str, np.ndarray]]]] = {
    "addigits": (TaskSpec(
        name="addigits", input_shape=(3, 8, 8), output_shape=(28,),
        loss="cross_entropy", metric="error_pct",
        description=(
            "Each sample stacks three 8x8 handwritten digit images as the three channels; the "
            "label is the sum of the three digits, 0 to 27 (28 classes, far from balanced: the "
            "extreme sums are rare). A small offline mirror of Unseen NAS's AddNIST. Train, "
            "validation and test draw their images from disjoint pools of the digits, so test "
            "images are never seen in training. 6000/1500/1500 samples, standardised pixels."
        ),
    ), _addigits),
    "multdigits": (TaskSpec(
        name="multdigits", input_shape=(3, 8, 8), output_shape=(10,),
        loss="cross_entropy", metric="error_pct",
        description=(
            "Each sample stacks three 8x8 handwritten digit images as channels; the label is the "
            "product of the three digits modulo 10 (10 classes, dominated by 0 because any 0, or "
            "a 5 with an even digit, gives 0). A small offline mirror of Unseen NAS's MultNIST. "
            "Images for the three splits come from disjoint pools. 6000/1500/1500 samples."
        ),
    ), _multdigits),
    "digitwave": (TaskSpec(
        name="digitwave", input_shape=(1, 64), output_shape=(10,),
        loss="cross_entropy", metric="one_minus_macro_f1",
        description=(
            "1-D signal classification. A record repeats one digit image read row by row as a "
            "64-sample trace for 2-3 periods, starting at a random phase, with random gain and "
            "Gaussian noise, z-scored per record. Records are cut into overlapping 64-sample "
            "windows (stride 16); each window is a sample labelled with the digit (10 classes). "
            "Validation and test are scored per record: a majority vote of the window "
            "predictions, then 1 - macro F1 over classes. A small mirror of NAS-Bench-360's ECG."
        ),
    ), _digitwave),
    "digitsmooth": (TaskSpec(
        name="digitsmooth", input_shape=(1, 8, 8), output_shape=(1, 8, 8),
        loss="relative_l2", metric="relative_l2",
        description=(
            "Dense regression on an 8x8 grid: map a field to the response of a fixed, local, "
            "nonlinear operator (its form is not given). The input is a digit image in [0, 1], "
            "randomly rotated/reflected and dimmed; the target has the same shape. Scored by the "
            "mean over samples of the relative L2 error. A small mirror of NAS-Bench-360's Darcy "
            "Flow. 4000/1000/1000 samples."
        ),
    ), _digitsmooth),
}

BUILTIN_TASKS: tuple[str, ...] = tuple(_BUILTINS)


@functools.lru_cache(maxsize=None)
def _builtin_arrays(name: str) -> dict[str, np.ndarray]:
    arrays = _BUILTINS[name][1]()
    for array in arrays.values():
        array.flags.writeable = False  # shared through the cache
    return arrays


def list_tasks() -> list[TaskSpec]:
    """The built-in tasks' specs (no data is generated)."""
    return [spec for spec, _ in _BUILTINS.values()]


def describe_task(data: TaskData) -> str:
    """One line: samples per split, shapes, classes, loss and metric (what `agentnas tasks FILE` prints)."""
    spec = data.spec
    counts = ", ".join(f"{split} {len(getattr(data, f'{split}_x'))}" for split in ("train", "valid", "test"))
    output = "x".join(map(str, spec.output_shape))
    if spec.loss == "cross_entropy":
        output += f" ({spec.output_shape[0]} classes)"
    elif spec.metric in ("one_minus_map", "one_minus_auroc"):
        output += f" ({spec.output_shape[0]} binary labels)"
    line = (f"{counts} samples; input {'x'.join(map(str, spec.input_shape))}, output {output}; "
            f"loss {spec.loss}, metric {spec.metric}")
    return line + ("; groups in valid and test" if data.valid_groups is not None else "")


def load_task(ref: str) -> TaskData:
    """A built-in task by name, or a custom task from the path of its .toml file."""
    if ref in _BUILTINS:
        return TaskData(spec=_BUILTINS[ref][0], **_builtin_arrays(ref))
    path = Path(ref).expanduser()
    if path.is_file():
        return _load_task_file(path)
    if path.is_dir():
        raise TaskError(f"task {ref!r} is a folder, not a task .toml file")
    if path.suffix == ".toml" or len(path.parts) > 1:
        raise TaskError(f"no such task file {ref} (and not a built-in task: {', '.join(BUILTIN_TASKS)})")
    raise TaskError(
        f"unknown task {ref!r}: neither a built-in ({', '.join(BUILTIN_TASKS)}) "
        "nor a task .toml file"
    )


# ---------------------------------------------------------------- custom tasks (TOML)


class _TaskFiles(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    train_x: str
    train_y: str
    valid_x: str
    valid_y: str
    test_x: str
    test_y: str
    valid_groups: str | None = None
    test_groups: str | None = None


class _TaskFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str = ""
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    loss: str
    metric: str
    blind: bool = False
    published_best: float | None = None
    files: _TaskFiles


def _spec_from_file(where: str, raw: _TaskFile) -> TaskSpec:
    """Check the TOML's own fields (no data yet) and build the spec."""
    if not raw.name.strip():
        raise TaskError(f"{where}: name: must not be empty")
    if raw.metric not in LOSSES_FOR_METRIC:
        expected = ", ".join(LOSSES_FOR_METRIC)
        raise TaskError(f"{where}: metric: unknown {raw.metric!r}, expected one of {expected}")
    if raw.loss not in LOSSES:
        raise TaskError(f"{where}: loss: unknown {raw.loss!r}, expected one of {', '.join(LOSSES)}")
    if raw.loss not in LOSSES_FOR_METRIC[raw.metric]:
        allowed = " or ".join(LOSSES_FOR_METRIC[raw.metric])
        raise TaskError(
            f"{where}: loss: {raw.loss!r} does not suit metric {raw.metric!r}, expected {allowed}"
        )
    if not raw.input_shape or any(d < 1 for d in raw.input_shape):
        raise TaskError(
            f"{where}: input_shape: must be a non-empty list of positive sizes, "
            f"got {list(raw.input_shape)}"
        )
    problem = output_shape_problem(raw.metric, raw.output_shape)
    if problem:
        raise TaskError(f"{where}: output_shape: {list(raw.output_shape)} {problem}")
    if raw.published_best is not None and not np.isfinite(raw.published_best):
        raise TaskError(f"{where}: published_best: must be a finite number, got {raw.published_best}")
    if (raw.files.valid_groups is None) != (raw.files.test_groups is None):
        raise TaskError(f"{where}: files: valid_groups and test_groups must be given together")
    if raw.files.valid_groups is not None and raw.metric not in GROUPED_METRICS:
        raise TaskError(f"{where}: files.valid_groups: metric {raw.metric!r} does not use groups")
    fields = msgspec.structs.asdict(raw)
    del fields["files"]
    return msgspec.convert(fields, TaskSpec)


_NPY_MAGIC = b"\x93NUMPY"  # what numpy.save writes first


def _read_npy(where: str, base: Path, field: str, relative: str) -> np.ndarray:
    path = base / relative  # relative to the TOML's folder (an absolute path stays itself)
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
    except FileNotFoundError:
        raise TaskError(f"{where}: files.{field}: no such file {path}") from None
    except IsADirectoryError:
        raise TaskError(f"{where}: files.{field}: {path} is a folder, not a .npy file") from None
    except OSError as error:
        raise TaskError(f"{where}: files.{field}: cannot read {path} ({error.strerror})") from None
    if magic != _NPY_MAGIC:
        raise TaskError(f"{where}: files.{field}: {path} is not a .npy file (write arrays with numpy.save)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        message = str(error).replace("\n", " ")
        if "Python objects" in message or "pickle" in message:
            message = f"{path} holds Python objects, expected a numeric array"
        elif "mmap length" in message or isinstance(error, EOFError) or message.startswith("EOF"):
            message = f"{path} is shorter than its header says (truncated?)"
        else:
            message = f"cannot read {path} as .npy: {message}"
        raise TaskError(f"{where}: files.{field}: {message}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise TaskError(f"{where}: files.{field}: {path} must hold one real-valued .npy array")
    return array.astype(np.uint8) if array.dtype == bool else array


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _as_float32(where: str, field: str, array: np.ndarray, what: str) -> np.ndarray:
    """`array` as float32, or one line naming NaN/inf or values float32 cannot hold (never a numpy warning)."""
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not np.all(finite):
            kinds = " and ".join(k for k, bad in (("NaN", np.isnan(array).any()), ("inf", np.isinf(array).any())) if bad)
            raise TaskError(f"{where}: files.{field}: {what} contain {kinds}")
        largest = float(np.abs(array).max(initial=0.0))
        if largest > float(np.finfo(np.float32).max):
            raise TaskError(f"{where}: files.{field}: values up to {largest:.3g} overflow float32 "
                            f"(the trainer uses float32; rescale the {what})")
    with np.errstate(all="ignore"):
        return np.asarray(array, dtype=np.float32)


def _check_x(where: str, field: str, x: np.ndarray, spec: TaskSpec) -> np.ndarray:
    if x.ndim == 0 or x.shape[1:] != spec.input_shape or len(x) == 0:
        expected = ", ".join(map(str, spec.input_shape))
        raise TaskError(f"{where}: files.{field}: shape {x.shape}, expected (N >= 1, {expected})")
    return _readonly(_as_float32(where, field, x, "inputs"))


def _check_y(where: str, field: str, y: np.ndarray, n: int, spec: TaskSpec) -> np.ndarray:
    if y.ndim == 0 or len(y) != n:
        count = len(y) if y.ndim else "a scalar, not"
        raise TaskError(f"{where}: files.{field}: {count} targets for {n} inputs")
    if spec.loss == "cross_entropy":
        classes = spec.output_shape[0]
        if y.dtype.kind == "f" and y.ndim == 1 and not np.all(np.isfinite(y)):
            raise TaskError(f"{where}: files.{field}: labels contain NaN or inf, expected integer class ids")
        if y.ndim != 1 or np.any(y != np.round(y)):
            raise TaskError(
                f"{where}: files.{field}: shape {y.shape} dtype {y.dtype}, "
                f"expected integer class ids ({n},)"
            )
        if y.min() < 0 or y.max() >= classes:
            raise TaskError(
                f"{where}: files.{field}: class ids span [{y.min()}, {y.max()}], expected [0, {classes})"
            )
        return _readonly(np.asarray(y, dtype=np.int64))
    if y.shape[1:] != spec.output_shape:
        expected = ", ".join(map(str, spec.output_shape))
        raise TaskError(f"{where}: files.{field}: shape {y.shape}, expected ({n}, {expected})")
    y = _as_float32(where, field, y, "labels")
    allowed = {"bce_with_logits": (0, 1), "masked_bce": (-1, 0, 1)}.get(spec.loss)
    if allowed is not None and not np.all(np.isin(y, allowed)):
        raise TaskError(f"{where}: files.{field}: values must be in {allowed} for loss {spec.loss!r}")
    return _readonly(y)


def _check_groups(where: str, field: str, groups: np.ndarray, y: np.ndarray) -> np.ndarray:
    if groups.shape != (len(y),) or groups.dtype.kind not in "iu":
        raise TaskError(
            f"{where}: files.{field}: shape {groups.shape} dtype {groups.dtype}, "
            f"expected integer ids of shape ({len(y)},)"
        )
    groups = np.asarray(groups, dtype=np.int64)
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    if not np.array_equal(y[first][inverse.reshape(-1)], y):
        raise TaskError(f"{where}: files.{field}: samples of one group carry different targets")
    return _readonly(groups)


def _load_task_file(path: Path) -> TaskData:
    where = str(path)
    try:
        raw = msgspec.toml.decode(path.read_bytes(), type=_TaskFile)
    except (msgspec.DecodeError, OSError) as error:  # ValidationError is a DecodeError
        raise TaskError(f"{where}: {str(error).replace(chr(10), ' ')}") from None
    spec = _spec_from_file(where, raw)
    base, files = path.parent, raw.files
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "valid", "test"):
        x_field, y_field, groups_field = f"{split}_x", f"{split}_y", f"{split}_groups"
        x = _check_x(where, x_field, _read_npy(where, base, x_field, getattr(files, x_field)), spec)
        y = _read_npy(where, base, y_field, getattr(files, y_field))
        arrays[x_field], arrays[y_field] = x, _check_y(where, y_field, y, len(x), spec)
        groups_file = getattr(files, groups_field, None)  # train has no groups
        if groups_file is not None:
            groups = _read_npy(where, base, groups_field, groups_file)
            arrays[groups_field] = _check_groups(where, groups_field, groups, arrays[y_field])
    return TaskData(spec=spec, **arrays)
