"""Task metrics, each an error (lower is better), as BENCHMARKS.md defines them.

numpy only: this module is imported by light processes that must not pay for
torch or scikit-learn. `outputs` are a model's raw outputs (logits or
predictions) for a whole split, `targets` the labels. Every malformed input
(unknown name, shape mismatch, labels out of range, non-finite outputs, a
split on which the metric is undefined) raises ValueError with one line.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["METRICS", "compute_metric"]

# PSICOV's MAE8: only long-range pairs (|i - j| >= 24) in contact (<= 8 A) count.
MAE8_MIN_SEPARATION = 24
MAE8_MAX_DISTANCE = 8.0


# ---------------------------------------------------------------- helpers


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warnings for large negative logits
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _class_labels(targets: np.ndarray, n_classes: int) -> np.ndarray:
    """Integer class ids in [0, n_classes), shape (N,)."""
    if targets.ndim != 1:
        raise ValueError(f"class targets must be 1-D (N,), got shape {targets.shape}")
    if not np.issubdtype(targets.dtype, np.integer):
        if not np.all(np.isfinite(targets)) or np.any(targets != np.round(targets)):
            raise ValueError("class targets must be integers")
        targets = targets.astype(np.int64)
    if targets.size and (targets.min() < 0 or targets.max() >= n_classes):
        raise ValueError(
            f"class targets must lie in [0, {n_classes}), got [{targets.min()}, {targets.max()}]"
        )
    return targets.astype(np.int64, copy=False)


def _binary(targets: np.ndarray, what: str) -> np.ndarray:
    if not np.all((targets == 0) | (targets == 1)):
        raise ValueError(f"{what} must be 0 or 1")
    return targets.astype(bool)


def _group_index(groups: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(group index per sample, index of each group's first sample)."""
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {groups.shape}")
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    return inverse.reshape(-1), first


def _group_targets(targets: np.ndarray, inverse: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The label shared by all samples of each group; a group with mixed labels is an error."""
    per_group = targets[first]
    if not np.array_equal(per_group[inverse], targets):
        raise ValueError("samples of one group carry different targets")
    return per_group


def _average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the step precision-recall curve (sklearn's definition)."""
    order = np.argsort(-scores, kind="stable")
    scores, positives = scores[order], positives[order]
    tp = np.cumsum(positives)
    fp = np.cumsum(~positives)
    # a threshold admits a whole run of tied scores at once: keep each run's last index
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic with average ranks for ties."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based
    ranks = average_rank[inverse.reshape(-1)]
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _require_same_shape(outputs: np.ndarray, targets: np.ndarray) -> None:
    if outputs.shape != targets.shape:
        raise ValueError(f"outputs shape {outputs.shape} does not match targets shape {targets.shape}")


def _require_2d(outputs: np.ndarray, what: str) -> None:
    if outputs.ndim != 2:
        raise ValueError(f"{what} outputs must be 2-D (N, C), got shape {outputs.shape}")


# ---------------------------------------------------------------- metrics


def _error_pct(outputs: np.ndarray, targets: np.ndarray, groups: np.ndarray | None) -> float:
    _require_2d(outputs, "error_pct")
    labels = _class_labels(targets, outputs.shape[1])
    return float(100.0 - 100.0 * np.mean(outputs.argmax(axis=1) == labels))


def _one_minus_map(outputs: np.ndarray, targets: np.ndarray, groups: np.ndarray | None) -> float:
    _require_2d(outputs, "one_minus_map")
    _require_same_shape(outputs, targets)
    positives = _binary(targets, "one_minus_map targets")
    if groups is not None:
        # a clip's score is the mean of its chunks' logits
        inverse, first = _group_index(groups, len(outputs))
        sums = np.zeros((len(first), outputs.shape[1]))
        np.add.at(sums, inverse, outputs)
        outputs = sums / np.bincount(inverse)[:, None]
        positives = _group_targets(positives, inverse, first)
    scores = _sigmoid(outputs)
    kept = [c for c in range(positives.shape[1]) if positives[:, c].any()]
    if not kept:
        raise ValueError("one_minus_map is undefined: no class has a positive example")
    return 1.0 - float(np.mean([_average_precision(scores[:, c], positives[:, c]) for c in kept]))


def _one_minus_auroc(outputs: np.ndarray, targets: np.ndarray, groups: np.ndarray | None) -> float:
    _require_2d(outputs, "one_minus_auroc")
    _require_same_shape(outputs, targets)
    positives = _binary(targets, "one_minus_auroc targets")
    n = len(positives)
    kept = [c for c in range(positives.shape[1]) if 0 < positives[:, c].sum() < n]
    if not kept:
        raise ValueError("one_minus_auroc is undefined: every label has a single class present")
    return 1.0 - float(np.mean([_roc_auc(outputs[:, c], positives[:, c]) for c in kept]))


def _one_minus_macro_f1(outputs: np.ndarray, targets: np.ndarray, groups: np.ndarray | None) -> float:
    _require_2d(outputs, "one_minus_macro_f1")
    labels = _class_labels(targets, outputs.shape[1])
    predicted = outputs.argmax(axis=1)
    if groups is not None:
        # one vote per window; argmax breaks ties towards the lowest class
        inverse, first = _group_index(groups, len(outputs))
        votes = np.zeros((len(first), outputs.shape[1]), dtype=np.int64)
        np.add.at(votes, (inverse, predicted), 1)
        predicted = votes.argmax(axis=1)
        labels = _group_targets(labels, inverse, first)
    scores = []
    # classes seen in labels or predictions, as sklearn's macro average
    for c in np.union1d(labels, predicted):
        tp = np.sum((predicted == c) & (labels == c))
        fp = np.sum((predicted == c) & (labels != c))
        fn = np.sum((predicted != c) & (labels == c))
        scores.append(2.0 * tp / (2.0 * tp + fp + fn))
    return 1.0 - float(np.mean(scores))


def _relative_l2(outputs: np.ndarray, targets: np.ndarray, groups: np.ndarray | None) -> float:
    _require_same_shape(outputs, targets)
    if outputs.ndim < 2:
        raise ValueError(f"relative_l2 needs per-sample outputs (N, ...), got shape {outputs.shape}")
    diff = (outputs - targets).reshape(len(outputs), -1)
    scale = np.linalg.norm(targets.reshape(len(targets), -1), axis=1)
    if np.any(scale == 0) or not np.all(np.isfinite(scale)):
        raise ValueError("relative_l2 is undefined: a target has zero or non-finite norm")
    return float(np.mean(np.linalg.norm(diff, axis=1) / scale))


def _mae8(outputs: np.ndarray, targets: np.ndarray, groups: np.ndarray | None) -> float:
    _require_same_shape(outputs, targets)
    if targets.ndim == 4 and targets.shape[1] == 1:
        outputs, targets = outputs[:, 0], targets[:, 0]
    if targets.ndim != 3 or targets.shape[1] != targets.shape[2]:
        raise ValueError(
            f"mae8 needs square distance maps (N, 1, L, L) or (N, L, L), got {targets.shape}"
        )
    i, j = np.triu_indices(targets.shape[1], k=MAE8_MIN_SEPARATION)
    true, pred = targets[:, i, j], outputs[:, i, j]
    contact = true <= MAE8_MAX_DISTANCE  # a NaN (unknown) distance is never a contact
    counts = contact.sum(axis=1)
    errors = np.where(contact, np.abs(pred - np.where(contact, true, 0.0)), 0.0).sum(axis=1)
    has_pairs = counts > 0
    if not has_pairs.any():
        raise ValueError("mae8 is undefined: no sample has a long-range pair within 8")
    return float(np.mean(errors[has_pairs] / counts[has_pairs]))


def _one_minus_pixel_auroc(outputs: np.ndarray, targets: np.ndarray, groups: np.ndarray | None) -> float:
    _require_same_shape(outputs, targets)
    kept = targets >= 0  # -1 marks ignored pixels
    positives = _binary(targets[kept], "one_minus_pixel_auroc targets (other than -1)")
    predicted = outputs[kept] > 0.0  # sigmoid(z) > 0.5 exactly when z > 0
    n_pos = positives.sum()
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("one_minus_pixel_auroc is undefined: kept pixels hold a single class")
    tpr = np.sum(predicted & positives) / n_pos
    fpr = np.sum(predicted & ~positives) / n_neg
    return float(1.0 - (tpr + 1.0 - fpr) / 2.0)


_METRIC_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]] = {
    "error_pct": _error_pct,
    "one_minus_map": _one_minus_map,
    "one_minus_auroc": _one_minus_auroc,
    "one_minus_macro_f1": _one_minus_macro_f1,
    "relative_l2": _relative_l2,
    "mae8": _mae8,
    "one_minus_pixel_auroc": _one_minus_pixel_auroc,
}

METRICS: tuple[str, ...] = tuple(_METRIC_FUNCTIONS)

# metrics that read `groups`; the others ignore it
GROUPED_METRICS: frozenset[str] = frozenset({"one_minus_map", "one_minus_macro_f1"})


def compute_metric(
    name: str, outputs: np.ndarray, targets: np.ndarray, groups: np.ndarray | None = None
) -> float:
    """The error `name` of `outputs` against `targets`; lower is better."""
    function = _METRIC_FUNCTIONS.get(name)
    if function is None:
        raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(METRICS)}")
    outputs = np.asarray(outputs, dtype=np.float64)
    targets = np.asarray(targets)
    if outputs.ndim == 0 or len(outputs) == 0:
        raise ValueError(f"{name}: outputs are empty")
    if targets.ndim == 0 or len(targets) != len(outputs):
        raise ValueError(f"{name}: {len(outputs)} outputs but targets shape {targets.shape}")
    if not np.all(np.isfinite(outputs)):
        raise ValueError(f"{name}: outputs contain NaN or inf")
    return function(outputs, targets, groups)


def trivial_baseline(metric: str, loss: str, train_y: np.ndarray, test_y: np.ndarray,
                     output_shape: tuple[int, ...], test_groups: np.ndarray | None = None) -> float:
    """The test metric of a predictor that ignores its input and answers with the training
    split's statistics: the majority class for class labels, the per-output training mean
    (as probabilities for labels in {0, 1}) otherwise. A reference point for any result."""
    n = len(test_y)
    if loss == "cross_entropy":
        counts = np.bincount(np.asarray(train_y, dtype=np.int64).reshape(-1), minlength=output_shape[0])
        outputs = np.zeros((n, output_shape[0]), dtype=np.float64)
        outputs[:, int(np.argmax(counts))] = 1.0
        return compute_metric(metric, outputs, np.asarray(test_y), test_groups)
    train = np.asarray(train_y, dtype=np.float64).reshape(len(train_y), *output_shape)
    mean = train.mean(axis=0)
    if loss in ("bce_with_logits", "masked_bce"):
        p = np.clip(mean, 1e-6, 1 - 1e-6)
        mean = np.log(p / (1 - p))  # logits of the label frequencies
    outputs = np.broadcast_to(mean, (n, *output_shape)).copy()
    targets = np.asarray(test_y, dtype=np.float64).reshape(n, *output_shape)
    return compute_metric(metric, outputs, targets, test_groups)
