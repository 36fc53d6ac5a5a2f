"""``--variant reference`` reproduces the authors' released code: the golden cases in ../shared/golden.

Each case was computed by the released HiVE-MIL code with a random tiny CLIP text tower. We load that
tower through the same Hugging Face adapter as PLIP, build HiVE-MIL for the case's classes/options,
load the released state_dict through the checkpoint converter, and compare to 1e-5 (absolute).
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
from models.hivemil.options import HiveMILOptions, VariantSwitches
from tests.paths import GOLDEN

CASES = sorted(GOLDEN.glob("case_*.pt")) if GOLDEN.is_dir() else []
TOL = 1e-5

pytestmark = pytest.mark.skipif(not CASES, reason=f"golden cases not found in {GOLDEN}")


@pytest.fixture(scope="module")
def tower():
    from models.towers import load_towers

    return load_towers("plip", source=GOLDEN / "tiny_clip", sides=("text",)).text


def _load_case(path: Path):
    case = torch.load(path, weights_only=False)
    prompts_file = GOLDEN / ("prompts_2class.json" if len(case["classes"]) == 2 else "prompts_3class.json")
    prompts = json.loads(prompts_file.read_text())
    descriptions = [[f"{t} : {e}" for t, e in prompts[c].items()] for c in case["classes"]]
    return case, descriptions


def _options(case, variant: str) -> HiveMILOptions:
    o = case["options"]
    return HiveMILOptions(
        n_ctx=o.get("n_ctx", 16),
        class_specific_context=o.get("csc", False),
        class_token_position=o.get("pos", "end"),
        filter_alpha=o.get("alpha", 0.5),
        contrastive_lambda=o.get("lam", 0.5),
        switches=VariantSwitches.for_variant(variant),
    )


def _bag(case) -> SlideBag:
    x20 = case["x20"]
    return SlideBag("golden", case["x5"], x20, x20.abs().sum(-1) > 0, int(case["label"]))


def _build(tower, case, descriptions, variant="reference") -> HiveMIL:
    model = HiveMIL(tower, descriptions, _options(case, variant))
    model.load_state_dict(released_to_ours(case["state_dict"]))
    return model


def _close(a, b):
    return (torch.as_tensor(a) - torch.as_tensor(b)).abs().max().item()


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_reference_matches_released_code(tower, path):
    case, descriptions = _load_case(path)
    # The released tower copy in the checkpoint is the tiny tower we loaded.
    assert torch.equal(case["state_dict"]["custom_vlm.logit_scale"], tower.logit_scale.detach())
    model = _build(tower, case, descriptions)
    classes = case["classes"]
    for c, name in enumerate(classes):
        assert torch.equal(model.prompt_learner.token_ids(c), case["tokenized_prompts"][name]), name

    model.train()
    text = model.encode_text()
    expected = torch.stack([case["text_features"][n] for n in classes])  # [C, 16, D]
    assert _close(text.x5, expected[:, :4].reshape(-1, expected.shape[-1])) < TOL
    assert _close(text.x20, expected[:, 4:].reshape(-1, expected.shape[-1])) < TOL

    bag = _bag(case)
    out = model(bag)
    assert torch.equal(out.x5_mask, case["x5_mask"])
    assert out.n_x20_nodes == case["n_x20_nodes"]
    assert _close(out.logits[0], case["logits"]) < TOL
    assert _close(out.htcl, case["htcl"]) < TOL
    loss = F.cross_entropy(out.logits, case["label"]) + out.aux_loss
    assert _close(out.logits.softmax(1), case["prob"]) < TOL
    assert _close(loss, case["loss"]) < TOL

    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-4, weight_decay=1e-5)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert _close(model.prompt_learner.ctx, case["ctx_after_step"]) < TOL
    model.eval()
    with torch.no_grad():
        out = model(bag)
        loss = F.cross_entropy(out.logits, case["label"]) + out.aux_loss
    assert _close(out.logits.softmax(1), case["prob_after_step"]) < TOL
    assert _close(loss, case["loss_after_step"]) < TOL


@pytest.mark.parametrize("path", CASES[:2], ids=lambda p: p.stem)
def test_corrected_variant_differs_where_expected(tower, path):
    case, descriptions = _load_case(path)
    ref = _build(tower, case, descriptions, "reference").eval()
    cor = _build(tower, case, descriptions, "corrected").eval()
    with torch.no_grad():
        out_ref, out_cor = ref(_bag(case)), cor(_bag(case))
        text_ref, text_cor = ref.encode_text(), cor.encode_text()
    assert torch.isfinite(out_cor.logits).all() and torch.isfinite(out_cor.aux_loss)
    # causal text encoding changes the text features
    assert _close(text_ref.x5, text_cor.x5) > 1e-3
    # padded children are no longer nodes
    assert out_cor.n_x20_nodes < out_ref.n_x20_nodes
    assert not torch.allclose(out_ref.logits, out_cor.logits)


def test_corrected_htcl_negative_term_is_nonzero(tower):
    case, descriptions = _load_case(CASES[0])
    only_htcl = dataclasses.replace(
        _options(case, "reference"), switches=VariantSwitches.for_variant("reference", htcl_negatives="real")
    )
    ref = _build(tower, case, descriptions).eval()
    neg = HiveMIL(tower, descriptions, only_htcl)
    neg.load_state_dict(released_to_ours(case["state_dict"]))
    neg.eval()
    with torch.no_grad():
        a, b = ref(_bag(case)), neg(_bag(case))
    assert torch.allclose(a.logits, b.logits)  # only the loss changes
    assert abs(a.htcl.item() - b.htcl.item()) > 1e-4


@pytest.mark.parametrize("variant", ["reference", "corrected"])
@pytest.mark.parametrize("n5", [1, 2])
def test_one_and_two_patch_slides_run(tower, variant, n5):
    """The released code crashes on a single 5x patch; both variants must not."""
    case, descriptions = _load_case(CASES[0])
    model = _build(tower, case, descriptions, variant)
    bag = _bag(case)
    small = SlideBag("tiny", bag.x5[:n5], bag.x20[:n5], bag.child_mask[:n5], bag.label)
    out = model(small)
    loss = F.cross_entropy(out.logits, torch.tensor([bag.label])) + out.aux_loss
    loss.backward()
    assert torch.isfinite(out.logits).all() and torch.isfinite(loss)
    assert model.prompt_learner.ctx.grad is not None and torch.isfinite(model.prompt_learner.ctx.grad).all()
