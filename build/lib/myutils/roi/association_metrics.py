"""Cross-frame association metrics of the seed's val.py.

For each query object of the "now" frame whose identity is also in the "pre" frame, the pre
objects are ranked by similarity (``P = softmax(S / tau)`` ranks like ``S``). With Q_v valid
queries and rank_i the rank of the true match:

- Top-1 = (1/Q_v) Σ 1[rank_i = 1]
- Mean Rank = (1/Q_v) Σ rank_i  (in [1, N], lower is better)
- MRR = (1/Q_v) Σ 1/rank_i
- Recall@K = (1/Q_v) Σ 1[rank_i <= K]  (K larger than the candidate count gives 1)

Ties count against the model: rank_i = 1 + the number of wrong candidates scoring at least as
high as the true match. Queries whose id is absent from "pre" are counted in ``num_queries``
but excluded from the ranks; a pair without valid queries has undefined (NaN) rank metrics
and is left out of their average over pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from myutils.cli import InputError

RANK_METRICS = ("top1", "mean_rank", "mrr")


def match_probabilities(similarity: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """``P = softmax(S / temperature)`` over the candidates of each query."""
    return torch.softmax(similarity / temperature, dim=1)


def association_metrics(
    scores: torch.Tensor | np.ndarray, query_ids: Sequence[int], candidate_ids: Sequence[int],
    recall_ks: Sequence[int] = (5, 10),
) -> dict[str, float]:
    """Metrics of one pair from ``scores [Q, N]`` (similarities or probabilities)."""
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(len(query_ids), len(candidate_ids))
    query_ids = torch.as_tensor(list(query_ids), dtype=torch.long)
    candidate_ids = torch.as_tensor(list(candidate_ids), dtype=torch.long)
    ranks = []
    for i in range(len(query_ids)):
        is_true = candidate_ids == query_ids[i]
        if not is_true.any():
            continue
        best_true = scores[i, is_true].max()
        ranks.append(1 + int((scores[i, ~is_true] >= best_true).sum()))
    result = {"num_queries": float(len(query_ids)), "num_valid": float(len(ranks))}
    ranks = np.asarray(ranks, dtype=np.float64)
    valid = len(ranks) > 0
    result["top1"] = float((ranks == 1).mean()) if valid else math.nan
    result["mean_rank"] = float(ranks.mean()) if valid else math.nan
    result["mrr"] = float((1.0 / ranks).mean()) if valid else math.nan
    for k in recall_ks:
        result[f"recall@{k}"] = float((ranks <= k).mean()) if valid else math.nan
    return result


def average_over_pairs(per_pair: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over pairs; NaN entries (pairs without valid queries) are skipped."""
    if not per_pair:
        raise InputError("no pairs to average")
    averaged = {}
    for key in per_pair[0]:
        values = [pair[key] for pair in per_pair if not math.isnan(pair[key])]
        averaged[key] = float(np.mean(values)) if values else math.nan
    return averaged
