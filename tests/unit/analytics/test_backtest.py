"""The health backtest's maths: AUC about 0.5 on random scores, high on a planted signal, exact on a hand
case; precision of the red band; points whose horizon has not passed are left out."""

from __future__ import annotations

import random

import pytest

from services.analytics.backtest import Point, evaluate, label, roc_auc


def test_auc_on_a_hand_case_counts_ties_half() -> None:
    # churned: 10, 40; retained: 20, 40, 90 -> pairs (c<r): 10<20,10<40,10<90, 40<90, 40=40 half -> 4.5/6
    assert roc_auc([10, 40, 20, 40, 90], [True, True, False, False, False]) == pytest.approx(4.5 / 6)
    assert roc_auc([1, 2], [True, True]) is None


def test_random_scores_give_about_half_and_a_planted_signal_a_high_auc() -> None:
    rng = random.Random(3)
    churned = [rng.random() < 0.3 for _ in range(5000)]
    noise = [rng.uniform(0, 100) for _ in churned]
    assert roc_auc(noise, churned) == pytest.approx(0.5, abs=0.03)
    signal = [rng.gauss(30 if c else 70, 15) for c in churned]
    auc = roc_auc(signal, churned)
    assert auc is not None
    assert auc > 0.95


def test_labels_follow_activity_after_the_day_and_skip_unknown_outcomes() -> None:
    points = [
        Point("a", 100, 20, "red"),  # no activity in (100, 130] -> churned
        Point("b", 100, 80, "green"),  # active on 110 -> retained
        Point("c", 100, 30, "red"),  # active on 125 -> retained
        Point("a", 190, 10, "red"),  # horizon ends at 220 > last day 200: unknown, left out
        Point("z", 100, 10, "red"),  # no event of z in the store at all: not known there, left out
    ]
    active = {"a": [90, 100], "b": [100, 110], "c": [125]}
    labelled = label(points, active, 30, 200)
    assert [(p.customer_id, churned) for p, churned in labelled] == [("a", True), ("b", False), ("c", False)]
    report = evaluate(labelled)
    assert report["red_points"] == 2
    assert report["red_precision"] == 0.5
    assert report["roc_auc"] == 1.0
