"""The committed golden case: ``--variant reference`` equals the released code in a plain clone.

``tests/fixtures/golden_case_two_n30_s1.pt`` is one case of ``../shared/golden`` (computed by the
authors' released code: 2 classes, 30 5x patches, TGDF keeps 23 of them) trimmed by
``scripts/trim_golden_case.py``: the tiny CLIP tower keeps only the token-embedding rows its prompts
use. The tower is rebuilt around them and the whole released computation is checked to 1e-5 (text
features, TGDF mask, logits, HTCL, loss, one Adam step), with no ``../shared`` needed.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.golden_case import (
    TOL,
    assert_matches_released,
    case_descriptions,
    max_abs_diff,
    tower_from_weights,
)
from tests.paths import GOLDEN, GOLDEN_TOWER, PROJECT, missing

FIXTURE = PROJECT / "tests" / "fixtures" / "golden_case_two_n30_s1.pt"
TOKEN_EMBEDDING = "text_model.embeddings.token_embedding.weight"


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=False)


@pytest.fixture(scope="module")
def tower(fixture):
    return tower_from_weights(fixture["tower_config"], fixture["tower_weights"], fixture["token_rows"])


def test_fixture_is_small_and_complete(fixture):
    assert sum(p.stat().st_size for p in FIXTURE.parent.iterdir()) < 2_000_000
    assert fixture["format"] == "hivemil-golden-trimmed/1"
    case = fixture["case"]
    assert case["x5"].shape == (30, 64) and case["x20"].shape == (30, 16, 64)
    assert 0 < int(case["x5_mask"].sum()) < 30  # TGDF drops some 5x patches: a filtering case
    used = torch.cat([ids.flatten() for ids in case["tokenized_prompts"].values()]).unique()
    assert set(used.tolist()) <= set(fixture["token_rows"].tolist())
    assert fixture["tower_weights"][TOKEN_EMBEDDING].shape == (fixture["token_rows"].numel(), 64)
    assert not any(k.startswith("custom_vlm.text_encoder.") for k in case["state_dict"])


def test_committed_case_matches_released_code(tower, fixture):
    case = fixture["case"]
    assert_matches_released(tower, case, case_descriptions(fixture["prompts"], case["classes"]))


def test_unused_token_rows_do_not_change_text_features(fixture):
    """Rows outside ``token_rows`` are never read: random values there give the same text features."""
    from tests.golden_case import build_for_case

    case = fixture["case"]
    descriptions = case_descriptions(fixture["prompts"], case["classes"])
    zero_tower = tower_from_weights(fixture["tower_config"], fixture["tower_weights"], fixture["token_rows"])
    noisy_tower = tower_from_weights(fixture["tower_config"], fixture["tower_weights"], fixture["token_rows"])
    embedding = noisy_tower.embeddings.token_embedding.weight
    unused = torch.ones(embedding.shape[0], dtype=torch.bool)
    unused[fixture["token_rows"]] = False
    with torch.no_grad():
        embedding[unused] = torch.randn(
            int(unused.sum()), embedding.shape[1], generator=torch.Generator().manual_seed(1)
        )
    for variant in ("reference", "corrected"):
        with torch.no_grad():
            a = build_for_case(zero_tower, case, descriptions, variant).encode_text()
            b = build_for_case(noisy_tower, case, descriptions, variant).encode_text()
        assert max_abs_diff(a.x5, b.x5) < TOL and max_abs_diff(a.x20, b.x20) < TOL


def test_fixture_regenerates_from_shared_golden(fixture):
    """The committed file equals a fresh trim of the case it was made from (skipped where ../shared
    lacks that case, its tower or its prompt file)."""
    source = fixture["source"]
    absent = missing(
        GOLDEN / source["case"], GOLDEN_TOWER / "config.json", GOLDEN_TOWER / "model.safetensors",
        GOLDEN / source["prompts"],
    )  # fmt: skip
    if absent:
        pytest.skip(absent)
    spec = importlib.util.spec_from_file_location(
        "trim_golden_case", PROJECT / "scripts" / "trim_golden_case.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = module.trim(GOLDEN, fixture["source"]["case"])
    assert fresh["source"] == fixture["source"]
    assert fresh["token_rows"].tolist() == fixture["token_rows"].tolist()
    assert fresh["tower_weights"].keys() == fixture["tower_weights"].keys()
    for key, value in fresh["tower_weights"].items():
        assert torch.equal(value, fixture["tower_weights"][key]), key
    assert fresh["case"]["state_dict"].keys() == fixture["case"]["state_dict"].keys()
    for key, value in fresh["case"]["state_dict"].items():
        assert torch.equal(value, fixture["case"]["state_dict"][key]), key
    for key in ("x5", "x20", "label", "logits", "loss", "ctx_after_step", "loss_after_step", "x5_mask"):
        assert torch.equal(fresh["case"][key], fixture["case"][key]), key
