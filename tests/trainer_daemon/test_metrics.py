"""Each metric against an independent computation (sklearn or a plain loop)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from agentnas.trainer_daemon.metrics import METRICS, compute_metric


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def test_metric_names_match_the_shared_interface():
    assert set(METRICS) == {
        "error_pct", "one_minus_map", "one_minus_auroc", "one_minus_macro_f1",
        "relative_l2", "mae8", "one_minus_pixel_auroc",
    }


def test_unknown_metric_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="unknown metric 'accuracy'.*error_pct"):
        compute_metric("accuracy", np.zeros((2, 2)), np.zeros(2, dtype=int))


@pytest.mark.parametrize("name", ["error_pct", "relative_l2", "one_minus_pixel_auroc"])
def test_non_finite_outputs_are_rejected(name):
    outputs = np.ones((4, 3))
    outputs[1, 2] = np.nan
    targets = np.ones((4, 3)) if name != "error_pct" else np.zeros(4, dtype=int)
    with pytest.raises(ValueError, match="NaN or inf"):
        compute_metric(name, outputs, targets)


def test_length_mismatch_is_rejected():
    with pytest.raises(ValueError, match="outputs but targets"):
        compute_metric("error_pct", np.zeros((5, 3)), np.zeros(4, dtype=int))


# ---------------------------------------------------------------- error_pct


def test_error_pct_matches_sklearn_accuracy():
    rng = _rng(1)
    logits = rng.normal(size=(500, 7))
    labels = rng.integers(0, 7, size=500)
    expected = 100.0 * (1.0 - accuracy_score(labels, logits.argmax(1)))
    assert compute_metric("error_pct", logits, labels) == pytest.approx(expected)


def test_error_pct_perfect_and_all_wrong():
    labels = np.array([0, 1, 2, 1])
    logits = np.eye(3)[labels]
    assert compute_metric("error_pct", logits, labels) == 0.0
    assert compute_metric("error_pct", -logits, labels) == 100.0
    # integer-valued float labels are accepted
    assert compute_metric("error_pct", logits, labels.astype(np.float32)) == 0.0


@pytest.mark.parametrize(
    "logits, labels, message",
    [
        (np.zeros((3, 2)), np.array([0, 1, 2]), r"\[0, 2\)"),
        (np.zeros((3, 2)), np.array([0, -1, 1]), r"\[0, 2\)"),
        (np.zeros((3, 2)), np.array([0.0, 0.5, 1.0]), "integers"),
        (np.zeros((3, 2)), np.zeros((3, 2)), "1-D"),
        (np.zeros(3), np.zeros(3, dtype=int), "2-D"),
    ],
)
def test_error_pct_bad_inputs(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        compute_metric("error_pct", logits, labels)


# ---------------------------------------------------------------- one_minus_map


def _sklearn_map(logits: np.ndarray, targets: np.ndarray) -> float:
    probs = _sigmoid(logits)
    aps = [
        average_precision_score(targets[:, c], probs[:, c])
        for c in range(targets.shape[1]) if targets[:, c].any()
    ]
    return 1.0 - float(np.mean(aps))


def test_map_matches_sklearn_with_ties_and_a_class_never_positive():
    rng = _rng(2)
    logits = np.round(rng.normal(size=(300, 6)), 1)  # rounding makes many ties
    targets = (rng.random((300, 6)) < 0.2).astype(np.float32)
    targets[:, 4] = 0  # never positive: skipped, not counted as zero
    expected = _sklearn_map(logits, targets)
    assert compute_metric("one_minus_map", logits, targets) == pytest.approx(expected, abs=1e-12)


def test_map_groups_average_chunk_logits_per_clip():
    rng = _rng(3)
    n_clips, n_classes = 60, 5
    clip_targets = (rng.random((n_clips, n_classes)) < 0.3).astype(np.float32)
    clip_targets[0] = 1  # every class has a positive
    chunks = rng.integers(1, 5, size=n_clips)
    groups = np.repeat(np.arange(n_clips) * 7 + 3, chunks)  # ids need not be 0..G-1
    order = rng.permutation(len(groups))  # chunks of a clip need not be adjacent
    groups = groups[order]
    logits = rng.normal(size=(len(groups), n_classes))
    targets = clip_targets[(groups - 3) // 7]
    # independent: loop over clips, mean the logits
    ids = sorted(set(groups.tolist()))
    clip_logits = np.stack([logits[groups == g].mean(0) for g in ids])
    clip_labels = np.stack([targets[groups == g][0] for g in ids])
    expected = _sklearn_map(clip_logits, clip_labels)
    got = compute_metric("one_minus_map", logits, targets, groups)
    assert got == pytest.approx(expected, abs=1e-12)
    # ungrouped differs (so the grouping is really applied)
    assert compute_metric("one_minus_map", logits, targets) != pytest.approx(got)


def test_map_perfect_and_failure_paths():
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    assert compute_metric("one_minus_map", 10 * (2 * targets - 1), targets) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="no class has a positive"):
        compute_metric("one_minus_map", np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="0 or 1"):
        compute_metric("one_minus_map", np.zeros((2, 2)), np.full((2, 2), 2.0))
    with pytest.raises(ValueError, match="different targets"):
        compute_metric("one_minus_map", np.zeros((4, 2)), targets, np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="groups must have shape"):
        compute_metric("one_minus_map", np.zeros((4, 2)), targets, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="does not match"):
        compute_metric("one_minus_map", np.zeros((4, 3)), targets)


# ---------------------------------------------------------------- one_minus_auroc


def test_auroc_matches_sklearn_with_ties_and_single_class_labels():
    rng = _rng(4)
    logits = np.round(rng.normal(size=(400, 8)), 1)
    targets = (rng.random((400, 8)) < 0.3).astype(np.float32)
    targets[:, 2] = 0  # single class: skipped
    targets[:, 5] = 1  # single class: skipped
    kept = [c for c in range(8) if c not in (2, 5)]
    expected = 1.0 - np.mean([roc_auc_score(targets[:, c], logits[:, c]) for c in kept])
    assert compute_metric("one_minus_auroc", logits, targets) == pytest.approx(expected, abs=1e-12)


def test_auroc_perfect_reversed_and_undefined():
    targets = np.array([[0, 1], [1, 0], [1, 1], [0, 0]], dtype=np.float32)
    scores = 2 * targets - 1
    assert compute_metric("one_minus_auroc", scores, targets) == pytest.approx(0.0)
    assert compute_metric("one_minus_auroc", -scores, targets) == pytest.approx(1.0)
    assert compute_metric("one_minus_auroc", np.zeros((4, 2)), targets) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="single class"):
        compute_metric("one_minus_auroc", np.zeros((3, 1)), np.ones((3, 1)))


# ---------------------------------------------------------------- one_minus_macro_f1


def test_macro_f1_matches_sklearn_without_groups():
    rng = _rng(5)
    logits = rng.normal(size=(300, 4))
    labels = rng.integers(0, 4, size=300)
    expected = 1.0 - f1_score(labels, logits.argmax(1), average="macro")
    assert compute_metric("one_minus_macro_f1", logits, labels) == pytest.approx(expected)


def test_macro_f1_votes_per_record_with_ties_to_the_lowest_class():
    rng = _rng(6)
    n_records = 80
    record_labels = rng.integers(0, 4, size=n_records)
    windows = rng.integers(1, 7, size=n_records)
    groups = np.repeat(np.arange(n_records), windows)
    labels = record_labels[groups]
    logits = rng.normal(size=(len(groups), 4))
    logits[groups % 3 == 0] += 2.0 * np.eye(4)[labels[groups % 3 == 0]]  # some signal
    # independent vote: count by dictionary, lowest class wins ties
    preds, truths = [], []
    for r in range(n_records):
        votes = {c: 0 for c in range(4)}
        for p in logits[groups == r].argmax(1):
            votes[int(p)] += 1
        best = max(votes.values())
        preds.append(min(c for c, v in votes.items() if v == best))
        truths.append(record_labels[r])
    expected = 1.0 - f1_score(truths, preds, average="macro")
    got = compute_metric("one_minus_macro_f1", logits, labels, groups)
    assert got == pytest.approx(expected)


def test_macro_f1_tie_goes_to_the_lowest_class():
    # record 0: one vote each for 2 and 1 -> 1 (correct); record 1: votes for 3 and 0 -> 0 (correct)
    logits = np.eye(4)[[2, 1, 3, 0]]
    labels = np.array([1, 1, 0, 0])
    groups = np.array(["a", "a", "b", "b"])
    assert compute_metric("one_minus_macro_f1", logits, labels, groups) == pytest.approx(0.0)
    # and reversed priority would have been all wrong
    assert compute_metric("one_minus_macro_f1", logits, np.array([2, 2, 3, 3]), groups) == 1.0


def test_macro_f1_failure_paths():
    with pytest.raises(ValueError, match="different targets"):
        compute_metric("one_minus_macro_f1", np.zeros((2, 2)), np.array([0, 1]), np.array([5, 5]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        compute_metric("one_minus_macro_f1", np.zeros((2, 2)), np.array([0, 3]))


# ---------------------------------------------------------------- relative_l2


def test_relative_l2_matches_a_loop():
    rng = _rng(7)
    targets = rng.normal(size=(10, 1, 5, 5))
    outputs = targets + 0.1 * rng.normal(size=targets.shape)
    expected = 0.0
    for p, y in zip(outputs, targets):
        expected += math.sqrt(((p - y) ** 2).sum()) / math.sqrt((y**2).sum())
    expected /= len(targets)
    assert compute_metric("relative_l2", outputs, targets) == pytest.approx(expected)
    assert compute_metric("relative_l2", targets, targets) == 0.0
    assert compute_metric("relative_l2", np.zeros_like(targets), targets) == pytest.approx(1.0)


def test_relative_l2_failure_paths():
    with pytest.raises(ValueError, match="zero"):
        compute_metric("relative_l2", np.ones((2, 3)), np.array([[1.0, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="does not match"):
        compute_metric("relative_l2", np.ones((2, 3)), np.ones((2, 4)))


# ---------------------------------------------------------------- mae8


def _loop_mae8(outputs: np.ndarray, targets: np.ndarray) -> float:
    per_sample = []
    for p, t in zip(outputs.reshape(len(outputs), -1, outputs.shape[-1]), targets):
        t = t.reshape(p.shape)
        errors = [
            abs(p[i, j] - t[i, j])
            for i in range(t.shape[0]) for j in range(t.shape[1])
            if j - i >= 24 and t[i, j] <= 8
        ]
        per_sample.append(np.mean(errors) if errors else np.nan)
    return float(np.nanmean(per_sample))


@pytest.mark.parametrize("with_channel", [True, False])
def test_mae8_matches_a_loop(with_channel):
    rng = _rng(8)
    n, length = 4, 32
    targets = rng.uniform(2.0, 16.0, size=(n, length, length))
    targets[2] = 12.0  # no contacts: skipped by the nan-mean
    targets[1, 0, 30] = np.nan  # unknown distance: never counted
    outputs = targets + rng.normal(size=targets.shape)
    outputs[1, 0, 30] = 0.0
    outputs[:, 5, 10] = 100.0  # short-range pair: ignored
    if with_channel:
        targets, outputs = targets[:, None], outputs[:, None]
    expected = _loop_mae8(outputs, targets)
    assert compute_metric("mae8", outputs, targets) == pytest.approx(expected)


def test_mae8_perfect_and_failure_paths():
    targets = np.full((2, 1, 30, 30), 5.0)
    assert compute_metric("mae8", targets, targets) == 0.0
    with pytest.raises(ValueError, match="no sample"):
        compute_metric("mae8", targets, np.full_like(targets, 9.0))
    with pytest.raises(ValueError, match="square"):
        compute_metric("mae8", np.zeros((2, 30, 31)), np.zeros((2, 30, 31)))


# ---------------------------------------------------------------- one_minus_pixel_auroc


def test_pixel_auroc_matches_sklearn_on_thresholded_pixels():
    rng = _rng(9)
    targets = (rng.random((6, 1, 16, 16)) < 0.2).astype(np.float32)
    targets[rng.random(targets.shape) < 0.1] = -1  # ignored pixels
    logits = rng.normal(size=targets.shape) + 1.5 * (targets == 1)
    kept = targets >= 0
    predicted = (_sigmoid(logits[kept]) > 0.5).astype(int)
    expected = 1.0 - roc_auc_score(targets[kept], predicted)
    assert compute_metric("one_minus_pixel_auroc", logits, targets) == pytest.approx(expected)
    # ignored pixels really are ignored: changing their logits changes nothing
    logits[~kept] = -logits[~kept] + 5
    assert compute_metric("one_minus_pixel_auroc", logits, targets) == pytest.approx(expected)


def test_pixel_auroc_perfect_reversed_and_failure_paths():
    targets = np.array([[1.0, 0.0, -1.0, 0.0]])
    logits = np.array([[3.0, -3.0, 3.0, -1.0]])
    assert compute_metric("one_minus_pixel_auroc", logits, targets) == 0.0
    assert compute_metric("one_minus_pixel_auroc", -logits, targets) == 1.0
    with pytest.raises(ValueError, match="single class"):
        compute_metric("one_minus_pixel_auroc", logits, np.array([[0.0, 0.0, -1.0, 0.0]]))
    with pytest.raises(ValueError, match="0 or 1"):
        compute_metric("one_minus_pixel_auroc", logits, np.array([[0.5, 0.0, 1.0, 0.0]]))
