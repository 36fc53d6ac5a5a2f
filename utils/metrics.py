"""Slide-level classification metrics: accuracy, AUC and macro-F1.

AUC follows the published evaluation: binary tasks use the positive-class probability; multi-class
tasks average the one-vs-rest AUC over the classes present in the labels. Whenever AUC is undefined
(a single class in the labels, no slides) it is NaN; probabilities that are not finite are an error
(:class:`utils.errors.NonFiniteError`), never a NaN metric.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

from utils.errors import NonFiniteError


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of slides whose predicted class equals the label (NaN for no slides)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    return float(np.mean(labels == preds)) if labels.size else math.nan


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC from class probabilities ``probs`` [n, C]; NaN where undefined."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.size == 0 or np.unique(labels).size < 2:
        return math.nan
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    per_class = [
        roc_auc_score((labels == c).astype(np.int64), probs[:, c])
        for c in np.unique(labels)
        if c < probs.shape[1]
    ]
    return float(np.mean(per_class))


def macro_f1(labels: np.ndarray, preds: np.ndarray) -> float:
    """Macro-averaged F1 over the classes in labels or predictions (NaN for no slides)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.size == 0:
        return math.nan
    return float(f1_score(labels, preds, average="macro", zero_division=0))


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``{"acc", "auc", "f1"}`` for labels [n] and probabilities [n, C] (prediction = argmax)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = probs.reshape(len(labels), -1)
    bad = ~np.isfinite(probs).all(axis=1) if probs.size else np.zeros(0, dtype=bool)
    if bad.any():
        raise NonFiniteError(
            f"{int(bad.sum())} of {len(bad)} slide(s) with probabilities that are not finite (first: row "
            f"{int(np.flatnonzero(bad)[0])}); no metric is computed from them"
        )
    preds = probs.argmax(axis=1) if len(labels) else np.zeros(0, dtype=np.int64)
    return {"acc": accuracy(labels, preds), "auc": auc(labels, probs), "f1": macro_f1(labels, preds)}
