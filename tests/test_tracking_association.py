"""Association: the assignment against brute force and lap.lapjv, appearance distances by hand."""

import itertools

import numpy as np
import pytest

from myutils.tracking.association import appearance_distance, cosine_distance, fuse_costs, linear_assignment
from myutils.tracking.boxes import iou_matrix


def brute_force(cost: np.ndarray, max_cost: float) -> float:
    """The least total cost over every partial one-to-one matching of pairs costing less than
    ``max_cost``, where each unmatched row and each unmatched column costs ``max_cost / 2``."""
    rows, cols = cost.shape
    best = (rows + cols) * max_cost / 2  # nothing matched
    for size in range(1, min(rows, cols) + 1):
        for chosen_rows in itertools.combinations(range(rows), size):
            for chosen_cols in itertools.permutations(range(cols), size):
                pairs = cost[list(chosen_rows), list(chosen_cols)]
                if (pairs < max_cost).all():
                    best = min(best, pairs.sum() + (rows + cols - 2 * size) * max_cost / 2)
    return best


def total_cost(cost: np.ndarray, matches: np.ndarray, max_cost: float) -> float:
    unmatched = cost.shape[0] + cost.shape[1] - 2 * len(matches)
    return cost[matches[:, 0], matches[:, 1]].sum() + unmatched * max_cost / 2


def test_assignment_on_constructed_cost_matrix():
    inf = np.inf
    cost = np.array(
        [
            [0.9, 0.1, inf, 0.5],
            [0.2, 0.3, inf, inf],
            [inf, inf, inf, inf],  # a track with no allowed detection
        ]
    )
    matches, unmatched_rows, unmatched_cols = linear_assignment(cost, max_cost=1.0)
    assert sorted(map(tuple, matches)) == [(0, 1), (1, 0)]  # 0.1 + 0.2 beats 0.9 + 0.3 or 0.5 + 0.2
    assert unmatched_rows.tolist() == [2] and unmatched_cols.tolist() == [2, 3]
    # a threshold forbids the dearer pairs: row 1 has nothing below 0.15 left
    matches, _, _ = linear_assignment(cost, max_cost=0.15)
    assert sorted(map(tuple, matches)) == [(0, 1)]
    # one good pair beats two mediocre ones: 0.1 + (two unmatched ends) 0.8 < 0.7 + 0.7
    cost = np.array([[0.1, 0.7], [0.7, inf]])
    assert sorted(map(tuple, linear_assignment(cost, max_cost=0.8)[0])) == [(0, 0)]
    # ... while with a looser limit two pairs are worth it: 0.1 + 1.6 > 0.7 + 0.7
    assert sorted(map(tuple, linear_assignment(cost, max_cost=1.6)[0])) == [(0, 1), (1, 0)]
    empty = linear_assignment(np.zeros((0, 3)), max_cost=1.0)
    assert empty[0].shape == (0, 2) and empty[2].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="finite"):
        linear_assignment(cost, max_cost=np.inf)


def test_a_false_positive_does_not_steal_a_neighbours_detection():
    """The issue's example: tracks at x=100 and x=120, the second missed, a false positive at x=80."""
    tracks = np.vstack([box_at(100), box_at(120)])
    detections = np.vstack([box_at(100), box_at(80)])
    cost = 1.0 - iou_matrix(tracks, detections)
    matches, unmatched_tracks, unmatched_detections = linear_assignment(cost, max_cost=0.8)
    assert matches.tolist() == [[0, 0]]  # not [[0, 1], [1, 0]]
    assert unmatched_tracks.tolist() == [1] and unmatched_detections.tolist() == [1]


def box_at(cx: float, w: float = 40.0, h: float = 80.0) -> np.ndarray:
    return np.array([[cx - w / 2, 100.0, cx + w / 2, 100.0 + h]])


@pytest.mark.parametrize("seed", range(8))
def test_assignment_matches_brute_force_and_lapjv(seed):
    lap = pytest.importorskip("lap")
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    cost = rng.uniform(0, 1, size=(rows, cols))
    cost[rng.uniform(size=cost.shape) < 0.3] = np.inf
    max_cost = 0.8
    matches, unmatched_rows, unmatched_cols = linear_assignment(cost, max_cost=max_cost)
    assert total_cost(cost, matches, max_cost) == pytest.approx(brute_force(cost, max_cost))
    assert (cost[matches[:, 0], matches[:, 1]] < max_cost).all()
    assert len(set(matches[:, 0])) == len(matches) and len(set(matches[:, 1])) == len(matches)
    assert len(unmatched_rows) == rows - len(matches) and len(unmatched_cols) == cols - len(matches)
    # the reference library: the same matching (random costs have a unique optimum)
    _, row_to_col, _ = lap.lapjv(np.where(np.isinf(cost), 1e6, cost), extend_cost=True, cost_limit=max_cost)
    reference = sorted((r, int(c)) for r, c in enumerate(row_to_col) if c >= 0)
    assert sorted(map(tuple, matches.tolist())) == reference


def test_appearance_distance_uses_ema_and_top_k_bank():
    ema = np.array([[1.0, 0.0, 0.0]])
    bank = [np.array([[0.0, 1.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])]
    detections = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    distance = appearance_distance(ema, bank, detections, top_k=2)
    # detection 0: cos to EMA 0; bank similarities 1, 0.8, 0 -> top-2 mean 0.9 -> distance 0.1
    # detection 1: cos to EMA 1 -> distance 0
    assert np.allclose(distance, [[0.1, 0.0]])
    assert np.allclose(cosine_distance(ema, detections), [[1.0, 0.0]])
    assert np.allclose(cosine_distance(2 * ema, 3 * detections), [[1.0, 0.0]])  # scale-free
    fused = fuse_costs(np.array([[0.2, np.inf]]), np.array([[0.6, 0.1]]), 0.75)
    assert fused[0, 0] == pytest.approx(0.3) and np.isinf(fused[0, 1])
