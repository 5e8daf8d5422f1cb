"""What happens to a batch: targets on the device, the task's loss, and the recipe's
augmentations (mixup, cutmix, random erasing). Pure tensor functions the harness calls."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from agentnas.trainer_daemon.recipe import Recipe


def targets_for(y: np.ndarray, loss_name: str, output_shape: tuple[int, ...]) -> np.ndarray:
    """Dense targets shaped like the model's outputs; class ids stay (N,)."""
    if loss_name != "cross_entropy" and y.size == len(y) * math.prod(output_shape):
        return y.reshape(len(y), *output_shape)
    return y


def to_device(x: np.ndarray, y: np.ndarray, loss_name: str, output_shape: tuple[int, ...],
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # torch.tensor copies: task arrays may be read-only or memory-mapped
    tx = torch.tensor(np.asarray(x), dtype=torch.float32, device=device)
    dtype = torch.long if loss_name == "cross_entropy" else torch.float32
    return tx, torch.tensor(targets_for(np.asarray(y), loss_name, output_shape), dtype=dtype, device=device)


def task_loss(name: str, out: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    out = out.float()
    if name == "cross_entropy":
        return F.cross_entropy(out, y, label_smoothing=label_smoothing)
    if name == "bce_with_logits":
        return F.binary_cross_entropy_with_logits(out, y)
    if name == "mse":
        return F.mse_loss(out, y)
    if name == "relative_l2":
        error = (out - y).flatten(1).norm(dim=1)
        return (error / y.flatten(1).norm(dim=1).clamp_min(1e-12)).mean()
    if name == "masked_bce":
        keep = (y >= 0).float()  # negative targets mark ignored elements
        each = F.binary_cross_entropy_with_logits(out, y.clamp_min(0.0), reduction="none")
        return (each * keep).sum() / keep.sum().clamp_min(1.0)
    raise ValueError(f"unknown loss {name!r}")


def plan_augmentations(recipe: Recipe, loss_name: str, input_shape: tuple[int, ...]) -> tuple[list[str], list[str]]:
    """The recipe's augmentations this task supports, and a warning per dropped one."""
    spatial = len(input_shape) - 1  # channels first
    kept, warnings = [], []
    for name in recipe.augmentations:
        if name in ("mixup", "cutmix") and loss_name != "cross_entropy":
            warnings.append(f"augmentations: {name} needs a cross_entropy task, this one uses {loss_name}; dropped")
        elif name in ("cutmix", "random_erasing") and spatial < 2:
            warnings.append(f"augmentations: {name} needs inputs with 2 spatial dims, got {input_shape}; dropped")
        else:
            kept.append(name)
    return kept, warnings


def random_erase(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero one random rectangle (2-33% of the area, aspect 0.3-3.3) of the last two dims, per sample with prob p."""
    b, (h, w), dev = len(x), x.shape[-2:], x.device
    area = h * w * (0.02 + 0.31 * torch.rand(b, device=dev))
    aspect = torch.exp(math.log(0.3) + math.log(3.3 / 0.3) * torch.rand(b, device=dev))
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    top = (torch.rand(b, device=dev) * (h - eh + 1)).floor()
    left = (torch.rand(b, device=dev) * (w - ew + 1)).floor()
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & (torch.rand(b, device=dev) < p)[:, None, None]
    return x.masked_fill(mask.view(b, *[1] * (x.dim() - 3), h, w), 0.0)


def augment(x: torch.Tensor, y: torch.Tensor, augs: list[str], params: dict[str, float],
            rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Augmented batch, the partner targets of a mix (None if unmixed) and the mixing weight."""
    if "random_erasing" in augs:
        x = random_erase(x, params["random_erasing_p"])
    mixes = [name for name in ("mixup", "cutmix") if name in augs]
    if not mixes:
        return x, None, 1.0
    kind = mixes[int(rng.integers(len(mixes)))]  # one of the two per batch when both are on
    lam = float(rng.beta(params[f"{kind}_alpha"], params[f"{kind}_alpha"]))
    perm = torch.randperm(len(x), device=x.device)
    if kind == "mixup":
        return lam * x + (1.0 - lam) * x[perm], y[perm], lam
    h, w = x.shape[-2:]
    ch, cw = round(h * math.sqrt(1.0 - lam)), round(w * math.sqrt(1.0 - lam))
    top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    x = x.clone()
    x[..., top:top + ch, left:left + cw] = x[perm][..., top:top + ch, left:left + cw]
    return x, y[perm], 1.0 - ch * cw / (h * w)  # the weight of the pasted area actually used
