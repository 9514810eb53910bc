"""Association: gated Hungarian assignment against brute force, appearance distances by hand."""

import itertools

import numpy as np
import pytest

from myutils.tracking.association import appearance_distance, cosine_distance, fuse_costs, linear_assignment


def brute_force(cost: np.ndarray, max_cost: float) -> tuple[int, float]:
    """Most allowed pairs first, then the least total cost, over every one-to-one matching."""
    rows, cols = cost.shape
    best = (0, 0.0)
    assert rows <= cols
    for perm in itertools.permutations(range(cols), rows):
        pairs = [(r, c) for r, c in zip(range(rows), perm, strict=True) if cost[r, c] <= max_cost]
        key = (len(pairs), sum(cost[r, c] for r, c in pairs))
        if key[0] > best[0] or (key[0] == best[0] and key[1] < best[1]):
            best = key
    return best


def test_assignment_on_constructed_cost_matrix():
    inf = np.inf
    cost = np.array(
        [
            [0.9, 0.1, inf, 0.5],
            [0.2, 0.3, inf, inf],
            [inf, inf, inf, inf],  # a track with no allowed detection
        ]
    )
    matches, unmatched_rows, unmatched_cols = linear_assignment(cost)
    assert sorted(map(tuple, matches)) == [(0, 1), (1, 0)]  # 0.1 + 0.2 beats 0.9 + 0.3 or 0.5 + 0.2
    assert unmatched_rows.tolist() == [2] and unmatched_cols.tolist() == [2, 3]
    # a threshold forbids the dearer pairs: row 1 has nothing at or below 0.15 left
    matches, _, _ = linear_assignment(cost, max_cost=0.15)
    assert sorted(map(tuple, matches)) == [(0, 1)]
    # the solver must prefer two allowed matches over one cheap one: 0.5 + 0.3 (2 pairs) over 0.1 alone
    cost = np.array([[0.1, 0.5], [inf, 0.3]])
    assert sorted(map(tuple, linear_assignment(cost)[0])) == [(0, 0), (1, 1)]
    empty = linear_assignment(np.zeros((0, 3)))
    assert empty[0].shape == (0, 2) and empty[2].tolist() == [0, 1, 2]


@pytest.mark.parametrize("seed", range(6))
def test_assignment_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(1, 5)), int(rng.integers(4, 6))
    cost = rng.uniform(0, 1, size=(rows, cols))
    cost[rng.uniform(size=cost.shape) < 0.3] = np.inf
    matches, unmatched_rows, unmatched_cols = linear_assignment(cost, max_cost=0.8)
    count, total = brute_force(cost, 0.8)
    assert len(matches) == count
    assert cost[matches[:, 0], matches[:, 1]].sum() == pytest.approx(total)
    assert len(set(matches[:, 0])) == len(matches) and len(set(matches[:, 1])) == len(matches)
    assert len(unmatched_rows) == rows - count and len(unmatched_cols) == cols - count


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
