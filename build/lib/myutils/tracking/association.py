"""Association costs and the optimal assignment between tracks (rows) and detections (columns).

Pure functions on arrays: cosine appearance distances against a track's EMA feature and its bank
of recent embeddings, the fusion of appearance with motion, and gated Hungarian matching with
``scipy.optimize.linear_sum_assignment``. Forbidden pairs carry ``np.inf``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def cosine_distance(features_a: np.ndarray, features_b: np.ndarray) -> np.ndarray:
    """``1 − cos`` between every row of ``features_a [N, D]`` and of ``features_b [M, D]`` -> ``[N, M]``."""
    return 1.0 - normalize_rows(features_a) @ normalize_rows(features_b).T


def appearance_distance(
    ema_features: np.ndarray, banks: list[np.ndarray], detections: np.ndarray, top_k: int = 5
) -> np.ndarray:
    """Per track, the smaller of two distances to each detection embedding -> ``[N, M]``:

    ``1 − cos(ema, det)`` (the smoothed look) and ``1 − mean of the top_k cosine similarities``
    between the detection and the track's bank of recent embeddings (robust to a few odd views).
    Embeddings are expected L2-normalised.
    """
    detections = np.asarray(detections, dtype=np.float64)
    distance = 1.0 - np.asarray(ema_features, dtype=np.float64) @ detections.T
    if not banks or detections.shape[0] == 0:
        return distance
    sizes = [len(bank) for bank in banks]
    similarities = np.concatenate(banks) @ detections.T  # every bank entry against every detection
    start = 0
    for track_index, size in enumerate(sizes):
        if size:
            block = similarities[start : start + size]
            k = min(top_k, size)
            top = -np.partition(-block, k - 1, axis=0)[:k] if k < size else block
            distance[track_index] = np.minimum(distance[track_index], 1.0 - top.mean(axis=0))
        start += size
    return distance


def fuse_costs(appearance: np.ndarray, motion: np.ndarray, appearance_weight: float) -> np.ndarray:
    """``w · appearance + (1 − w) · motion``; a pair forbidden in either stays forbidden (inf)."""
    return appearance_weight * appearance + (1.0 - appearance_weight) * motion


def linear_assignment(
    cost: np.ndarray, max_cost: float = np.inf
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one matching that uses only pairs with ``cost <= max_cost``.

    Returns ``matches [K, 2]`` (row, column), the unmatched rows and the unmatched columns.
    Forbidden pairs are replaced by a cost larger than any allowed total, so the solver never
    trades an allowed match for a forbidden one.
    """
    cost = np.asarray(cost, dtype=np.float64)
    rows, cols = cost.shape
    allowed = np.isfinite(cost) & (cost <= max_cost)
    if rows == 0 or cols == 0 or not allowed.any():
        return np.zeros((0, 2), dtype=int), np.arange(rows), np.arange(cols)
    big = 1.0 + 2.0 * np.abs(cost[allowed]).max() * min(rows, cols)
    row_index, col_index = linear_sum_assignment(np.where(allowed, cost, big))
    keep = allowed[row_index, col_index]
    matches = np.stack([row_index[keep], col_index[keep]], axis=1)
    unmatched_rows = np.setdiff1d(np.arange(rows), matches[:, 0])
    unmatched_cols = np.setdiff1d(np.arange(cols), matches[:, 1])
    return matches, unmatched_rows, unmatched_cols
