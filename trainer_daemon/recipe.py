"""Training recipes: the PROTOCOL.md whitelist, its normalisation, proxy scaling and lr schedule.

Pure functions, no torch: the planner side may import this to check a recipe
before it is sent. `normalise_recipe` never guesses silently. Each value it
drops, replaces or coerces yields a one-line warning naming the field. Only
a recipe that cannot be trained raises RecipeError: malformed JSON, a
non-finite or non-positive lr, epochs < 1 or batch_size < 1. The job is then
rejected.

Choices a user should know about:
- an unknown optimizer or scheduler falls back to the default (adamw, cosine),
  the closest to "some sensible decaying schedule" the author probably meant;
- warmup_epochs applies to every scheduler (linear ramp to lr); warmup_cosine
  without warmup_epochs gets one warmup epoch;
- a value that cannot be read (wrong type, out of range) is dropped and the
  default kept; numbers written as strings ("0.1") and integral floats for
  integer fields (10.0) are coerced.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import msgspec

__all__ = [
    "AUGMENTATIONS",
    "OPTIMIZERS",
    "SCHEDULERS",
    "Recipe",
    "RecipeError",
    "lr_at",
    "normalise_recipe",
    "proxy_recipe",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "step", "warmup_cosine", "plateau", "none")
AUGMENTATIONS = ("mixup", "cutmix", "random_erasing")

# scheduler parameter -> kind of value; "epochs*" kinds count epochs and are scaled for proxies
_SCHEDULER_PARAMS: dict[str, dict[str, str]] = {
    "cosine": {"T_max": "epochs", "eta_min": "nonneg"},
    "warmup_cosine": {"T_max": "epochs", "eta_min": "nonneg"},
    "step": {"step_size": "epochs", "gamma": "positive"},
    "plateau": {"patience": "epochs0", "factor": "fraction"},
    "none": {},
}
_TIME_PARAMS = ("T_max", "step_size", "patience")

# augmentation parameter -> default, filled in for each enabled augmentation
_AUG_PARAMS: dict[str, dict[str, float]] = {
    "mixup": {"mixup_alpha": 0.2},
    "cutmix": {"cutmix_alpha": 1.0},
    "random_erasing": {"random_erasing_p": 0.25},
}

# names an LLM commonly writes for a whitelisted field
_ALIASES = {
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "lr_scheduler": "scheduler",
    "grad_clip_norm": "grad_clip",
}


class RecipeError(ValueError):
    """A recipe that cannot be trained; the message is one line naming the field."""


class Recipe(msgspec.Struct, frozen=True, kw_only=True):
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam / adamw only
    scheduler: Literal["cosine", "step", "warmup_cosine", "plateau", "none"] = "cosine"
    # cosine/warmup_cosine: T_max (epochs), eta_min; step: step_size (epochs), gamma;
    # plateau: patience (epochs), factor. Missing ones take defaults at use.
    scheduler_params: dict[str, int | float] = {}
    warmup_epochs: int = 0
    batch_size: int = 128
    epochs: int = 10
    augmentations: tuple[str, ...] = ()
    augmentation_params: dict[str, float] = {}  # mixup_alpha, cutmix_alpha, random_erasing_p
    grad_clip: float | None = None  # max global grad norm
    label_smoothing: float = 0.0


# ---------------------------------------------------------------- value readers
# Each returns (value, warning or None); value None means "drop, keep the default".


def _read_float(field: str, raw: Any) -> tuple[float | None, str | None]:
    if isinstance(raw, bool):
        return None, f"{field}: expected a number, got a boolean; default kept"
    if isinstance(raw, (int, float)):
        return float(raw), None
    if isinstance(raw, str):
        try:
            return float(raw.strip()), f"{field}: string {raw!r} read as a number"
        except ValueError:
            pass
    return None, f"{field}: expected a number, got {raw!r}; default kept"


def _read_int(field: str, raw: Any) -> tuple[int | None, str | None]:
    value, warning = _read_float(field, raw)
    if value is None:
        return None, warning
    if not math.isfinite(value) or value != int(value):
        return None, f"{field}: expected an integer, got {raw!r}; default kept"
    if warning is None and isinstance(raw, float):
        warning = f"{field}: {raw!r} read as the integer {int(value)}"
    return int(value), warning


def _in_range(field: str, value: float | None, ok: bool, expected: str) -> tuple[Any, str | None]:
    if value is None or ok:
        return value, None
    return None, f"{field}: {value!r} is out of range ({expected}); default kept"


def _choice(field: str, raw: Any, allowed: tuple[str, ...], default: str) -> tuple[str, str | None]:
    if isinstance(raw, str) and raw.strip().lower() in allowed:
        return raw.strip().lower(), None
    if field == "scheduler" and raw is None:
        return "none", None
    return default, f"{field}: unknown value {raw!r} (allowed: {', '.join(allowed)}); using {default!r}"


# ---------------------------------------------------------------- normalisation


def _parse(raw: dict | str) -> dict:
    if isinstance(raw, dict):
        return dict(raw)
    if not isinstance(raw, str):
        raise RecipeError(f"recipe: expected a JSON object or text, got {type(raw).__name__}")
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RecipeError(
            f"recipe: malformed JSON at line {exc.lineno} column {exc.colno} (char {exc.pos}): {exc.msg}"
        ) from None
    if not isinstance(parsed, dict):
        raise RecipeError(f"recipe: expected a JSON object, got {type(parsed).__name__}")
    return parsed


def _scalar_field(name: str, raw: Any, warnings: list[str]) -> Any:
    """Read one scalar whitelist field; None = keep the default. Hard errors raise."""
    if name in ("lr", "weight_decay", "momentum", "label_smoothing", "grad_clip"):
        value, warning = _read_float(name, raw)
    else:  # warmup_epochs, batch_size, epochs
        value, warning = _read_int(name, raw)
    if warning:
        warnings.append(warning)
    if name == "lr" and value is not None and not (math.isfinite(value) and value > 0):
        raise RecipeError(f"recipe.lr: must be a finite number > 0, got {raw!r}")
    if name == "epochs" and value is not None and value < 1:
        raise RecipeError(f"recipe.epochs: must be >= 1, got {raw!r}")
    if name == "batch_size" and value is not None and value < 1:
        raise RecipeError(f"recipe.batch_size: must be >= 1, got {raw!r}")
    checks = {
        "weight_decay": (lambda v: 0 <= v < math.inf, ">= 0"),
        "momentum": (lambda v: 0 <= v < 1, "0 <= momentum < 1"),
        "label_smoothing": (lambda v: 0 <= v < 1, "0 <= label_smoothing < 1"),
        "warmup_epochs": (lambda v: v >= 0, ">= 0"),
    }
    if name in checks and value is not None:
        ok, expected = checks[name]
        value, warning = _in_range(name, value, ok(value), expected)
        if warning:
            warnings.append(warning)
    return value


def _grad_clip(raw: Any, warnings: list[str]) -> tuple[bool, float | None]:
    """(given, value): null, 0 or a negative value all mean no clipping."""
    if raw is None:
        return True, None
    value = _scalar_field("grad_clip", raw, warnings)
    if value is None:
        return False, None
    if not (math.isfinite(value) and value > 0):
        warnings.append(f"grad_clip: {raw!r} means no clipping")
        return True, None
    return True, value


def _betas(raw: Any, warnings: list[str]) -> tuple[float, float] | None:
    if not isinstance(raw, (list, tuple)) or len(raw) != 2:
        warnings.append(f"betas: expected two numbers, got {raw!r}; default kept")
        return None
    values = []
    for i, item in enumerate(raw):
        value, warning = _read_float(f"betas[{i}]", item)
        if warning:
            warnings.append(warning)
        if value is None or not 0 <= value < 1:
            warnings.append(f"betas: {raw!r} is not two numbers in [0, 1); default kept")
            return None
        values.append(value)
    return values[0], values[1]


def _scheduler_params(raw: Any, scheduler: str, warnings: list[str]) -> dict[str, int | float]:
    if not isinstance(raw, dict):
        warnings.append(f"scheduler_params: expected an object, got {raw!r}; dropped")
        return {}
    allowed = _SCHEDULER_PARAMS[scheduler]
    params: dict[str, int | float] = {}
    for key, item in raw.items():
        field = f"scheduler_params.{key}"
        if key not in allowed:
            warnings.append(f"{field}: not a parameter of scheduler {scheduler!r}; dropped")
            continue
        kind = allowed[key]
        if kind.startswith("epochs"):
            value, warning = _read_int(field, item)
            least = 0 if kind == "epochs0" else 1
            ok, expected = (value is not None and value >= least), f">= {least}"
        else:
            value, warning = _read_float(field, item)
            ok, expected = {
                "nonneg": (value is not None and 0 <= value < math.inf, ">= 0"),
                "positive": (value is not None and 0 < value < math.inf, "> 0"),
                "fraction": (value is not None and 0 < value < 1, "0 < factor < 1"),
            }[kind]
        if warning:
            warnings.append(warning)
        value, warning = _in_range(field, value, ok, expected)
        if warning:
            warnings.append(warning)
        if value is not None:
            params[key] = value
    return params


def _augmentations(raw: Any, warnings: list[str]) -> tuple[str, ...]:
    if isinstance(raw, str):
        warnings.append(f"augmentations: a single name {raw!r} read as a list")
        raw = [raw]
    if not isinstance(raw, (list, tuple)):
        warnings.append(f"augmentations: expected a list, got {raw!r}; dropped")
        return ()
    chosen: list[str] = []
    for item in raw:
        name = item.strip().lower() if isinstance(item, str) else item
        if name not in AUGMENTATIONS:
            warnings.append(f"augmentations: unknown {item!r} (allowed: {', '.join(AUGMENTATIONS)}); dropped")
        elif name not in chosen:
            chosen.append(name)
    return tuple(chosen)


def _augmentation_params(raw: Any, enabled: tuple[str, ...], warnings: list[str]) -> dict[str, float]:
    """Known parameters of the enabled augmentations, defaults filled in.

    Accepts flat keys (`mixup_alpha`) and nested ones (`{"mixup": {"alpha": 0.4}}`).
    """
    if not isinstance(raw, dict):
        warnings.append(f"augmentation_params: expected an object, got {raw!r}; dropped")
        raw = {}
    flat: dict[str, Any] = {}
    for key, item in raw.items():
        if key in _AUG_PARAMS and isinstance(item, dict):
            flat.update({f"{key}_{sub}": v for sub, v in item.items()})
        else:
            flat[key] = item
    params: dict[str, float] = {}
    for aug in enabled:
        params.update(_AUG_PARAMS[aug])
    for key, item in flat.items():
        field = f"augmentation_params.{key}"
        if key not in params:
            warnings.append(f"{field}: not a parameter of an enabled augmentation; dropped")
            continue
        value, warning = _read_float(field, item)
        if warning:
            warnings.append(warning)
        bound_ok = value is not None and (0 <= value <= 1 if key.endswith("_p") else 0 < value < math.inf)
        value, warning = _in_range(field, value, bound_ok, "0..1" if key.endswith("_p") else "> 0")
        if warning:
            warnings.append(warning)
        if value is not None:
            params[key] = value
    return params


def normalise_recipe(raw: dict | str | Recipe) -> tuple[Recipe, list[str]]:
    """The whitelisted recipe and one warning per dropped/replaced/coerced value."""
    if isinstance(raw, Recipe):
        return raw, []
    given = _parse(raw)
    warnings: list[str] = []
    for alias, name in _ALIASES.items():
        if alias in given and name not in given:
            given[name] = given.pop(alias)
            warnings.append(f"{alias}: read as {name}")
    fields: dict[str, Any] = {}
    known = set(Recipe.__struct_fields__)
    for key in list(given):
        if key not in known:
            warnings.append(f"{key}: not a recipe field (allowed: {', '.join(sorted(known))}); dropped")
            del given[key]
    if "optimizer" in given:
        fields["optimizer"], warning = _choice("optimizer", given["optimizer"], OPTIMIZERS, "adamw")
        warnings += [warning] if warning else []
    if "scheduler" in given:
        fields["scheduler"], warning = _choice("scheduler", given["scheduler"], SCHEDULERS, "cosine")
        warnings += [warning] if warning else []
    for name in ("lr", "weight_decay", "momentum", "label_smoothing", "warmup_epochs", "batch_size", "epochs"):
        if name in given:
            value = _scalar_field(name, given[name], warnings)
            if value is not None:
                fields[name] = value
    if "grad_clip" in given:
        present, value = _grad_clip(given["grad_clip"], warnings)
        if present:
            fields["grad_clip"] = value
    if "betas" in given and (betas := _betas(given["betas"], warnings)) is not None:
        fields["betas"] = betas
    scheduler = fields.get("scheduler", Recipe().scheduler)
    if "scheduler_params" in given:
        fields["scheduler_params"] = _scheduler_params(given["scheduler_params"], scheduler, warnings)
    if scheduler == "warmup_cosine" and "warmup_epochs" not in fields:
        fields["warmup_epochs"] = 1
    augs = _augmentations(given["augmentations"], warnings) if "augmentations" in given else ()
    fields["augmentations"] = augs
    fields["augmentation_params"] = _augmentation_params(given.get("augmentation_params", {}), augs, warnings)
    return Recipe(**fields), warnings


# ---------------------------------------------------------------- proxy and schedule


def _scale(value: float, fraction: float) -> int:
    # zero keeps its meaning ("no warmup", "react at once"); anything else floors at 1
    return 0 if value == 0 else max(1, round(fraction * value))


def proxy_recipe(recipe: Recipe, fraction: float = 0.3) -> Recipe:
    """The proxy-training recipe: epochs and every epoch-counted parameter scaled by `fraction`."""
    params = dict(recipe.scheduler_params)
    for key in _TIME_PARAMS:
        if key in params:
            params[key] = _scale(params[key], fraction)
    return msgspec.structs.replace(
        recipe,
        epochs=max(1, round(fraction * recipe.epochs)),
        warmup_epochs=_scale(recipe.warmup_epochs, fraction),
        scheduler_params=params,
    )


def lr_at(recipe: Recipe, epoch: int, step_in_epoch: int, steps_per_epoch: int) -> float:
    """Learning rate of one training step (epoch counted from 0).

    Linear warmup over warmup_epochs for every scheduler. Cosine decays per
    step from the end of warmup to eta_min at T_max epochs (default: the whole
    run) and stays there. Step multiplies by gamma every step_size epochs.
    Plateau (and none) give the base lr here; the harness applies plateau's
    own reductions on top.
    """
    steps_per_epoch = max(1, steps_per_epoch)
    step = epoch * steps_per_epoch + step_in_epoch
    warmup = recipe.warmup_epochs * steps_per_epoch
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    params = recipe.scheduler_params
    if recipe.scheduler in ("cosine", "warmup_cosine"):
        end = params.get("T_max", recipe.epochs) * steps_per_epoch
        progress = min(1.0, (step - warmup) / max(1, end - warmup))
        eta_min = params.get("eta_min", 0.0)
        return eta_min + (recipe.lr - eta_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if recipe.scheduler == "step":
        step_size = params.get("step_size", max(1, round(recipe.epochs / 3)))
        return recipe.lr * params.get("gamma", 0.1) ** (epoch // step_size)
    return recipe.lr
