import math

import pytest
import torch

from myutils.roi.association_metrics import association_metrics, average_over_pairs, match_probabilities


def test_hand_computed_ranks():
    # query 7: true match ranked 2nd; query 8: ranked 1st; query 9: absent from "pre"
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.1, 0.8], [0.3, 0.3, 0.3]])
    metrics = association_metrics(scores, query_ids=[7, 8, 9], candidate_ids=[3, 7, 8])
    assert metrics["num_queries"] == 3 and metrics["num_valid"] == 2
    assert metrics["top1"] == pytest.approx(0.5)
    assert metrics["mean_rank"] == pytest.approx(1.5)
    assert metrics["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    assert metrics["recall@5"] == metrics["recall@10"] == 1.0  # K above the 3 candidates


def test_recall_at_k_below_the_candidate_count():
    scores = torch.tensor([[6.0, 5, 4, 3, 2, 1, 0]])  # true match (id 6) is 7th of 7
    metrics = association_metrics(scores, [6], [0, 1, 2, 3, 4, 5, 6], recall_ks=(5, 10))
    assert metrics["mean_rank"] == 7 and metrics["recall@5"] == 0.0 and metrics["recall@10"] == 1.0
    assert metrics["mrr"] == pytest.approx(1 / 7)


def test_ties_count_against_the_model():
    scores = torch.tensor([[0.5, 0.5, 0.1]])
    metrics = association_metrics(scores, [2], [1, 2, 3])
    assert metrics["top1"] == 0.0 and metrics["mean_rank"] == 2.0
    # a softmax keeps the order (and ties) of the similarities
    probabilities = match_probabilities(torch.tensor([[0.1, 0.9, 0.4]]), 0.2)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(1))
    assert association_metrics(probabilities, [5], [4, 5, 6])["top1"] == 1.0


def test_no_valid_query_and_averaging():
    empty = association_metrics(torch.rand(2, 2), [1, 2], [3, 4])
    assert empty["num_queries"] == 2 and empty["num_valid"] == 0
    assert math.isnan(empty["top1"]) and math.isnan(empty["mrr"]) and math.isnan(empty["recall@5"])
    perfect = association_metrics(torch.eye(2), [1, 2], [1, 2])
    averaged = average_over_pairs([perfect, empty])
    assert averaged["top1"] == 1.0 and averaged["mean_rank"] == 1.0
    assert averaged["num_queries"] == 2.0 and averaged["num_valid"] == 1.0
    none = association_metrics(torch.zeros(0, 3), [], [1, 2, 3])
    assert none["num_queries"] == 0 and math.isnan(none["top1"])
    with pytest.raises(ValueError):
        average_over_pairs([])
