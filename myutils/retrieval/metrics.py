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
from myutils.retrieval.search import top_k_search


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


def merge_retrieval_metrics(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """Metrics of the union of disjoint query sets from each set's :func:`retrieval_metrics`."""
    n_valid = sum(part["num_queries"] for part in parts)
    means = [key for key in parts[0] if key not in ("num_queries", "num_queries_without_match")]
    merged = {key: (sum(part[key] * part["num_queries"] for part in parts) / n_valid if n_valid else 0.0)
              for key in means}
    merged["num_queries"] = n_valid
    merged["num_queries_without_match"] = sum(part["num_queries_without_match"] for part in parts)
    return merged


def nearest_neighbours(
    query_embeddings: torch.Tensor, gallery_embeddings: torch.Tensor, k: int, queries_in_gallery: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`top_k_search`, leaving out the query itself when the queries are the gallery."""
    if not queries_in_gallery:
        return top_k_search(query_embeddings, gallery_embeddings, k)
    scores, indices = top_k_search(query_embeddings, gallery_embeddings, k + 1)
    keep = indices != torch.arange(indices.shape[0], device=indices.device)[:, None]
    keep[keep.all(dim=1), -1] = False  # self not among the k + 1 (duplicates): drop the last instead
    return scores[keep].view(-1, indices.shape[1] - 1), indices[keep].view(-1, indices.shape[1] - 1)


def knn_classification(
    query_embeddings: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_embeddings: torch.Tensor,
    gallery_labels: torch.Tensor,
    k: int = 5,
    queries_in_gallery: bool = False,
) -> dict:
    """kNN classification accuracy and per-class precision@1 (queries without a gallery match excluded).

    The predicted class is the majority label of the ``k`` nearest gallery items; a tie goes to the
    class with the larger summed similarity. Returns ``{"knn_accuracy", "knn_k",
    "per_class_precision_at_1": {label: value}}`` (labels of the queries that have a match).
    """
    if k < 1:
        raise InputError(f"k must be positive, got {k}")
    query_labels, gallery_labels = query_labels.cpu(), gallery_labels.cpu()
    scores, indices = nearest_neighbours(query_embeddings.float(), gallery_embeddings.float(), k, queries_in_gallery)
    scores, indices = scores.cpu(), indices.cpu()
    n_classes = int(max(query_labels.max(), gallery_labels.max())) + 1 if len(query_labels) else 1
    neighbour_labels = gallery_labels[indices]
    votes = torch.zeros(len(query_labels), n_classes).scatter_add_(1, neighbour_labels, torch.ones_like(scores))
    summed = torch.zeros(len(query_labels), n_classes).scatter_add_(1, neighbour_labels, scores.float())
    predicted = (votes * (2 * k + 1) + summed).argmax(dim=1)  # one more vote outweighs any similarity sum

    gallery_counts = torch.bincount(gallery_labels, minlength=n_classes)
    has_match = gallery_counts[query_labels] > int(queries_in_gallery)
    top1_correct = neighbour_labels[:, 0] == query_labels
    per_class = {
        int(label): float(top1_correct[has_match & (query_labels == label)].double().mean())
        for label in query_labels[has_match].unique().tolist()
    }
    accuracy = float((predicted == query_labels)[has_match].double().mean()) if has_match.any() else 0.0
    return {"knn_accuracy": accuracy, "knn_k": min(k, indices.shape[1]), "per_class_precision_at_1": per_class}
