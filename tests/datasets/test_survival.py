"""Survival data model: CSV checks, bins, case-level splits, case bags and attribute prompt files."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from datasets.bag import SlideBag
from datasets.case_bag import concat_case_bag
from datasets.splits import Split, read_split, write_split
from datasets.survival import (
    SPLIT_PARTS,
    SurvivalCase,
    bin_cuts,
    bin_index,
    bin_labels,
    comparable_pairs,
    is_survival_csv,
    make_survival_splits,
    read_survival_csv,
    split_warnings,
    survival_split_path,
    undefined_reason,
)
from datasets.survival_prompts import load_survival_prompts, parse_survival_prompts
from utils.errors import InputError

HEADER = "case_id,slide_id,survival_months,censorship,level0_mag\n"


def _csv(tmp_path, body: str, header: str = HEADER):
    path = tmp_path / "surv.csv"
    path.write_text(header + body)
    return path


# ------------------------------------------------------------------------------------------- the CSV
def test_reads_cases_with_several_slides(tmp_path):
    path = _csv(tmp_path, "c1,s1,10.5,0,40\nc2,s2,3,1,20\nc1,s3,10.5,0,40\n")
    table = read_survival_csv(path)
    assert [c.case_id for c in table.cases] == ["c1", "c2"]
    assert table.cases[0].slides == ("s1", "s3") and table.cases[0].event
    assert table.cases[1].months == 3.0 and table.cases[1].censorship == 1 and not table.cases[1].event
    assert table.rows["s2"] == ["c2", 3.0, 1, 20]
    assert is_survival_csv(path)


@pytest.mark.parametrize(
    ("header", "body", "message"),
    [
        ("case_id,slide_id,censorship,level0_mag\n", "c1,s1,0,40\n", "missing column(s) survival_months"),
        (
            "case_id,slide_id,survival_months,level0_mag\n",
            "c1,s1,3,40\n",
            "missing column(s) censorship",
        ),
        (HEADER, "c1,s1,-2,0,40\n", "survival_months must be >= 0"),
        (HEADER, "c1,s1,nan,0,40\n", "survival_months must be a number"),
        (HEADER, "c1,s1,abc,0,40\n", "survival_months must be a number"),
        (HEADER, "c1,s1,inf,0,40\n", "survival_months must be a number"),
        (HEADER, "c1,s1,3,2,40\n", "censorship must be 0 (event) or 1 (censored)"),
        (HEADER, "c1,s1,3,yes,40\n", "censorship must be 0 (event) or 1 (censored)"),
        (HEADER, "c1,s1,3,0,40\nc1,s2,4,0,40\n", "case c1 has conflicting survival_months"),
        (HEADER, "c1,s1,3,0,40\nc1,s2,3,1,40\n", "case c1 has conflicting censorship"),
        (HEADER, "c1,s1,,0,40\n", "empty 'survival_months'"),
        (HEADER, "c1,s1,3,0,30\n", "level0_mag must be 20 or 40"),
        (HEADER, "c1,s1,3,0,40\nc2,s1,4,0,40\n", "duplicate slide ids"),
    ],
)
def test_csv_errors_are_one_line(tmp_path, header, body, message):
    with pytest.raises(InputError) as err:
        read_survival_csv(_csv(tmp_path, body, header))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_negative_time_error_names_the_row(tmp_path):
    with pytest.raises(InputError, match="first at data row 2"):
        read_survival_csv(_csv(tmp_path, "c1,s1,3,0,40\nc2,s2,-1,0,40\n"))


def test_classification_csv_is_not_survival(tmp_path):
    path = tmp_path / "cls.csv"
    path.write_text("case_id,slide_id,label,level0_mag\nc,s,A,40\n")
    assert not is_survival_csv(path) and not is_survival_csv(tmp_path / "absent.csv")


# ------------------------------------------------------------------------------------------- bins
def _table(tmp_path, months, censorship):
    body = "".join(f"c{i},s{i},{m},{c},40\n" for i, (m, c) in enumerate(zip(months, censorship)))
    return read_survival_csv(_csv(tmp_path, body))


def test_bins_are_quartiles_of_uncensored_times_only(tmp_path):
    # uncensored: 1..8 (quartiles 2.75, 4.5, 6.25); the censored 100 and 0.5 do not move the cuts
    months = [1, 2, 3, 4, 5, 6, 7, 8, 100, 0.5]
    table = _table(tmp_path, months, [0] * 8 + [1, 1])
    cuts = bin_cuts(table, 4)
    assert cuts == pytest.approx((2.75, 4.5, 6.25))
    assert bin_index([0.0, 2.74, 2.75, 4.5, 6.24, 6.25, 1e6], cuts).tolist() == [0, 0, 1, 2, 2, 3, 3]
    assert bin_labels(cuts)[0] == "[0, 2.75)" and bin_labels(cuts)[-1] == "[6.25, inf)"


def test_bins_need_enough_distinct_uncensored_times(tmp_path):
    with pytest.raises(InputError, match="at least 4 cases with censorship 0"):
        bin_cuts(_table(tmp_path, [1, 2, 3, 4], [0, 0, 0, 1]), 4)
    with pytest.raises(InputError, match="repeated quantile cut points"):
        bin_cuts(_table(tmp_path, [5, 5, 5, 5, 5, 6], [0] * 6), 4)


# ------------------------------------------------------------------------------------------- splits
def _cohort(tmp_path, n=83, seed=0):
    rng = np.random.default_rng(seed)
    months = np.round(rng.exponential(30, n) + 0.1, 2)
    censor = (rng.random(n) < 0.35).astype(int)
    return _table(tmp_path, months, censor)


@pytest.mark.parametrize("test_part", [False, True])
def test_survival_splits_are_stratified_and_evaluate_every_case_once(tmp_path, test_part):
    table = _cohort(tmp_path)
    cuts = bin_cuts(table, 4)
    splits, group = make_survival_splits(table, cuts, k=5, seed=3, test_part=test_part)
    ids = [c.case_id for c in table.cases]
    evaluated = Counter(c for s in splits for c in (s.test if test_part else s.val))
    assert set(evaluated) == set(ids) and set(evaluated.values()) == {1}
    for fold, split in enumerate(splits):
        parts = [set(split.train), set(split.val), set(split.test)]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert len(split.train) + len(split.val) + len(split.test) == len(ids)
        if test_part:
            assert set(split.val) == set(splits[(fold + 1) % 5].test)
            assert set(split.test) == {c for c, g in zip(ids, group) if g == fold}
        else:  # the field's layout: train on 4 of 5 groups, evaluate on the fifth
            assert split.test == [] and set(split.val) == {c for c, g in zip(ids, group) if g == fold}
    bins = bin_index(table.months, cuts)
    strata = {(int(b), int(c)) for b, c in zip(bins, table.censorship)}
    assert len(strata) > 4
    for stratum in strata:
        members = [i for i in range(len(ids)) if (bins[i], table.censorship[i]) == stratum]
        counts = np.bincount(group[members], minlength=5)
        assert counts.max() - counts.min() <= 1, stratum
    sizes = np.bincount(group, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    events = np.bincount(group[table.censorship == 0], minlength=5)
    assert events.max() - events.min() <= 1  # event strata are dealt first


def test_survival_splits_are_seeded_and_order_independent(tmp_path):
    table = _cohort(tmp_path)
    cuts = bin_cuts(table, 4)
    first, _ = make_survival_splits(table, cuts, k=5, seed=3)
    again, _ = make_survival_splits(table, cuts, k=5, seed=3)
    other, _ = make_survival_splits(table, cuts, k=5, seed=4)
    assert [s.val for s in first] == [s.val for s in again] and [s.val for s in first] != [
        s.val for s in other
    ]
    shuffled = type(table)(table.path, list(reversed(table.cases)), table.rows)
    reordered, _ = make_survival_splits(shuffled, cuts, k=5, seed=3)
    assert [set(s.val) for s in reordered] == [set(s.val) for s in first]


def test_survival_split_files_hold_case_ids_in_the_published_layouts(tmp_path):
    table = _cohort(tmp_path, n=20)
    splits, _ = make_survival_splits(table, bin_cuts(table, 4), k=4, seed=1, test_part=True)
    path = survival_split_path(tmp_path / "splits", "t", 2)
    assert path == tmp_path / "splits" / "t" / "t_survival" / "splits_2.csv"
    write_split(path, splits[2])
    assert path.read_text().splitlines()[0] == ",train,val,test"
    back = read_split(path, item="case")
    assert (back.train, back.val, back.test) == (splits[2].train, splits[2].val, splits[2].test)
    field_splits, _ = make_survival_splits(table, bin_cuts(table, 4), k=4, seed=1)
    write_split(path, field_splits[2], SPLIT_PARTS)
    assert path.read_text().splitlines()[0] == ",train,val"
    back = read_split(path, item="case", require_test=False)
    assert (back.train, back.val, back.test) == (field_splits[2].train, field_splits[2].val, [])
    with pytest.raises(InputError, match=r"missing column\(s\) test"):
        read_split(path, item="case")  # classification splits still need their test part


def test_mcat_split_file_is_read_unchanged(tmp_path):
    """A split file as MCAT / Patch-GCN ship them (``splits/5foldcv/<study>/splits_<k>.csv``): header
    ``,train,val``, the shorter val column padded with empty cells."""
    path = tmp_path / "splits_0.csv"
    path.write_text(",train,val\n0,TCGA-2F-A9KO,TCGA-4Z-AA7M\n1,TCGA-2F-A9KP,TCGA-4Z-AA7N\n2,TCGA-2F-A9KQ,\n")
    split = read_split(path, item="case", require_test=False)
    assert split.train == ["TCGA-2F-A9KO", "TCGA-2F-A9KP", "TCGA-2F-A9KQ"]
    assert split.val == ["TCGA-4Z-AA7M", "TCGA-4Z-AA7N"] and split.test == []


def test_survival_split_fold_counts(tmp_path):
    table = _cohort(tmp_path, n=20)
    cuts = bin_cuts(table, 4)
    with pytest.raises(InputError, match=r"--k must be >= 2 .*train/val"):
        make_survival_splits(table, cuts, k=1)
    with pytest.raises(InputError, match=r"--k must be >= 3 .*train/val/test"):
        make_survival_splits(table, cuts, k=2, test_part=True)
    splits, _ = make_survival_splits(table, cuts, k=2)
    assert [len(s.train) + len(s.val) for s in splits] == [20, 20]


def test_fewer_events_than_folds_is_refused(tmp_path):
    table = _table(tmp_path, [1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 1, 1, 1, 1])
    with pytest.raises(InputError, match="4 event\\(s\\) .* among 8 cases, fewer than the 5 folds"):
        make_survival_splits(table, bin_cuts(table, 2), k=5)
    splits, _ = make_survival_splits(table, bin_cuts(table, 2), k=4)
    assert all({"c0", "c1", "c2", "c3"} & set(s.val) for s in splits)  # every val part holds an event


def test_comparable_pairs_by_hand():
    # times 2 (event), 3 (censored), 3 (event), 5 (censored), 5 (event). The event at 2 precedes the
    # four others (4); the event at 3 precedes both 5s (2) and ties the censored 3 (1); the event at 5
    # ties the censored 5 (1): 8 pairs.
    assert comparable_pairs([2, 3, 3, 5, 5], [0, 1, 0, 1, 0]) == 8
    assert comparable_pairs([4, 1, 2], [0, 1, 1]) == 0  # the only event is the last time
    assert undefined_reason([1, 2], [1, 1]) == "no event among its 2 case(s)"
    assert undefined_reason([4, 1, 2], [0, 1, 1]).startswith("no comparable pair among its 3 case(s)")
    assert undefined_reason([1, 2], [0, 1]) is None


def test_split_warnings_name_the_fold_part_and_reason():
    cases = {
        "a": SurvivalCase("a", ("a",), 1.0, 0),
        "b": SurvivalCase("b", ("b",), 2.0, 1),
        "c": SurvivalCase("c", ("c",), 3.0, 1),
        "d": SurvivalCase("d", ("d",), 9.0, 0),
        "e": SurvivalCase("e", ("e",), 4.0, 1),
    }
    splits = {
        0: Split(train=["a", "d"], val=["b", "c"]),  # val: no event
        1: Split(train=["b", "c"], val=["a", "d"], test=["d", "e"]),  # train: no event; test: d after e
        2: Split(train=["b", "d"], val=["a", "c"]),  # fine
    }
    assert split_warnings(splits, cases) == [
        "fold 0: val part has no event among its 2 case(s) (c-index undefined)",
        "fold 1: train part has no event; the survival loss learns little",
        "fold 1: test part has no comparable pair among its 2 case(s) (no time after an event) (c-index undefined)",
    ]


# ------------------------------------------------------------------------------------------- case bags
def _slide(slide_id: str, n5: int, width: int, seed: int) -> SlideBag:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n5, width, generator=g) < 0.5
    mask[:, 0] = True
    return SlideBag(
        slide_id,
        torch.randn(n5, 4, generator=g),
        torch.randn(n5, width, 4, generator=g) * mask[..., None],
        mask,
        coords5=torch.zeros(n5, 2, dtype=torch.long),
        coords20=torch.zeros(n5, width, 2, dtype=torch.long),
    )


def test_case_bag_concatenates_5x_rows_and_matching_hierarchical_rows():
    a, b = _slide("a", 3, 16, 0), _slide("b", 2, 4, 1)
    case = SurvivalCase("c", ("a", "b"), 12.0, 1)
    bag = concat_case_bag(case, [a, b], label=2)
    assert bag.slide_id == "c" and bag.case_id == "c" and bag.label == 2
    assert (bag.months, bag.censorship, bag.slide_ids, bag.slide_rows) == (12.0, 1, ("a", "b"), (0, 3))
    assert torch.equal(bag.x5, torch.cat([a.x5, b.x5]))
    assert bag.x20.shape == (5, 16, 4) and bag.child_mask.shape == (5, 16)
    assert torch.equal(bag.x20[:3], a.x20) and torch.equal(bag.x20[3:, :4], b.x20)
    assert not bag.child_mask[3:, 4:].any() and torch.equal(bag.child_mask[3:, :4], b.child_mask)
    assert bag.num_20x == a.num_20x + b.num_20x
    moved = bag.to("cpu")
    assert moved.case_id == "c" and moved.months == 12.0 and moved.slide_rows == (0, 3)


# ------------------------------------------------------------------------------------------- prompts
GOOD = {
    "tumour": {"region": "sheets of tumour", "patch": "atypical nuclei"},
    "immune": {"region": "lymphoid aggregates", "patch": "small lymphocytes"},
}


def test_prompt_file_loads_and_renders(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(GOOD))
    prompts = load_survival_prompts(path)
    assert prompts.attributes == ("tumour", "immune")
    assert prompts.descriptions("region") == ["tumour : sheets of tumour", "immune : lymphoid aggregates"]
    assert prompts.descriptions("patch")[1] == "immune : small lymphocytes"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "expected"),
        (json.dumps({"tumour": GOOD["tumour"]}), "at least 2 are needed"),
        ('{"a": {"region": "x", "patch": "y"}, "a": {"region": "x", "patch": "y"}}', "appears twice"),
        (
            json.dumps({**GOOD, "necrosis": {"region": "x"}}),
            "expected exactly 'region' (5x) and 'patch' (20x)",
        ),
        (
            json.dumps({**GOOD, "necrosis": {"region": "x", "patch": " "}}),
            "patch description must be a non-empty",
        ),
        (json.dumps({**GOOD, "necrosis": "dead tissue"}), "is not an object"),
        (json.dumps({**GOOD, " ": {"region": "x", "patch": "y"}}), "empty attribute name"),
    ],
)
def test_prompt_file_errors(text, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_survival_prompts(text, "p.json")


def test_missing_prompt_file_is_one_line(tmp_path):
    with pytest.raises(InputError, match="prompt file not found"):
        load_survival_prompts(tmp_path / "none.json")


def test_shipped_hila_prompt_files_are_valid():
    from tests.paths import PROJECT

    files = sorted((PROJECT / "text_prompt" / "HiLa").glob("*.json"))
    assert files
    for path in files:
        prompts = load_survival_prompts(path)
        assert len(prompts.attributes) >= 6 and len(set(prompts.region)) == len(prompts.region)
