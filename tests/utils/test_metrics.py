"""Metrics (utils/metrics.py) and result summaries (utils/results.py) against hand-computed values."""

import math

import numpy as np
import pytest

from training.results import format_summary_table, summary_frames
from utils.metrics import accuracy, auc, classification_metrics, macro_f1


def test_accuracy_and_f1_by_hand():
    labels = np.array([0, 0, 1, 1, 1])
    preds = np.array([0, 1, 1, 1, 0])
    assert accuracy(labels, preds) == pytest.approx(3 / 5)
    # class 0: tp 1, fp 1, fn 1 -> F1 0.5; class 1: tp 2, fp 1, fn 1 -> F1 2/3
    assert macro_f1(labels, preds) == pytest.approx((0.5 + 2 / 3) / 2)


def test_binary_auc_uses_positive_probability():
    labels = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    # positive/negative pairs ranked right: (0.35>0.1), (0.8>0.1), (0.8>0.4); wrong: (0.35<0.4) -> 3/4
    assert auc(labels, np.stack([1 - p1, p1], axis=1)) == pytest.approx(0.75)


def test_multiclass_auc_mean_one_vs_rest():
    labels = np.array([0, 1, 2, 0])
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6], [0.3, 0.5, 0.2]])
    # class 0 vs rest: pos {0.6, 0.3}, neg {0.5, 0.2}: pairs right 0.6>0.5, 0.6>0.2, 0.3>0.2 -> 3/4
    # class 1 vs rest: pos {0.4}, neg {0.3, 0.2, 0.5}: right 2 of 3 -> 2/3
    # class 2 vs rest: pos {0.6}, neg {0.1, 0.1, 0.2}: 1
    assert auc(labels, probs) == pytest.approx((0.75 + 2 / 3 + 1.0) / 3)


def test_multiclass_auc_skips_absent_classes():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.3, 0.6, 0.1], [0.1, 0.3, 0.6]])
    # class 0 vs rest: pos {0.7, 0.4}, neg {0.3, 0.1}: 1; class 1: pos {0.6, 0.3}, neg {0.2, 0.5}: 3/4
    assert auc(labels, probs) == pytest.approx((1.0 + 0.75) / 2)


def test_undefined_auc_is_nan_not_an_error():
    assert math.isnan(auc(np.array([1, 1, 1]), np.array([[0.2, 0.8]] * 3)))
    assert math.isnan(auc(np.array([], dtype=int), np.zeros((0, 2))))
    metrics = classification_metrics(np.array([], dtype=int), np.zeros((0, 2)))
    assert all(math.isnan(v) for v in metrics.values())


def test_classification_metrics_uses_argmax():
    labels = np.array([0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    m = classification_metrics(labels, probs)
    assert m["acc"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(1.0)  # pos {0.7, 0.4} both above neg {0.1}


def test_summary_uses_population_std():
    rows = [
        {
            "fold": 0,
            "test_acc": 0.5,
            "test_auc": 0.6,
            "test_f1": 0.4,
            "val_acc": 1.0,
            "val_auc": 1.0,
            "val_f1": 1.0,
        },
        {
            "fold": 1,
            "test_acc": 1.0,
            "test_auc": 0.8,
            "test_f1": 0.6,
            "val_acc": 0.0,
            "val_auc": 0.5,
            "val_f1": 0.0,
        },
    ]
    summary, results = summary_frames(rows)
    assert list(summary.columns) == [
        "folds",
        "test_acc",
        "test_auc",
        "test_f1",
        "val_acc",
        "val_auc",
        "val_f1",
    ]
    assert list(results["metric"]) == ["mean", "std"]
    assert results["test_acc"].tolist() == pytest.approx([0.75, 0.25])  # population std of (0.5, 1.0)
    assert results["val_auc"].tolist() == pytest.approx([0.75, 0.25])
    table = format_summary_table(rows)
    assert "0.7500 ± 0.2500" in table and len(table.splitlines()) == 4
