"""Verification metrics against independent computations: sklearn's ROC curve and brute-force threshold sweeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_curve

from myutils.retrieval import verification
from myutils.retrieval.verification import (
    best_threshold,
    kfold_verification_accuracy,
    pair_verification,
    tar_at_far,
)


def _scores(seed: int, n: int = 400, ties: bool = False):
    rng = np.random.default_rng(seed)
    is_same = rng.random(n) < 0.4
    scores = rng.normal(0.0, 1.0, n) + 1.2 * is_same
    if ties:
        scores = np.round(scores, 1)  # many equal scores, some shared by genuine and impostor pairs
    return scores, is_same


def _brute_force_best(scores, is_same):
    """Every threshold between observed scores (and outside them), lowest best one; loops, no sorting tricks."""
    values = sorted(set(scores.tolist()))
    candidates = [values[0] - 1.0] + [(a + b) / 2 for a, b in zip(values[:-1], values[1:], strict=True)] + [values[-1] + 1.0]
    best_t, best_acc = None, -1.0
    for t in candidates:
        acc = sum((s >= t) == y for s, y in zip(scores, is_same, strict=True)) / len(scores)
        if acc > best_acc:
            best_t, best_acc = t, acc
    return best_t, best_acc


@pytest.mark.parametrize("ties", [False, True])
def test_best_threshold_matches_a_brute_force_sweep(ties):
    for seed in range(3):
        scores, is_same = _scores(seed, n=150, ties=ties)
        threshold, accuracy = best_threshold(scores, is_same)
        expected_t, expected_acc = _brute_force_best(scores, is_same)
        assert accuracy == pytest.approx(expected_acc, abs=1e-12)
        assert threshold == pytest.approx(expected_t, abs=1e-12)


def test_best_threshold_extremes():
    assert best_threshold(np.array([0.1, 0.2]), np.array([True, True])) == (pytest.approx(-0.9), 1.0)
    assert best_threshold(np.array([0.1, 0.2]), np.array([False, False])) == (pytest.approx(1.2), 1.0)
    assert best_threshold(np.array([0.9, 0.1]), np.array([False, True]))[1] == 0.5


def test_kfold_accuracy_chooses_each_threshold_on_the_other_folds():
    scores, is_same = _scores(7, n=300, ties=True)
    folds = np.arange(300) % 10
    result = kfold_verification_accuracy(scores, is_same, folds)
    expected = []
    for k in range(10):
        train, test = folds != k, folds == k
        t, _ = _brute_force_best(scores[train], is_same[train])
        expected.append(np.mean((scores[test] >= t) == is_same[test]))
        assert result["thresholds"][k] == pytest.approx(t)
    assert result["fold_accuracies"] == pytest.approx(expected)
    assert result["accuracy"] == pytest.approx(np.mean(expected)) and result["accuracy_std"] == pytest.approx(np.std(expected))
    # contiguous folds when k is an int (InsightFace's KFold without shuffling)
    contiguous = kfold_verification_accuracy(scores, is_same, 10)
    assert contiguous["fold_accuracies"] == pytest.approx(
        kfold_verification_accuracy(scores, is_same, np.repeat(np.arange(10), 30))["fold_accuracies"])


def test_a_threshold_tuned_on_the_test_fold_is_not_what_is_reported():
    # fold 0 alone is separated at 0.45, the other folds at 0.7
    scores = np.r_[np.full(10, 0.5), np.full(10, 0.4), np.linspace(0.0, 1.0, 180)]
    is_same = np.r_[np.ones(10, bool), np.zeros(10, bool), np.linspace(0.0, 1.0, 180) > 0.7]
    folds = np.r_[np.zeros(20, int), 1 + np.arange(180) % 9]
    assert best_threshold(scores[:20], is_same[:20]) == (pytest.approx(0.45), 1.0)
    result = kfold_verification_accuracy(scores, is_same, folds)
    assert result["thresholds"][0] == pytest.approx(0.7, abs=0.01)
    assert result["fold_accuracies"][0] == 0.5  # every pair of fold 0 is rejected


@pytest.mark.parametrize("far", [1e-3, 1e-2, 0.1])
@pytest.mark.parametrize("ties", [False, True])
def test_tar_at_far_matches_sklearn_roc_curve(far, ties):
    rng = np.random.default_rng(11)
    is_same = np.r_[np.ones(500, bool), np.zeros(5003, bool)]  # FAR · N is never a whole number
    scores = np.r_[rng.normal(2.0, 1.0, 500), rng.normal(0.0, 1.0, 5003)]
    if ties:
        scores = np.round(scores, 1)
    fpr, tpr, thresholds = roc_curve(is_same, scores, drop_intermediate=False)
    expected = tpr[fpr <= far + 1e-12].max()
    result = tar_at_far(scores, is_same, far)
    assert result["tar"] == pytest.approx(expected, abs=1e-12)
    assert result["far"] <= far and result["far_resolvable"]
    assert result["tar"] == pytest.approx(np.mean(scores[is_same] >= result["threshold"]))


def test_tar_at_far_flags_too_few_impostors():
    result = tar_at_far(np.array([0.9, 0.8, 0.1, 0.2]), np.array([True, True, False, False]), 1e-3)
    assert result["tar"] == 1.0 and result["far"] == 0.0 and not result["far_resolvable"]
    with pytest.raises(ValueError, match="genuine and impostor"):
        tar_at_far(np.array([0.1]), np.array([True]))


def test_pair_verification_on_separable_and_random_features():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(12, 32), dim=1)
    labels = torch.arange(12).repeat_interleave(5)
    queries = centres[labels] + 0.05 * torch.randn(60, 32)
    result = pair_verification(queries, labels, centres, torch.arange(12))
    assert result["accuracy"] == 1.0 and result["tar"] == 1.0
    assert result["num_pairs"] == 120 and result["num_genuine"] == 60 and result["num_impostor"] == 660
    noise = pair_verification(torch.randn(60, 32), labels, centres, torch.arange(12), seed=1)
    assert 0.3 < noise["accuracy"] < 0.7 and noise["tar"] < 0.2  # chance level
    with pytest.raises(ValueError, match="at least 10 query identities"):
        pair_verification(queries[:20], labels[:20], centres, torch.arange(12))


def test_pair_verification_folds_never_split_an_identity(monkeypatch):
    """CFP-FP style: all pairs of a query identity are in one fold (a threshold is never chosen on the
    identities it is tested on); 30 identities round robin over 10 folds."""
    recorded = {}
    real = verification.kfold_verification_accuracy

    def record(scores, is_same, folds):
        recorded.update(scores=np.asarray(scores), is_same=np.asarray(is_same), folds=np.asarray(folds))
        return real(scores, is_same, folds)

    monkeypatch.setattr(verification, "kfold_verification_accuracy", record)
    torch.manual_seed(3)
    labels = torch.arange(30).repeat(3)[torch.randperm(90)]  # three queries per identity, in no order
    # gallery: unit axes 0-29; query q: cosine own_score[q] to its identity's axis, the rest on axis 30,
    # so a genuine pair's score names its query (impostor scores are 0)
    gallery = torch.eye(31)[:30]
    own_score = torch.linspace(0.1, 0.9, 90, dtype=torch.float64)
    queries = torch.zeros(90, 31, dtype=torch.float64)
    queries[torch.arange(90), labels] = own_score
    queries[:, 30] = (1 - own_score**2).sqrt()
    pair_verification(queries, labels, gallery, torch.arange(30))
    genuine = recorded["is_same"]
    nearest = np.abs(recorded["scores"][genuine][:, None] - own_score.numpy()[None, :]).argmin(axis=1)
    assert sorted(nearest) == list(range(90))
    identities = labels.numpy()[nearest]
    folds_of = {}
    for identity, fold in zip(identities, recorded["folds"][genuine], strict=True):
        folds_of.setdefault(identity, set()).add(int(fold))
    assert len(folds_of) == 30 and all(len(folds) == 1 for folds in folds_of.values())
    assert sorted(np.bincount([next(iter(f)) for f in folds_of.values()])) == [3] * 10
