"""Point-wise metrics as SKAB computes them, ranking metrics, report files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomstream.evaluation import REPORT_JSON, REPORT_PNG, Confusion, evaluate, ranking_metrics, write_report
from anomstream.telemetry import NO_LABEL


def test_counts_and_skab_formulas_on_a_hand_made_case():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    flagged = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0], dtype=bool)
    c = Confusion.of(labels, flagged)
    assert (c.tp, c.fp, c.fn, c.tn) == (3, 1, 1, 5)
    assert c.f1 == pytest.approx(3 / (3 + (1 + 1) / 2))  # 0.75
    assert c.far == pytest.approx(100 * 1 / 6)
    assert c.mar == pytest.approx(100 * 1 / 4)
    assert c.precision == pytest.approx(0.75)
    assert c.recall == pytest.approx(0.75)


def test_skab_f1_equals_the_usual_f1():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    flagged = rng.random(500) < 0.4
    c = Confusion.of(labels, flagged)
    assert c.f1 == pytest.approx(2 * c.precision * c.recall / (c.precision + c.recall))


def test_counts_add_over_files_before_the_ratios():
    first = Confusion.of(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0], dtype=bool))
    second = Confusion.of(np.array([1, 0, 0]), np.array([1, 1, 1], dtype=bool))
    total = first + second
    assert (total.tp, total.fp, total.fn, total.tn) == (2, 2, 1, 2)
    assert total.far == pytest.approx(50.0)
    assert total.f1 != pytest.approx((first.f1 + second.f1) / 2)


def test_unlabelled_rows_are_left_out_and_degenerate_cases_are_zero():
    labels = np.array([NO_LABEL, 1, 0, NO_LABEL])
    c = Confusion.of(labels, np.ones(4, dtype=bool))
    assert (c.tp, c.fp, c.fn, c.tn) == (1, 1, 0, 0)
    empty = Confusion.of(np.zeros(3, dtype=int), np.zeros(3, dtype=bool))
    assert (empty.f1, empty.far, empty.mar) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        Confusion.of(np.zeros(3), np.zeros(4, dtype=bool))


def test_ranking_metrics_on_known_orderings():
    labels = np.array([0, 0, 1, 1])
    assert ranking_metrics(labels, np.array([0.1, 0.2, 0.8, 0.9])) == {"roc_auc": 1.0, "pr_auc": 1.0}
    assert ranking_metrics(labels, np.array([0.9, 0.8, 0.2, 0.1]))["roc_auc"] == 0.0
    assert ranking_metrics(labels, np.array([0.1, 0.8, 0.2, 0.9]))["roc_auc"] == pytest.approx(0.75)
    assert ranking_metrics(np.zeros(4, dtype=int), np.arange(4.0)) == {"roc_auc": None, "pr_auc": None}


def test_evaluate_reports_flag_rate_and_quantiles():
    scores = np.arange(101, dtype=float)
    report = evaluate(np.r_[np.zeros(90), np.ones(11)].astype(int), scores, scores > 89)
    assert report["scores"]["flag_rate"] == pytest.approx(11 / 101)
    assert report["scores"]["quantiles"]["q50"] == 50.0
    assert report["scores"]["quantiles"]["q100"] == 100.0
    assert (report["tp"], report["fp"]) == (11, 0)


def test_write_report_makes_json_and_png(tmp_path):
    n = 300
    times = 1_583_748_873_000 + 1000 * np.arange(n)
    labels = (np.arange(n) >= 200).astype(np.int8)
    scores = np.r_[np.full(200, 0.5), np.full(100, 3.0)]
    written = write_report(
        tmp_path,
        event_time_ms=times,
        scores=scores,
        threshold=np.ones(n),
        flagged=scores > 1,
        labels=labels,
        title="test",
        extra={"model": "pca"},
    )
    assert written == [REPORT_JSON, REPORT_PNG]
    report = json.loads((tmp_path / REPORT_JSON).read_text())
    assert (report["f1"], report["far"], report["model"]) == (1.0, 0.0, "pca")
    assert (tmp_path / REPORT_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
