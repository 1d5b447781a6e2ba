import math

import pytest
import torch

from mmke_eval import metrics


def test_token_accuracy_by_hand():
    # 3 of 4 answer tokens predicted
    assert metrics.token_accuracy([5, 6, 9, 8], [5, 6, 7, 8]) == 0.75
    assert math.isnan(metrics.token_accuracy([], []))
    with pytest.raises(ValueError):
        metrics.token_accuracy([1], [1, 2])


def test_topk_agreement_rank_order_by_hand():
    pre = torch.tensor([[1, 2, 3], [4, 5, 6]])
    post = torch.tensor([[1, 3, 2], [4, 5, 6]])
    # top-1: both positions agree
    assert metrics.topk_agreement(pre, post, 1) == 1.0
    # top-3, element-wise in rank order: row 0 agrees on 1 of 3, row 1 on 3 of 3 -> 4/6
    assert metrics.topk_agreement(pre, post, 3) == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        metrics.topk_agreement(pre, post, 4)


def test_topk_agreement_aligns_the_last_positions():
    pre = torch.tensor([[7], [1], [2]])
    post = torch.tensor([[1], [9]])
    # last two of pre ([1],[2]) against post ([1],[9]) -> 1/2
    assert metrics.topk_agreement(pre, post, 1) == 0.5


def test_exact_match_and_contains_normalise():
    assert metrics.exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert metrics.exact_match("Paris, France", "Paris") == 0.0
    assert metrics.contains("He lives in Paris, France.", "paris") == 1.0
    assert metrics.contains("Parisian food", "Paris") == 0.0  # whole words only
    assert metrics.contains("anything", "") == 0.0


def test_case_mean_averages_within_then_across_cases():
    items = [
        {"case": "a", "score": 1.0},
        {"case": "a", "score": 0.5},  # case a: 0.75
        {"case": "b", "score": 0.25},  # case b: 0.25
        {"case": "c", "score": float("nan")},  # no valid probe: left out
    ]
    assert metrics.case_mean(items) == pytest.approx(50.0)
    assert math.isnan(metrics.case_mean([]))
