"""Nearest-neighbour search and retrieval metrics on L2-normalised embeddings.

Definitions follow pytorch-metric-learning's ``AccuracyCalculator`` (cosine similarity,
the query itself excluded when the queries are the gallery):

- precision@1: the nearest gallery item has the query's label;
- recall@K: at least one of the K nearest has the query's label;
- MRR: mean of 1 / rank of the first correct item;
- R-precision: correct items among the top R / R, R = gallery items with the query's label;
- mAP@R: (1/R) Σ_{i≤R} P@i · rel_i.

Queries whose label is absent from the gallery have no defined rank: they are excluded
from the means and counted in ``num_queries_without_match``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from myutils.cli import InputError


def top_k_search(
    queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` gallery items per query by inner product, in query chunks to bound memory.

    Returns ``(scores [Q, k], indices [Q, k])``, best first.
    """
    k = min(k, gallery.shape[0])
    scores, indices = [], []
    for start in range(0, queries.shape[0], chunk_size):
        sims = queries[start : start + chunk_size] @ gallery.T
        chunk_scores, chunk_indices = sims.topk(k, dim=1)
        scores.append(chunk_scores)
        indices.append(chunk_indices)
    return torch.cat(scores), torch.cat(indices)


def retrieval_metrics(
    query_embeddings: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_embeddings: torch.Tensor,
    gallery_labels: torch.Tensor,
    queries_in_gallery: bool = False,
    recall_ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Retrieval metrics of the queries against the gallery (see module docstring).

    With ``queries_in_gallery`` the i-th query is the i-th gallery item (leave-one-out).
    """
    query = query_embeddings.float()
    gallery = gallery_embeddings.float()
    query_labels = query_labels.to(query.device)
    gallery_labels = gallery_labels.to(query.device)
    if queries_in_gallery and query.shape[0] != gallery.shape[0]:
        raise InputError("queries_in_gallery needs the queries to be the gallery (same length)")

    sums = {"precision_at_1": 0.0, "mrr": 0.0, "r_precision": 0.0, "map_at_r": 0.0}
    sums.update({f"recall_at_{k}": 0.0 for k in recall_ks})
    n_valid = 0
    for start in range(0, query.shape[0], chunk_size):
        stop = min(start + chunk_size, query.shape[0])
        sims = query[start:stop] @ gallery.T
        relevant = query_labels[start:stop, None] == gallery_labels[None, :]
        if queries_in_gallery:
            rows = torch.arange(stop - start, device=query.device)
            sims[rows, rows + start] = -torch.inf
            relevant[rows, rows + start] = False
        r_counts = relevant.sum(dim=1)
        has_match = r_counts > 0
        if not has_match.any():
            continue
        sims, relevant, r_counts = sims[has_match], relevant[has_match], r_counts[has_match]
        n_valid += int(has_match.sum())

        order = sims.argsort(dim=1, descending=True, stable=True)
        hits = relevant.gather(1, order).float()  # hits[q, i]: the (i+1)-th neighbour is relevant
        positions = torch.arange(1, hits.shape[1] + 1, device=hits.device, dtype=torch.float32)
        within_r = positions[None, :] <= r_counts[:, None]
        precision_at_i = hits.cumsum(dim=1) / positions[None, :]
        sums["map_at_r"] += float(((precision_at_i * hits * within_r).sum(1) / r_counts).sum())
        sums["r_precision"] += float(((hits * within_r).sum(1) / r_counts).sum())
        sums["precision_at_1"] += float(hits[:, 0].sum())
        first_hit = hits.argmax(dim=1).float() + 1.0
        sums["mrr"] += float((1.0 / first_hit).sum())
        for k in recall_ks:
            sums[f"recall_at_{k}"] += float(hits[:, :k].amax(dim=1).sum())

    metrics = {name: (value / n_valid if n_valid else 0.0) for name, value in sums.items()}
    metrics["num_queries"] = n_valid
    metrics["num_queries_without_match"] = int(query.shape[0] - n_valid)
    return metrics
