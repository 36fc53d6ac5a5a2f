"""``--variant reference`` reproduces the authors' released code: the golden cases in ../shared/golden.

Each case was computed by the released HiVE-MIL code with a random tiny CLIP text tower. We load that
tower through the same Hugging Face adapter as PLIP, build HiVE-MIL for the case's classes/options,
load the released state_dict through the checkpoint converter, and compare to 1e-5 (absolute); the
check itself lives in ``tests/golden_case.py``. One case is also committed, trimmed, in
``tests/fixtures/`` and checked without ../shared (``test_golden_fixture.py``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from datasets.bag import SlideBag
from models.convert_checkpoint import released_to_ours
from models.hivemil.model import HiveMIL
from models.hivemil.options import VariantSwitches
from tests.golden_case import (
    assert_matches_released,
    build_for_case,
    case_bag,
    case_descriptions,
    case_options,
    max_abs_diff,
    prompts_file_name,
)
from tests.paths import GOLDEN, GOLDEN_TOWER, golden_cases

CASES = golden_cases()

pytestmark = pytest.mark.skipif(
    not CASES, reason=f"golden cases (with tiny_clip/ and both prompt files) not found in {GOLDEN}"
)


@pytest.fixture(scope="module")
def tower():
    from models.towers import load_towers

    return load_towers("plip", source=GOLDEN_TOWER, sides=("text",)).text


def _load_case(path: Path):
    case = torch.load(path, weights_only=False)
    prompts = json.loads((GOLDEN / prompts_file_name(case["classes"])).read_text())
    return case, case_descriptions(prompts, case["classes"])


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_reference_matches_released_code(tower, path):
    case, descriptions = _load_case(path)
    assert_matches_released(tower, case, descriptions)


@pytest.mark.parametrize("path", CASES[:2], ids=lambda p: p.stem)
def test_corrected_variant_differs_where_expected(tower, path):
    case, descriptions = _load_case(path)
    ref = build_for_case(tower, case, descriptions, "reference").eval()
    cor = build_for_case(tower, case, descriptions, "corrected").eval()
    with torch.no_grad():
        out_ref, out_cor = ref(case_bag(case)), cor(case_bag(case))
        text_ref, text_cor = ref.encode_text(), cor.encode_text()
    assert torch.isfinite(out_cor.logits).all() and torch.isfinite(out_cor.aux_loss)
    # causal text encoding changes the text features
    assert max_abs_diff(text_ref.x5, text_cor.x5) > 1e-3
    # padded children are no longer nodes
    assert out_cor.n_x20_nodes < out_ref.n_x20_nodes
    assert not torch.allclose(out_ref.logits, out_cor.logits)


def test_corrected_htcl_negative_term_is_nonzero(tower):
    case, descriptions = _load_case(CASES[0])
    only_htcl = dataclasses.replace(
        case_options(case, "reference"),
        switches=VariantSwitches.for_variant("reference", htcl_negatives="real"),
    )
    ref = build_for_case(tower, case, descriptions).eval()
    neg = HiveMIL(tower, descriptions, only_htcl)
    neg.load_state_dict(released_to_ours(case["state_dict"]))
    neg.eval()
    with torch.no_grad():
        a, b = ref(case_bag(case)), neg(case_bag(case))
    assert torch.allclose(a.logits, b.logits)  # only the loss changes
    assert abs(a.htcl.item() - b.htcl.item()) > 1e-4


@pytest.mark.parametrize("variant", ["reference", "corrected"])
@pytest.mark.parametrize("n5", [1, 2])
def test_one_and_two_patch_slides_run(tower, variant, n5):
    """The released code crashes on a single 5x patch; both variants must not."""
    case, descriptions = _load_case(CASES[0])
    model = build_for_case(tower, case, descriptions, variant)
    bag = case_bag(case)
    small = SlideBag("tiny", bag.x5[:n5], bag.x20[:n5], bag.child_mask[:n5], bag.label)
    out = model(small)
    loss = F.cross_entropy(out.logits, torch.tensor([bag.label])) + out.aux_loss
    loss.backward()
    assert torch.isfinite(out.logits).all() and torch.isfinite(loss)
    assert model.prompt_learner.ctx.grad is not None and torch.isfinite(model.prompt_learner.ctx.grad).all()
