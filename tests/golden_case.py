"""Golden cases computed by the authors' released HiVE-MIL code, and the one check against them.

A case (``../shared/golden/case_*.pt``, or the trimmed copy in ``tests/fixtures/``) holds the released
model's inputs, its ``state_dict`` and what the released code computed from them (text features, TGDF
mask, logits, HTCL, loss, and the state after one Adam step). :func:`assert_matches_released` builds
our HiVE-MIL for the case, loads the released ``state_dict`` through the checkpoint converter and
compares everything to ``TOL`` (absolute). Used by ``tests/models/hivemil/test_golden.py`` (full set,
when ``../shared`` is present) and ``test_golden_fixture.py`` (the committed case, always).

The committed case keeps only the token-embedding rows its prompts use (the tiny tower's full
49408-row vocabulary is too big to commit); :func:`tower_from_weights` rebuilds the Hugging Face
``CLIPModel`` around them, which is all the text path reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datasets.bag import SlideBag
from models.convert_checkpoint import released_to_ours
from models.hivemil.model import HiveMIL
from models.hivemil.options import HiveMILOptions, VariantSwitches

TOL = 1e-5


def prompts_file_name(classes) -> str:
    """The golden prompt file for a case's classes (``prompts_2class.json`` / ``prompts_3class.json``)."""
    return "prompts_2class.json" if len(classes) == 2 else "prompts_3class.json"


def case_descriptions(prompts: dict, classes) -> list[list[str]]:
    """``"<term> : <explanation>"`` per class, in file order (what the released prompt learner renders)."""
    return [[f"{term} : {text}" for term, text in prompts[c].items()] for c in classes]


def case_options(case, variant: str = "reference") -> HiveMILOptions:
    o = case["options"]
    return HiveMILOptions(
        n_ctx=o.get("n_ctx", 16),
        class_specific_context=o.get("csc", False),
        class_token_position=o.get("pos", "end"),
        filter_alpha=o.get("alpha", 0.5),
        contrastive_lambda=o.get("lam", 0.5),
        switches=VariantSwitches.for_variant(variant),
    )


def case_bag(case) -> SlideBag:
    x20 = case["x20"]
    return SlideBag("golden", case["x5"], x20, x20.abs().sum(-1) > 0, int(case["label"]))


def build_for_case(tower, case, descriptions, variant: str = "reference") -> HiveMIL:
    model = HiveMIL(tower, descriptions, case_options(case, variant))
    model.load_state_dict(released_to_ours(case["state_dict"]))
    return model


def max_abs_diff(a, b) -> float:
    return (torch.as_tensor(a) - torch.as_tensor(b)).abs().max().item()


def assert_matches_released(tower, case, descriptions) -> None:
    """``--variant reference`` on ``case`` equals the released code to ``TOL``: tokens, text features,
    TGDF mask, node count, logits, HTCL, probabilities, loss, and after one Adam step (lr 1e-4, weight
    decay 1e-5) the context, probabilities and loss."""
    # The released tower copy in the checkpoint is the tower we were given.
    assert torch.equal(case["state_dict"]["custom_vlm.logit_scale"], tower.logit_scale.detach())
    model = build_for_case(tower, case, descriptions)
    classes = case["classes"]
    for c, name in enumerate(classes):
        assert torch.equal(model.prompt_learner.token_ids(c), case["tokenized_prompts"][name]), name

    model.train()
    text = model.encode_text()
    expected = torch.stack([case["text_features"][n] for n in classes])  # [C, 16, D]
    assert max_abs_diff(text.x5, expected[:, :4].reshape(-1, expected.shape[-1])) < TOL
    assert max_abs_diff(text.x20, expected[:, 4:].reshape(-1, expected.shape[-1])) < TOL

    bag = case_bag(case)
    out = model(bag)
    assert torch.equal(out.x5_mask, case["x5_mask"])
    assert out.n_x20_nodes == case["n_x20_nodes"]
    assert max_abs_diff(out.logits[0], case["logits"]) < TOL
    assert max_abs_diff(out.htcl, case["htcl"]) < TOL
    loss = F.cross_entropy(out.logits, case["label"]) + out.aux_loss
    assert max_abs_diff(out.logits.softmax(1), case["prob"]) < TOL
    assert max_abs_diff(loss, case["loss"]) < TOL

    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-4, weight_decay=1e-5)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert max_abs_diff(model.prompt_learner.ctx, case["ctx_after_step"]) < TOL
    model.eval()
    with torch.no_grad():
        out = model(bag)
        loss = F.cross_entropy(out.logits, case["label"]) + out.aux_loss
    assert max_abs_diff(out.logits.softmax(1), case["prob_after_step"]) < TOL
    assert max_abs_diff(loss, case["loss_after_step"]) < TOL


def tower_from_weights(config: dict, weights: dict, token_rows: torch.Tensor):
    """A frozen HF CLIP text tower of architecture ``config`` with text-side ``weights`` (CLIPModel key
    names) whose ``text_model.embeddings.token_embedding.weight`` holds only the rows ``token_rows``;
    every other token-embedding row is zero (never read: the prompts use no other token)."""
    from transformers import CLIPConfig, CLIPModel

    from models.towers import freeze
    from models.towers.hf_clip import HFClipTextTower

    with torch.random.fork_rng(devices=[]):  # the unused vision side is random; keep the caller's RNG
        torch.manual_seed(0)
        model = CLIPModel(CLIPConfig.from_dict(config)).float()
    weights = dict(weights)
    key = "text_model.embeddings.token_embedding.weight"
    embedding = torch.zeros_like(model.text_model.embeddings.token_embedding.weight)
    embedding[token_rows.long()] = weights.pop(key)
    weights[key] = embedding
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected, unexpected
    text_missing = [k for k in missing if k.startswith(("text_model.", "text_projection", "logit_scale"))]
    assert not [k for k in text_missing if not k.endswith("position_ids")], text_missing
    return freeze(HFClipTextTower(model.eval()))
