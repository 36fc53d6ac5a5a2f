"""The survival evaluation (training/survival/evaluation.py, td_metrics.py; docs/survival.md §6.4-6.5):
iAUC, pooled c-index, log-rank p and IBS computed by hand on tiny cohorts with ties, and compared with
scikit-survival and lifelines where they define the same thing."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from lifelines.statistics import logrank_test
from lifelines.utils import concordance_index as lifelines_cindex
from sksurv.metrics import concordance_index_censored, integrated_brier_score
from sksurv.metrics import cumulative_dynamic_auc as sksurv_auc
from sksurv.util import Surv

from training.survival.evaluation import (
    TABLE_COLUMNS,
    EvaluationOptions,
    check_predictions,
    evaluate_predictions,
)
from training.survival.report import km_split
from training.survival.td_metrics import (
    censoring_survival,
    cumulative_dynamic_auc,
    integrated_brier,
    kaplan_meier,
    percentile_grid,
)
from utils.errors import InputError

# Reference (training) cases: G by hand: 1 until 2, 4/5 on [2, 4), 8/15 from 4 to the last time 6.
REF_T = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
REF_E = np.array([1, 0, 1, 0, 1, 1], bool)
# Evaluated cases with a tied time (2.5 event / 2.5 censored) and tied risks (2, 2, 2).
EV_T = [1.5, 2.5, 2.5, 3.5, 4.5, 5.5]
EV_E = np.array([1, 1, 0, 1, 0, 1], bool)
EV_R = [3.0, 1.0, 2.0, 2.0, 0.0, 2.0]


def _surv(event, time):
    return Surv.from_arrays(np.asarray(event, bool), np.asarray(time, float))


def test_censoring_distribution_by_hand():
    G = censoring_survival(REF_T, REF_E)
    assert G([0.5, 1.0, 1.9, 2.0, 3.9, 4.0, 6.0]) == pytest.approx([1, 1, 1, 0.8, 0.8, 8 / 15, 8 / 15])
    assert math.isnan(float(G(6.5)))  # beyond the follow-up: undefined


def test_iauc_by_hand_with_tied_risks_and_times():
    # t = 2: one case (1.5, risk 3, weight 1) above all 5 controls -> 1.
    # t = 4: cases 1.5 (r 3, w 1), 2.5 (r 1, w 5/4), 3.5 (r 2, w 5/4); controls 4.5 (r 0), 5.5 (r 2):
    #        (1*2 + 5/4*1 + 5/4*(1 + 1/2)) / ((1 + 5/4 + 5/4) * 2) = 41/56.
    # Evaluated KM: S(2) = 5/6, S(4) = 5/6 * 4/5 * 2/3 = 4/9; mean = (1 * 1/6 + 41/56 * 7/18) / (5/9) = 13/16.
    got = cumulative_dynamic_auc(REF_T, REF_E, EV_T, EV_E, EV_R, [2.0, 4.0])
    assert got.per_time == pytest.approx([1.0, float(Fraction(41, 56))], abs=1e-12)
    assert got.value == pytest.approx(float(Fraction(13, 16)), abs=1e-12)
    assert got.note == ""
    scores, mean = sksurv_auc(_surv(REF_E, REF_T), _surv(EV_E, EV_T), np.array(EV_R), [2.0, 4.0])
    assert got.value == pytest.approx(mean, abs=1e-12) and got.per_time == pytest.approx(scores, abs=1e-12)


def test_iauc_equals_scikit_survival_on_random_cohorts_with_ties():
    rng = np.random.default_rng(3)
    compared = 0
    for _ in range(150):
        ref_t, ref_e = rng.integers(1, 30, 30).astype(float), rng.random(30) < 0.6
        t, e, r = (
            rng.integers(1, 30, 15).astype(float),
            rng.random(15) < 0.6,
            rng.integers(0, 5, 15).astype(float),
        )
        if not e.any():
            continue
        grid = percentile_grid(t)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, mean = sksurv_auc(_surv(ref_e, ref_t), _surv(e, t), r, grid)
        except ValueError:
            continue  # outside scikit-survival's follow-up rule: tested below
        if not np.isfinite(mean):
            continue
        got = cumulative_dynamic_auc(ref_t, ref_e, t, e, r, grid)
        assert got.value == pytest.approx(mean, abs=1e-12)
        compared += 1
    assert compared > 50


def test_iauc_grid_is_cut_where_the_training_follow_up_ends():
    # An evaluated event at 6.5 lies beyond the last training time 6: its weight is undefined, so grid time
    # 7 (where it would be a case) is dropped; scikit-survival refuses the whole evaluation instead.
    t, e, r = [*EV_T, 6.5, 8.0], np.r_[EV_E, True, False], [*EV_R, 1.0, 0.5]
    with pytest.raises(ValueError):
        sksurv_auc(_surv(REF_E, REF_T), _surv(e, t), np.array(r), [2.0, 4.0, 7.0])
    got = cumulative_dynamic_auc(REF_T, REF_E, t, e, r, [2.0, 4.0, 7.0])
    assert list(got.times) == [2.0, 4.0]
    assert "2 of 3 grid times kept" in got.note and "beyond the training follow-up" in got.note
    # The event at 6.5 never enters times 2 and 4: scikit-survival with it censored gives the same value.
    e_cut = np.r_[EV_E, False, False]
    _, mean = sksurv_auc(_surv(REF_E, REF_T), _surv(e_cut, t), np.array(r), [2.0, 4.0])
    assert got.value == pytest.approx(mean, abs=1e-12)


def test_iauc_undefined_without_events():
    got = cumulative_dynamic_auc(REF_T, REF_E, EV_T, np.zeros(6, bool), EV_R, [2.0, 4.0])
    assert math.isnan(got.value) and got.note == "iauc: no events"


def test_integrated_brier_equals_scikit_survival():
    rng = np.random.default_rng(5)
    compared = 0
    for _ in range(60):
        ref_t, ref_e = rng.integers(1, 40, 40).astype(float), rng.random(40) < 0.6
        t, e = rng.integers(2, 30, 20).astype(float), rng.random(20) < 0.6
        grid = np.linspace(np.percentile(t, 10), np.percentile(t, 80), 8)
        curves = np.sort(rng.random((20, grid.size)), axis=1)[:, ::-1]
        try:
            want = integrated_brier_score(_surv(ref_e, ref_t), _surv(e, t), curves, grid)
        except ValueError:
            continue
        got = integrated_brier(ref_t, ref_e, t, e, curves, grid)
        if got.times.size != np.unique(grid).size:
            continue  # grid cut (G = 0 at a grid time): scikit-survival weights such times by 0 instead
        assert got.value == pytest.approx(want, abs=1e-12)
        compared += 1
    assert compared > 20


def test_kaplan_meier_null_curve_by_hand():
    km = kaplan_meier(REF_T, REF_E)
    # events at 1 (6 at risk), 3 (4), 5 (2), 6 (1)
    assert km([0.5, 1, 2.9, 3, 5, 6]) == pytest.approx([1, 5 / 6, 5 / 6, 5 / 8, 5 / 16, 0])


# ------------------------------------------------------------------------------------ c-index, log-rank
def _brute_cindex(t, e, r):
    num = den = 0.0
    for i in range(len(t)):
        for j in range(len(t)):
            if e[i] and (t[i] < t[j] or (t[i] == t[j] and not e[j])):
                den += 1
                num += 1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0
    return num / den


def _hand_logrank_p(t, e, group):
    """Two-group log-rank test written out: sum over event times of O - E and the hypergeometric variance."""
    t, e, group = np.asarray(t, float), np.asarray(e, bool), np.asarray(group, bool)
    o_minus_e = var = 0.0
    for u in np.unique(t[e]):
        at_risk = t >= u
        n, n1 = at_risk.sum(), (at_risk & group).sum()
        d, d1 = (e & (t == u)).sum(), (e & (t == u) & group).sum()
        o_minus_e += d1 - d * n1 / n
        if n > 1:
            var += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    chi2 = o_minus_e**2 / var
    return math.erfc(math.sqrt(chi2 / 2))


def _table(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["fold", "part", "case_id", "risk", "survival_months", "censorship"])


def _two_fold_table():
    """Two folds, 6 evaluated cases each, ties in times and risks; training cases are the other fold's."""
    t = [2, 3, 3, 5, 8, 9, 1, 4, 4, 6, 7, 10]
    c = [0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 1]
    r = [0.9, 0.5, 0.5, 0.4, 0.1, 0.1, 0.8, 0.5, 0.6, 0.5, 0.3, 0.2]
    rows = []
    for fold in (0, 1):
        for i in range(12):
            part = "val" if i // 6 == fold else "train"
            rows.append((fold, part, f"c{i}", r[i] if part == "val" else np.nan, t[i], c[i]))
    return _table(rows), np.array(t, float), np.array(c) == 0, np.array(r)


def test_pooled_cindex_and_logrank_by_hand():
    frame, t, e, r = _two_fold_table()
    result = evaluate_predictions(check_predictions(frame, "toy"))
    table = result.table.set_index("fold")
    assert list(result.table.columns) == list(TABLE_COLUMNS)
    assert list(result.table["fold"]) == ["0", "1", "mean", "std", "pooled"]
    pooled = table.loc["pooled"]
    want = _brute_cindex(t, e, r)
    assert pooled["c_index"] == pytest.approx(want, abs=1e-12)
    assert want == pytest.approx(concordance_index_censored(e, t, r)[0], abs=1e-12)
    assert want == pytest.approx(lifelines_cindex(t, -r, e), abs=1e-12)
    # Pooled median split: median 0.5, risk >= 0.5 is high (7 cases: the four tied 0.5s included).
    high = r >= 0.5
    assert high.sum() == 7 and list(result.split.high) == list(high)
    want_p = _hand_logrank_p(t, e, high)
    assert pooled["logrank_p"] == pytest.approx(want_p, rel=1e-9)
    assert want_p == pytest.approx(
        logrank_test(t[high], t[~high], event_observed_A=e[high], event_observed_B=e[~high]).p_value, rel=1e-9
    )
    # Per-fold rows use the fold's own cases and median; mean and population std of the folds.
    for fold in (0, 1):
        s = slice(6 * fold, 6 * fold + 6)
        row = table.loc[str(fold)]
        assert row["c_index"] == pytest.approx(_brute_cindex(t[s], e[s], r[s]), abs=1e-12)
        assert row["logrank_p"] == pytest.approx(
            _hand_logrank_p(t[s], e[s], r[s] >= np.median(r[s])), rel=1e-9
        )
        assert (row["n_cases"], row["n_events"]) == (6, int(e[s].sum()))
    folds = np.array([table.loc["0", "c_index"], table.loc["1", "c_index"]], float)
    assert table.loc["mean", "c_index"] == pytest.approx(folds.mean())
    assert table.loc["std", "c_index"] == pytest.approx(abs(folds[0] - folds[1]) / 2)  # population std
    assert (
        pooled["n_cases"] == 12
        and math.isnan(pooled["ibs"])
        and "ibs, ibs_km: no survival columns" in pooled["note"]
    )


def test_pooled_iauc_weights_from_the_distinct_training_cases():
    frame, t, e, r = _two_fold_table()
    table = evaluate_predictions(check_predictions(frame, "toy")).table.set_index("fold")
    grid = np.percentile(t, np.linspace(20, 81, 15))
    _, want = sksurv_auc(_surv(e, t), _surv(e, t), r, grid)  # training cases of both folds = all 12
    assert table.loc["pooled", "iauc"] == pytest.approx(want, abs=1e-12)
    s = slice(0, 6)
    _, want0 = sksurv_auc(
        _surv(e[6:], t[6:]), _surv(e[s], t[s]), r[s], np.percentile(t[s], np.linspace(20, 81, 15))
    )
    assert table.loc["0", "iauc"] == pytest.approx(want0, abs=1e-12)


def test_km_split_is_risk_at_or_above_the_median():
    split = km_split([1.0, 2.0, 2.0, 2.0, 0.0], [1, 2, 3, 4, 5], [0, 0, 1, 0, 0])
    assert split.threshold == 2.0 and list(split.high) == [False, True, True, True, False]
    tied = km_split([1.0, 1.0, 1.0], [1, 2, 3], [0, 0, 0])
    assert math.isnan(tied.p_value) and "one risk group is empty" in tied.reason


def test_undefined_fold_is_said_and_left_out_of_the_mean():
    frame, *_ = _two_fold_table()
    frame.loc[(frame["fold"] == 1) & (frame["part"] == "val"), "censorship"] = 1
    frame.loc[
        (frame["fold"] == 0) & (frame["case_id"].isin([f"c{i}" for i in range(6, 12)])), "censorship"
    ] = 1
    table = evaluate_predictions(check_predictions(frame, "toy")).table.set_index("fold")
    assert math.isnan(table.loc["1", "c_index"]) and "c_index: no events" in table.loc["1", "note"]
    assert "iauc: no events" in table.loc["1", "note"]
    assert table.loc["mean", "c_index"] == table.loc["0", "c_index"] and table.loc["std", "c_index"] == 0
    assert "c_index: over 1 of 2 folds (undefined in fold 1)" in table.loc["mean", "note"]


def test_km_threshold_from_training_risks():
    frame, t, e, r = _two_fold_table()
    frame["risk"] = [r[int(c[1:])] for c in frame["case_id"]]  # training rows carry risks too
    result = evaluate_predictions(check_predictions(frame, "toy"), EvaluationOptions(km_threshold="train"))
    # fold 0's threshold is the median of fold 1's cases (its training cases) and vice versa
    want = np.r_[r[:6] >= np.median(r[6:]), r[6:] >= np.median(r[:6])]
    assert list(result.split.high) == list(want)


def test_ibs_and_km_null_reference_with_curves():
    frame, t, e, r = _two_fold_table()
    cuts = (3.0, 6.0)
    for b in range(3):
        frame[f"survival_{b}"] = np.exp(-(b + 1) * frame["risk"].fillna(0.5))
    pred = check_predictions(frame, "toy", cuts)
    table = evaluate_predictions(pred).table.set_index("fold")
    grid = np.linspace(np.percentile(t, 10), min(np.percentile(t, 90), 6.0), 20)
    s = slice(0, 6)
    ev = frame[(frame["fold"] == 0) & (frame["part"] == "val")]
    padded = np.c_[np.ones(6), ev[["survival_0", "survival_1", "survival_2"]].to_numpy()]
    keep = (grid >= t[s].min()) & (grid < t[s].max())
    curves = padded[:, np.searchsorted(cuts, grid[keep], side="right")]
    want = integrated_brier_score(_surv(e[6:], t[6:]), _surv(e[s], t[s]), curves, grid[keep])
    assert table.loc["0", "ibs"] == pytest.approx(want, abs=1e-12)
    km = kaplan_meier(t[6:], e[6:])(grid[keep])
    want_km = integrated_brier_score(_surv(e[6:], t[6:]), _surv(e[s], t[s]), np.tile(km, (6, 1)), grid[keep])
    assert table.loc["0", "ibs_km"] == pytest.approx(want_km, abs=1e-12)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["censorship"]), "missing column(s) censorship"),
        (
            lambda f: f.assign(risk=np.where(f["part"] == "val", np.nan, f["risk"])),
            "risk (empty) is not a finite number",
        ),
        (lambda f: f.assign(survival_months=-f["survival_months"]), "is not a finite number >= 0"),
        (lambda f: f.assign(censorship=2), "censorship '2' is not 0 or 1"),
        (lambda f: f.assign(part="dev"), "part 'dev' is not one of train, val, test"),
        (lambda f: f.assign(fold=1.5), "fold '1.5' is not an integer"),
        (lambda f: pd.concat([f, f.iloc[:1]]), "listed twice"),
        (
            lambda f: f.assign(
                survival_months=np.where(f["fold"] == 1, f["survival_months"] + 1, f["survival_months"])
            ),
            "different survival_months",
        ),
    ],
)
def test_bad_input_is_one_line(change, message):
    frame, *_ = _two_fold_table()
    with pytest.raises(
        InputError,
    ) as err:
        check_predictions(change(frame), "toy.csv")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_fold_without_training_rows_is_refused_unless_asked():
    frame, *_ = _two_fold_table()
    frame = frame[~((frame["fold"] == 1) & (frame["part"] == "train"))]
    with pytest.raises(InputError, match="fold 1 has no train rows.*--censoring evaluated"):
        evaluate_predictions(check_predictions(frame, "toy.csv"))
    table = evaluate_predictions(
        check_predictions(frame, "toy.csv"), EvaluationOptions(censoring="evaluated")
    ).table
    groups = table[~table["fold"].isin(["mean", "std"])]
    assert list(groups["fold"]) == ["0", "1", "pooled"]
    assert groups["note"].str.contains("censoring weights from the evaluated cases").all()
    assert np.isfinite(table["iauc"].astype(float)).all()


def test_table_equals_the_field_script_on_cross_validation_predictions():
    """A 5-fold cross-validation's predictions (float times, tied risks): the table equals what the
    field's evaluation computes with the libraries directly (per fold: scikit-survival c-index and
    ``mean_auc`` on the 20-81 percentile grid with the fold's training cases; np.mean / np.std over folds;
    pooled c-index and the log-rank test of ``risk < np.percentile(risk, 50)`` = low)."""
    rng = np.random.default_rng(11)
    n, k = 120, 5
    x = rng.standard_normal(n)
    event_time, follow_up = rng.exponential(30 * np.exp(-x)), rng.uniform(10, 100, n)
    months = np.minimum(event_time, follow_up)
    months[: n // 2] = np.round(months[: n // 2])  # half the times rounded: tied times
    event = event_time <= follow_up
    risk = np.round(x + rng.normal(scale=0.5, size=n), 1)  # rounded: tied risks
    fold_of = rng.permutation(np.arange(n) % k)
    rows = [
        (f, "val" if fold_of[i] == f else "train", f"c{i}", risk[i], months[i], int(not event[i]))
        for f in range(k)
        for i in range(n)
    ]
    table = evaluate_predictions(check_predictions(_table(rows), "cv")).table.set_index("fold")
    cindex, iauc = [], []
    for f in range(k):
        ev, tr = fold_of == f, fold_of != f
        cindex.append(concordance_index_censored(event[ev], months[ev], risk[ev], tied_tol=1e-8)[0])
        grid = np.percentile(months[ev], np.linspace(20, 81, 15))
        iauc.append(sksurv_auc(_surv(event[tr], months[tr]), _surv(event[ev], months[ev]), risk[ev], grid)[1])
    assert table.loc[[str(f) for f in range(k)], "c_index"].astype(float).to_numpy() == pytest.approx(
        cindex, abs=1e-12
    )
    assert table.loc[[str(f) for f in range(k)], "iauc"].astype(float).to_numpy() == pytest.approx(
        iauc, abs=1e-12
    )
    assert table.loc["mean", "c_index"] == pytest.approx(np.mean(cindex), abs=1e-12)
    assert table.loc["std", "c_index"] == pytest.approx(np.std(cindex), abs=1e-12)
    assert table.loc["mean", "iauc"] == pytest.approx(np.mean(iauc), abs=1e-12)
    assert table.loc["pooled", "c_index"] == pytest.approx(
        concordance_index_censored(event, months, risk)[0], abs=1e-12
    )
    low = risk < np.percentile(risk, 50)
    want = logrank_test(months[~low], months[low], event_observed_A=event[~low], event_observed_B=event[low])
    assert table.loc["pooled", "logrank_p"] == pytest.approx(want.p_value, rel=1e-9)
    assert not table["note"].str.contains("grid times kept|no events|no comparable|empty").any()
