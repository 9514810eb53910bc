"""Association costs and the optimal assignment between tracks (rows) and detections (columns).

Pure functions on arrays: cosine appearance distances against a track's EMA feature and its bank
of recent embeddings, the fusion of appearance with motion, and the optimal assignment with
``scipy.optimize.linear_sum_assignment``. Forbidden pairs carry ``np.inf``.
"""

from __future__ import annotations

import math

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


def linear_assignment(cost: np.ndarray, max_cost: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The minimum-cost partial matching where leaving a row and a column unmatched costs ``max_cost``.

    The standard formulation of tracking (``lap.lapjv(cost, extend_cost=True, cost_limit=max_cost)``
    as DeepSORT and ByteTrack call it): every unmatched row and every unmatched column costs
    ``max_cost / 2``, so a pair is made only where it is cheaper than leaving both ends unmatched,
    and two mediocre pairs never win over one good pair. Pairs costing ``max_cost`` or more (and
    forbidden ``inf`` or ``nan`` pairs) are never made. Returns ``matches [K, 2]`` (row, column),
    the unmatched rows and the unmatched columns.
    """
    cost = np.asarray(cost, dtype=np.float64)
    rows, cols = cost.shape
    matched_rows, matched_cols = optimal_pairs(np.where(np.isnan(cost), np.inf, cost), max_cost)
    row_free, col_free = np.ones(rows, dtype=bool), np.ones(cols, dtype=bool)
    row_free[matched_rows] = False
    col_free[matched_cols] = False
    return np.column_stack([matched_rows, matched_cols]), np.nonzero(row_free)[0], np.nonzero(col_free)[0]


def optimal_pairs(cost: np.ndarray, max_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """The rows and columns of :func:`linear_assignment`'s pairs (``cost`` a float array without nan).

    Solved as a rectangular assignment on ``min(cost, max_cost)``: a forced pair at ``max_cost``
    costs exactly what its two unmatched ends would, so both problems have the same optimum.
    """
    if not math.isfinite(max_cost):
        raise ValueError(f"max_cost must be finite, got {max_cost}")
    if cost.size == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    capped = np.minimum(cost, max_cost)
    rows, cols = linear_sum_assignment(capped)
    keep = capped[rows, cols] < max_cost
    if keep.all():  # the common case: no pair at the limit to drop
        return rows, cols
    return rows[keep], cols[keep]
