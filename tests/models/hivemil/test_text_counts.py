"""``--num-low-mag-texts`` / ``--num-high-mag-subtexts`` at other values, as released (docs/divergences.md §17).

The released model stacks each class's text features (one per prompt-file entry) and slices them: the
first ``num_low_mag_texts`` rows are the 5x texts, *all* the other rows the 20x texts; HTCL groups the
20x texts evenly over the 5x ones. Checked on the committed golden case (16 entries per class), whose
released text features are known row by row.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from datasets.prompt_file import load_prompt_file, released_slicing_notice
from models.convert_checkpoint import released_to_ours
from models.hivemil.model import HiveMIL
from tests.golden_case import case_bag, case_descriptions, case_options, tower_from_weights
from tests.paths import PROJECT
from utils.errors import InputError

FIXTURE = PROJECT / "tests" / "fixtures" / "golden_case_two_n30_s1.pt"


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=False)


@pytest.fixture(scope="module")
def tower(fixture):
    return tower_from_weights(fixture["tower_config"], fixture["tower_weights"], fixture["token_rows"])


def _model(tower, fixture, n_low: int, n_high: int) -> HiveMIL:
    case = fixture["case"]
    options = dataclasses.replace(case_options(case), num_low_mag_texts=n_low, num_high_mag_subtexts=n_high)
    model = HiveMIL(tower, case_descriptions(fixture["prompts"], case["classes"]), options)
    model.load_state_dict(released_to_ours(case["state_dict"]))
    return model


def test_two_low_texts_slice_the_released_text_features(tower, fixture):
    case = fixture["case"]
    model = _model(tower, fixture, n_low=2, n_high=3)
    with torch.no_grad():
        text = model.encode_text()
        out = model(case_bag(case))
    released = torch.stack([case["text_features"][c] for c in case["classes"]])  # [C, 16, D]
    assert torch.allclose(text.x5, released[:, :2].reshape(-1, released.shape[-1]), atol=1e-5)
    assert torch.allclose(text.x20, released[:, 2:].reshape(-1, released.shape[-1]), atol=1e-5)
    assert out.logits.shape == (1, 2) and torch.isfinite(out.logits).all() and torch.isfinite(out.htcl)
    assert out.x5_kept.shape[1] == 2 * 2 and out.x20_kept.shape[1] == 2 * 14


def test_uneven_twenty_x_rows_are_refused_as_the_released_htcl_would_crash(tower, fixture):
    with pytest.raises(InputError, match="multiple of 3"):
        _model(tower, fixture, n_low=3, n_high=3)  # 13 20x texts over 3 5x texts


def test_prompt_file_read_as_released_and_the_notice(tmp_path, fixture):
    path = tmp_path / "prompts.json"
    import json

    path.write_text(json.dumps(fixture["prompts"]))
    assert released_slicing_notice(load_prompt_file(path, n_coarse=4, n_fine_per_coarse=None), 3) is None
    sliced = load_prompt_file(path, n_coarse=2, n_fine_per_coarse=None)
    cls = sliced.classes[0]
    assert sliced.n_fine_per_coarse == 7 and len(sliced.fine[cls]) == 14
    assert sliced.descriptions(cls) == load_prompt_file(path).descriptions(cls)  # same rows, same order
    notice = released_slicing_notice(sliced, 3)
    assert "first 2 are the 5x texts and all 14 others the 20x texts" in notice
    assert "0 descriptions left unused, +8 against the flags" in notice
    with pytest.raises(InputError, match="must split evenly"):
        load_prompt_file(path, n_coarse=5, n_fine_per_coarse=None)
