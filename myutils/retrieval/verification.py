"""Verification metrics on pair scores: k-fold accuracy (LFW / CFP-FP protocol) and TAR at a fixed FAR.

A pair is accepted as "same identity" when its score (cosine similarity) is ``>= threshold``.

- :func:`kfold_verification_accuracy`: the pairs fall into ``k`` folds; for each fold the threshold that
  maximises accuracy on the other ``k − 1`` folds is applied to it; the result is the mean and standard
  deviation of the ``k`` held-out accuracies (as InsightFace's ``verification.py`` evaluates LFW and
  CFP-FP, with exact thresholds between observed scores instead of a 0.01 grid).
- :func:`tar_at_far`: the largest true-accept rate over thresholds whose false-accept rate
  ``#(impostor >= t) / #impostors`` is at most ``far`` (the point of the ROC curve that
  ``sklearn.metrics.roc_curve`` gives, read at ``fpr <= far``). Fewer than ``1 / far`` impostor pairs
  cannot resolve that FAR: ``far_resolvable`` is then False.
- :func:`pair_verification` scores a query set against a gallery (genuine pairs: same identity) and
  reports both, CFP-FP style: balanced same / different pairs and folds split by identity for the
  accuracy, every impostor pair for TAR@FAR. It holds all ``Q × G`` scores: meant for held-out splits.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from myutils.cli import InputError


def _as_numpy(values) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def best_threshold(scores: np.ndarray, is_same: np.ndarray) -> tuple[float, float]:
    """``(threshold, accuracy)`` of the most accurate rule ``score >= threshold`` on these pairs.

    Candidates are midpoints between consecutive distinct scores and one below / above all of them;
    the lowest of equally accurate thresholds wins.
    """
    order = np.argsort(scores, kind="stable")
    scores, is_same = scores[order], is_same[order].astype(bool)
    distinct = np.flatnonzero(np.r_[True, np.diff(scores) > 0])  # first index of each distinct score
    # threshold just below distinct score j accepts every pair from index distinct[j] on
    same_below = np.r_[0, np.cumsum(is_same)]  # genuine pairs among the first i
    rejected = distinct
    correct = (rejected - same_below[rejected]) + (is_same.sum() - same_below[rejected])
    correct = np.r_[correct, len(scores) - is_same.sum()]  # threshold above every score: reject all
    best = int(np.argmax(correct))
    if best == len(distinct):
        threshold = float(scores[-1]) + 1.0
    elif best == 0:
        threshold = float(scores[0]) - 1.0
    else:
        threshold = float(scores[distinct[best] - 1] + scores[distinct[best]]) / 2.0
    return threshold, float(correct[best]) / len(scores)


def kfold_verification_accuracy(scores, is_same, folds) -> dict:
    """Mean and std of held-out accuracy, the threshold of each fold chosen on the others.

    ``folds`` is the fold index of each pair (0 … k−1), or an int ``k`` for contiguous folds in the
    given order (InsightFace's ``KFold(shuffle=False)``).
    """
    scores, is_same = _as_numpy(scores).astype(np.float64), _as_numpy(is_same).astype(bool)
    if scores.shape != is_same.shape or scores.ndim != 1:
        raise InputError(f"scores and is_same must be 1-D and of equal length, got {scores.shape} and {is_same.shape}")
    if isinstance(folds, (int, np.integer)):
        folds = np.arange(len(scores)) * int(folds) // max(1, len(scores))
    folds = _as_numpy(folds)
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise InputError(f"k-fold verification needs at least 2 folds, got {len(fold_ids)}")
    accuracies, thresholds = [], []
    for fold in fold_ids:
        held_out = folds == fold
        threshold, _ = best_threshold(scores[~held_out], is_same[~held_out])
        accuracies.append(float(((scores[held_out] >= threshold) == is_same[held_out]).mean()))
        thresholds.append(threshold)
    return {"accuracy": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies)),
            "fold_accuracies": accuracies, "thresholds": thresholds}


def tar_at_far(scores, is_same, far: float = 1e-3) -> dict:
    """TAR at the strictest operating point with FAR <= ``far`` (module docstring)."""
    scores, is_same = _as_numpy(scores).astype(np.float64), _as_numpy(is_same).astype(bool)
    genuine, impostor = np.sort(scores[is_same]), np.sort(scores[~is_same])
    if not len(genuine) or not len(impostor):
        raise InputError(f"TAR@FAR needs genuine and impostor pairs, got {len(genuine)} and {len(impostor)}")
    # accepting every score >= t: the fewest impostors allowed is floor(far · N); t just above the
    # (allowed + 1)-th highest impostor score, i.e. the lowest threshold whose FAR stays within bounds
    allowed = int(np.floor(far * len(impostor) + 1e-9))
    if allowed >= len(impostor):
        threshold = -np.inf
    else:
        threshold = np.nextafter(impostor[len(impostor) - allowed - 1], np.inf)
    tar = float((genuine >= threshold).mean())
    achieved = float((impostor >= threshold).mean())
    return {"tar": tar, "far": achieved, "threshold": float(threshold), "num_genuine": len(genuine),
            "num_impostor": len(impostor), "far_resolvable": len(impostor) * far >= 1.0}


def pair_verification(
    query_features, query_labels, gallery_features, gallery_labels, num_folds: int = 10, far: float = 1e-3,
    seed: int = 0,
) -> dict:
    """k-fold accuracy on balanced pairs and TAR@FAR on all pairs of queries against a gallery (cosine).

    Every (query, gallery item) pair is scored. Accuracy uses every genuine pair and as many impostor
    pairs, each query contributing as many impostors (drawn at random with ``seed``) as it has genuine
    pairs; folds split the query identities round robin over the sorted labels, so the identities that
    choose a threshold are never the ones it is tested on. TAR@FAR uses every pair.
    """
    queries = F.normalize(torch.as_tensor(query_features).float(), dim=1)
    gallery = F.normalize(torch.as_tensor(gallery_features).float(), dim=1)
    q_labels, g_labels = _as_numpy(query_labels), _as_numpy(gallery_labels)
    scores = (queries @ gallery.T).double().numpy()
    same = q_labels[:, None] == g_labels[None, :]
    identities = np.unique(q_labels)
    if len(identities) < num_folds:
        raise InputError(f"{num_folds}-fold verification needs at least {num_folds} query identities, "
                         f"got {len(identities)}")
    rng = np.random.default_rng(seed)
    balanced = np.zeros_like(same)
    for query in range(len(q_labels)):
        genuine, impostor = np.flatnonzero(same[query]), np.flatnonzero(~same[query])
        balanced[query, genuine] = True
        balanced[query, rng.choice(impostor, size=min(len(genuine), len(impostor)), replace=False)] = True
    fold_of_identity = {label: i % num_folds for i, label in enumerate(identities)}
    query_fold = np.array([fold_of_identity[label] for label in q_labels])
    folds = np.broadcast_to(query_fold[:, None], same.shape)[balanced]
    accuracy = kfold_verification_accuracy(scores[balanced], same[balanced], folds)
    operating_point = tar_at_far(scores.ravel(), same.ravel(), far)
    return {
        **accuracy, "num_pairs": int(balanced.sum()),
        "tar": operating_point["tar"], "tar_far": operating_point["far"], "tar_threshold": operating_point["threshold"],
        "num_genuine": operating_point["num_genuine"], "num_impostor": operating_point["num_impostor"],
        "far_resolvable": operating_point["far_resolvable"],
    }
