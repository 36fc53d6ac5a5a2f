"""Demo data: layout, content, determinism, safe reuse, learnability of the planted signal."""

from __future__ import annotations

import json
import threading

import h5py
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from datasets.dataset_csv import read_dataset_csv
from datasets.features import read_slide_bag
from datasets.splits import read_split
from datasets.tasks import get_task
from preprocess.consistency import check_slide
from preprocess.demo import DEMO_PROMPTS, default_demo_root, ensure_demo_data, task_defaults
from tests.data_fixtures import snapshot


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return ensure_demo_data(tmp_path_factory.mktemp("cache") / "demo", seed=0)


@pytest.fixture(scope="module")
def table(demo):
    return read_dataset_csv(demo.task.csv_path, demo.task)


def test_layout_and_table(demo, table):
    assert demo.task.name == "demo" and demo.task.num_classes == 3
    assert demo.feature_extractor == "demo" and demo.feature_dim == 64 and demo.num_folds == 3
    assert demo.layout.root == demo.data_root_dir / "demo_demo"
    assert len(table) == 48 and table.label.value_counts().tolist() == [16, 16, 16]
    assert (table.case_id.value_counts() == 2).sum() == 9  # patients with two slides
    assert set(table.level0_mag) == {20, 40}
    for fold in range(3):
        split = read_split(demo.split_path(fold))
        label_of = dict(zip(table.slide_id, table.label))
        assert [sum(label_of[s] == c for s in split.train) for c in demo.task.class_names] == [8, 8, 8]
        assert split.val and split.test


def test_slides_are_realistic(demo, table):
    childless = partial = orphans = 0
    for slide, level0 in zip(table.slide_id, table.level0_mag):
        with h5py.File(demo.layout.low_file(slide), "r") as f:
            coords5 = f["coords"][()]
        assert 20 <= len(coords5) <= 60
        size = 2048 if level0 == 40 else 1024
        assert len(np.unique((coords5 - coords5.min(0)) % size, axis=0)) == 1  # one regular grid
        with h5py.File(demo.layout.hier_file(slide), "r") as f:
            mask = f["child_mask"][()]
            assert f.attrs["level0_mag"] == level0 and f["features"].shape[1:] == (16, 64)
            orphans += int(f.attrs["num_orphans20"])
        childless += len(coords5) - len(mask)
        partial += int(((mask.sum(1) > 0) & (mask.sum(1) < 16)).sum())
    assert childless > 0 and partial > 0 and orphans > 0


def test_prompts(demo):
    prompts = json.loads(demo.task.prompt_file().read_text())
    assert list(prompts) == list(demo.task.class_names) == list(DEMO_PROMPTS)
    for entries in prompts.values():
        assert len(entries) == 16 and all(isinstance(v, str) and v for v in entries.values())


def _arrays(path):
    with h5py.File(path, "r") as f:
        return f["features"][()], f["coords"][()]


def test_deterministic_and_seeded(demo, tmp_path):
    again = ensure_demo_data(tmp_path / "demo", seed=0)
    texts = (
        "dataset_csv/demo.csv",
        "splits/demo/demo_8/splits_2.csv",
        "text_prompt/HiVE_MIL/curated/demo.json",
    )
    for name in texts:
        assert (again.root / name).read_bytes() == (demo.root / name).read_bytes()
    slide = "demo_slide_005"
    for path_of in (demo.layout.low_file, demo.layout.high_file, demo.layout.hier_file):
        path = path_of(slide)
        for a, b in zip(_arrays(path), _arrays(again.root / path.relative_to(demo.root))):
            np.testing.assert_array_equal(a, b)

    other = ensure_demo_data(tmp_path / "demo", seed=1)  # another seed replaces the tree in place
    assert json.loads((other.root / "DEMO_VERSION.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary folders left
    first, second = _arrays(demo.layout.low_file(slide))[0], _arrays(other.layout.low_file(slide))[0]
    assert first.shape != second.shape or not np.array_equal(first, second)


def test_reused_unless_forced_or_other_seed(demo):
    marker = demo.root / "DEMO_VERSION.json"
    stamp = marker.stat().st_mtime_ns
    ensure_demo_data(demo.root, seed=0)
    assert marker.stat().st_mtime_ns == stamp


def test_concurrent_first_use(tmp_path):
    root = tmp_path / "demo"
    results, errors = [], []

    def worker():
        try:
            results.append(ensure_demo_data(root, seed=2))
        except Exception as err:  # re-raised below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2
    assert json.loads((root / "DEMO_VERSION.json").read_text())["seed"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary folders left
    files = snapshot(root)
    assert sum(k.endswith(".h5") for k in files) == 48 * 3


def test_default_root_and_task_follow_cache_env(monkeypatch, tmp_path, demo):
    monkeypatch.setenv("HIVEMIL_CACHE", str(demo.root.parent))
    assert default_demo_root() == demo.root
    defaults = task_defaults("demo")  # what `main.py --task demo` expands to
    task = get_task(
        "demo", csv_dir=defaults["csv_dir"], prompt_dir=defaults["prompt_dir"], llm=defaults["LLM"]
    )
    assert task == demo.task and defaults["data_root_dir"] == str(demo.data_root_dir)
    assert task_defaults("tcga_brca") == {}


def test_signal_is_learnable_by_mean_pooling(demo, table):
    features = {}
    for slide, label in zip(table.slide_id, table.label_idx):
        bag = read_slide_bag(demo.layout, slide, int(label), expected_dim=64)
        features[slide] = bag.x20[bag.child_mask].mean(0).numpy()
    label_of = dict(zip(table.slide_id, table.label_idx))
    for fold in range(3):
        split = read_split(demo.split_path(fold))
        held_out = split.val + split.test
        clf = LogisticRegression(max_iter=2000).fit(
            [features[s] for s in split.train], [label_of[s] for s in split.train]
        )
        accuracy = clf.score([features[s] for s in held_out], [label_of[s] for s in held_out])
        assert accuracy >= 0.85, (fold, accuracy)


def test_demo_files_pass_the_consistency_checker(demo, table):
    for slide, level0 in zip(table.slide_id, table.level0_mag):
        report = check_slide(demo.layout, slide, int(level0))
        assert report.ok, report.line()
