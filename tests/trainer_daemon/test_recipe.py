"""Recipe normalisation, proxy scaling and the learning-rate schedule."""

from __future__ import annotations

import json
import math

import msgspec
import pytest

from agentnas.trainer_daemon.recipe import Recipe, RecipeError, lr_at, normalise_recipe, proxy_recipe


def _warned(warnings: list[str], field: str) -> bool:
    return any(w.startswith(field) for w in warnings)


# ---------------------------------------------------------------- normalisation


def test_empty_recipe_gives_defaults_without_warnings():
    for raw in ({}, "", "  ", "{}"):
        recipe, warnings = normalise_recipe(raw)
        assert recipe == Recipe()
        assert warnings == []
    assert Recipe().optimizer == "adamw" and Recipe().epochs == 10 and Recipe().batch_size == 128


def test_valid_recipe_is_kept_exactly():
    raw = {
        "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9,
        "scheduler": "step", "scheduler_params": {"step_size": 60, "gamma": 0.2},
        "warmup_epochs": 2, "batch_size": 64, "epochs": 200,
        "augmentations": ["cutmix"], "augmentation_params": {"cutmix_alpha": 0.5},
        "grad_clip": 5.0, "label_smoothing": 0.1,
    }
    recipe, warnings = normalise_recipe(raw)
    assert warnings == []
    assert recipe.optimizer == "sgd" and recipe.lr == 0.1 and recipe.weight_decay == 5e-4
    assert recipe.scheduler == "step" and recipe.scheduler_params == {"step_size": 60, "gamma": 0.2}
    assert (recipe.warmup_epochs, recipe.batch_size, recipe.epochs) == (2, 64, 200)
    assert recipe.augmentations == ("cutmix",) and recipe.augmentation_params == {"cutmix_alpha": 0.5}
    assert recipe.grad_clip == 5.0 and recipe.label_smoothing == 0.1
    # the same recipe as JSON text
    assert normalise_recipe(json.dumps(raw)) == (recipe, [])


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        ({"optimizer": "lion"}, "optimizer", {"optimizer": "adamw"}),
        ({"optimizer": 3}, "optimizer", {"optimizer": "adamw"}),
        ({"scheduler": "onecycle"}, "scheduler", {"scheduler": "cosine"}),
        ({"foo": 1}, "foo", {}),
        ({"lr": "0.1"}, "lr", {"lr": 0.1}),
        ({"epochs": 20.0}, "epochs", {"epochs": 20}),
        ({"epochs": "30"}, "epochs", {"epochs": 30}),
        ({"epochs": 2.5}, "epochs", {}),  # ambiguous: dropped, default kept
        ({"batch_size": True}, "batch_size", {}),
        ({"weight_decay": -1}, "weight_decay", {}),
        ({"momentum": 1.5}, "momentum", {}),
        ({"label_smoothing": "lots"}, "label_smoothing", {}),
        ({"betas": [0.9]}, "betas", {}),
        ({"augmentations": ["mixup", "autoaugment"]}, "augmentations",
         {"augmentations": ("mixup",), "augmentation_params": {"mixup_alpha": 0.2}}),
        ({"augmentations": "cutmix"}, "augmentations",
         {"augmentations": ("cutmix",), "augmentation_params": {"cutmix_alpha": 1.0}}),
        ({"scheduler_params": {"step_size": 3}}, "scheduler_params.step_size", {}),  # not cosine's
        ({"scheduler_params": {"T_max": 0}}, "scheduler_params.T_max", {}),
        ({"augmentation_params": {"mixup_alpha": 0.4}}, "augmentation_params.mixup_alpha", {}),
        ({"grad_clip": 0}, "grad_clip", {"grad_clip": None}),
        ({"learning_rate": 0.05}, "learning_rate", {"lr": 0.05}),
    ],
)
def test_bad_or_odd_fields_are_fixed_and_warned(raw, field, expected):
    recipe, warnings = normalise_recipe(raw)
    assert _warned(warnings, field), warnings
    assert all("\n" not in w for w in warnings)
    assert recipe == msgspec.structs.replace(Recipe(), **expected)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"lr": 0}, "recipe.lr"),
        ({"lr": -1}, "recipe.lr"),
        ({"lr": "nan"}, "recipe.lr"),
        ({"lr": float("inf")}, "recipe.lr"),
        ({"epochs": 0}, "recipe.epochs"),
        ({"epochs": -3}, "recipe.epochs"),
        ({"batch_size": 0}, "recipe.batch_size"),
    ],
)
def test_untrainable_values_are_rejected(raw, field):
    with pytest.raises(RecipeError, match=field):
        normalise_recipe(raw)


def test_malformed_json_is_rejected_with_position():
    with pytest.raises(RecipeError) as info:
        normalise_recipe('{"lr": 0.1,\n "epochs": }')
    message = str(info.value)
    assert "line 2 column 12" in message and "\n" not in message
    with pytest.raises(RecipeError, match="JSON object"):
        normalise_recipe("[1, 2]")


def test_nested_augmentation_params_and_defaults():
    recipe, warnings = normalise_recipe({
        "augmentations": ["mixup", "random_erasing", "mixup"],
        "augmentation_params": {"mixup": {"alpha": 0.4}},
    })
    assert warnings == []
    assert recipe.augmentations == ("mixup", "random_erasing")
    assert recipe.augmentation_params == {"mixup_alpha": 0.4, "random_erasing_p": 0.25}


def test_warmup_cosine_gets_one_warmup_epoch_and_null_scheduler_means_none():
    assert normalise_recipe({"scheduler": "warmup_cosine"})[0].warmup_epochs == 1
    assert normalise_recipe({"scheduler": "warmup_cosine", "warmup_epochs": 0})[0].warmup_epochs == 0
    assert normalise_recipe({"scheduler": None}) == (msgspec.structs.replace(Recipe(), scheduler="none"), [])


# ---------------------------------------------------------------- proxy


@pytest.mark.parametrize(("epochs", "proxy_epochs"), [(200, 60), (10, 3), (5, 2), (3, 1), (2, 1), (1, 1)])
def test_proxy_epochs(epochs, proxy_epochs):
    assert proxy_recipe(Recipe(epochs=epochs)).epochs == proxy_epochs


def test_proxy_scales_time_based_parameters():
    cosine = Recipe(epochs=200, warmup_epochs=5, scheduler="cosine", scheduler_params={"T_max": 200, "eta_min": 1e-4})
    proxy = proxy_recipe(cosine)
    assert (proxy.epochs, proxy.warmup_epochs) == (60, 2)  # round(1.5) = 2
    assert proxy.scheduler_params == {"T_max": 60, "eta_min": 1e-4}  # eta_min is not time-based
    step = proxy_recipe(Recipe(epochs=200, scheduler="step", scheduler_params={"step_size": 2, "gamma": 0.2}))
    assert step.scheduler_params == {"step_size": 1, "gamma": 0.2}  # round(0.6) = 1
    plateau = proxy_recipe(Recipe(scheduler="plateau", scheduler_params={"patience": 10, "factor": 0.5}))
    assert plateau.scheduler_params == {"patience": 3, "factor": 0.5}
    assert proxy_recipe(Recipe(warmup_epochs=1)).warmup_epochs == 1  # floored at 1
    assert proxy_recipe(Recipe(warmup_epochs=0)).warmup_epochs == 0
    # everything else is untouched, and the original is not modified
    assert proxy.lr == cosine.lr and cosine.scheduler_params["T_max"] == 200


# ---------------------------------------------------------------- learning rate


def test_lr_constant_for_none_and_plateau():
    for scheduler in ("none", "plateau"):
        recipe = Recipe(lr=0.3, scheduler=scheduler, epochs=4)
        assert {lr_at(recipe, e, s, 5) for e in range(4) for s in range(5)} == {0.3}


def test_lr_cosine_per_step_over_the_whole_run():
    recipe = Recipe(lr=1.0, scheduler="cosine", epochs=2)
    values = [lr_at(recipe, e, s, 4) for e in range(2) for s in range(4)]
    expected = [0.5 * (1 + math.cos(math.pi * t / 8)) for t in range(8)]
    assert values == pytest.approx(expected)
    assert values[0] == 1.0 and all(a > b for a, b in zip(values, values[1:]))


def test_lr_cosine_with_t_max_and_eta_min_holds_at_the_floor():
    recipe = Recipe(lr=1.0, scheduler="cosine", epochs=10, scheduler_params={"T_max": 2, "eta_min": 0.1})
    assert lr_at(recipe, 1, 0, 10) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(recipe, 2, 0, 10) == pytest.approx(0.1)
    assert lr_at(recipe, 9, 9, 10) == pytest.approx(0.1)


def test_lr_warmup_cosine():
    recipe = Recipe(lr=1.0, scheduler="warmup_cosine", warmup_epochs=1, epochs=3)
    # linear ramp over the first epoch's 4 steps, then cosine over the remaining 8
    assert [lr_at(recipe, 0, s, 4) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    after = [lr_at(recipe, e, s, 4) for e in (1, 2) for s in range(4)]
    assert after == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 8)) for t in range(8)])


def test_lr_step():
    recipe = Recipe(lr=0.1, scheduler="step", epochs=9, scheduler_params={"step_size": 3, "gamma": 0.5})
    assert [lr_at(recipe, e, 0, 7) for e in range(9)] == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 3)
    default = Recipe(lr=1.0, scheduler="step", epochs=9)  # step_size epochs/3, gamma 0.1
    assert [lr_at(default, e, 2, 7) for e in (0, 2, 3, 6, 8)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])
