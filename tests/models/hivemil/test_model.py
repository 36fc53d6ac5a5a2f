"""HiVE-MIL composition: variants, edge cases, gradients, determinism, checkpoints, registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from datasets.bag import SlideBag
from models.convert_checkpoint import load_model_state, ours_to_released
from models.hivemil.model import HiveMIL
from models.hivemil.options import HiveMILOptions, VariantSwitches

CLASSES = 2
DESCRIPTIONS = [
    [f"term {c}{i} : explanation of feature {i} for class {c} ." for i in range(16)] for c in range(CLASSES)
]


def make_bag(n5=12, d=64, seed=0, label=1, children=None) -> SlideBag:
    g = torch.Generator().manual_seed(seed)
    x5 = torch.randn(n5, d, generator=g)
    counts = children if children is not None else torch.randint(1, 17, (n5,), generator=g).tolist()
    mask = torch.zeros(n5, 16, dtype=torch.bool)
    for i, k in enumerate(counts):
        mask[i, :k] = True
    x20 = torch.randn(n5, 16, d, generator=g) * mask.unsqueeze(-1)
    return SlideBag("s", x5, x20, mask, label)


def make_model(tower, variant="reference", seed=0, **kw) -> HiveMIL:
    torch.manual_seed(seed)
    return HiveMIL(tower, DESCRIPTIONS, HiveMILOptions(switches=VariantSwitches.for_variant(variant), **kw))


def _loss(out, label):
    return F.cross_entropy(out.logits, torch.tensor([label])) + out.aux_loss


@pytest.mark.parametrize("variant", ["reference", "corrected"])
@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_positions_and_variants_run(tiny_text_tower, variant, position):
    model = make_model(
        tiny_text_tower, variant, class_token_position=position, class_specific_context=position == "middle"
    )
    out = model(make_bag())
    assert out.logits.shape == (1, CLASSES)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.aux_loss)


def test_context_positions_change_the_prompt(tiny_text_tower):
    feats = {
        p: make_model(tiny_text_tower, "corrected", class_token_position=p).encode_text().x5
        for p in ("end", "middle", "front")
    }
    assert not torch.allclose(feats["end"], feats["middle"])
    assert not torch.allclose(feats["end"], feats["front"])


def test_gradient_reaches_only_trainable_parameters(tiny_text_tower):
    model = make_model(tiny_text_tower, "corrected")
    _loss(model(make_bag()), 1).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("prompt_learner.", "gnn.")) for n in trainable)
    assert model.prompt_learner.ctx.grad is not None and model.prompt_learner.ctx.grad.abs().sum() > 0
    for n, p in model.named_parameters():
        if n.startswith("text_tower."):
            assert not p.requires_grad and p.grad is None
    assert len(model.trainable_parameters()) == len(trainable)


def test_same_seed_same_logits_to_the_bit(tiny_text_tower):
    outs = []
    for _ in range(2):
        model = make_model(tiny_text_tower, "reference", seed=3)
        outs.append(model(make_bag(seed=5)).logits)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("variant", ["reference", "corrected"])
def test_edge_cases_no_nan(tiny_text_tower, variant):
    model = make_model(tiny_text_tower, variant)
    d = 64
    cases = {
        "one_patch": make_bag(n5=1),
        "all_children_padded": SlideBag(
            "p", torch.randn(4, d), torch.zeros(4, 16, d), torch.zeros(4, 16, dtype=torch.bool)
        ),
        "zero_spread": SlideBag(
            "z", torch.ones(5, d), torch.ones(5, 16, d), torch.ones(5, 16, dtype=torch.bool)
        ),
        "fewer_than_k": make_bag(n5=2, children=[1, 1]),
        "some_childless": make_bag(n5=6, children=[0, 3, 0, 16, 2, 0]),
    }
    for name, bag in cases.items():
        out = model(bag)
        loss = _loss(out, 0)
        loss.backward()
        assert torch.isfinite(out.logits).all(), name
        assert torch.isfinite(loss), name


def test_corrected_masks_padded_children_and_uses_true_parents(tiny_text_tower):
    bag = make_bag(n5=10, seed=1)
    ref, cor = make_model(tiny_text_tower, "reference"), make_model(tiny_text_tower, "corrected")
    out_ref, out_cor = ref(bag), cor(bag)
    kept_ref = out_ref.kept_5x
    assert out_ref.n_x20_nodes == 16 * kept_ref.numel()
    kept_cor = out_cor.kept_5x
    assert out_cor.n_x20_nodes == int(bag.child_mask[kept_cor].sum())
    parents = out_cor.x20_parent
    assert set(parents.tolist()) <= set(kept_cor.tolist())


def test_state_dict_excludes_tower_and_round_trips(tiny_text_tower, tmp_path):
    model = make_model(tiny_text_tower, "corrected", seed=1)
    state = model.state_dict()
    assert state and not any(k.startswith("text_tower.") for k in state)
    torch.save(state, tmp_path / "ours.pt")
    torch.save(ours_to_released(state), tmp_path / "released.pt")
    bag = make_bag(seed=2)
    model.eval()
    expected = model(bag).logits
    for name in ("ours.pt", "released.pt"):
        other = make_model(tiny_text_tower, "corrected", seed=99).eval()
        load_model_state(other, tmp_path / name)
        assert torch.equal(other(bag).logits, expected), name


def test_convert_checkpoint_cli(tiny_text_tower, tmp_path):
    from models.convert_checkpoint import main

    model = make_model(tiny_text_tower, seed=4)
    torch.save(ours_to_released(model.state_dict()), tmp_path / "s_0_checkpoint.pt")
    assert main([str(tmp_path / "s_0_checkpoint.pt"), str(tmp_path / "converted.pt")]) == 0
    other = make_model(tiny_text_tower, seed=5)
    load_model_state(other, tmp_path / "converted.pt")
    assert torch.equal(other.prompt_learner.ctx, model.prompt_learner.ctx)


def test_bad_checkpoint_is_one_line_error(tiny_text_tower, tmp_path):
    from utils.errors import InputError

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    before = bad.read_bytes()
    with pytest.raises(InputError, match="bad.pt"):
        load_model_state(make_model(tiny_text_tower), bad)
    assert bad.read_bytes() == before


def test_cached_text_features_give_same_output(tiny_text_tower):
    model = make_model(tiny_text_tower).eval()
    bag = make_bag(seed=7)
    with torch.no_grad():
        assert torch.equal(model(bag, cache=model.precompute()).logits, model(bag).logits)


def test_registry_builder_with_prompt_file(tiny_clip_dir, tmp_path):
    import json

    from datasets.tasks import TaskSpec
    from models.registry import build_model
    from training.config import RunConfig, with_values

    prompts = {c: {f"t{c}{i}": f"explanation {i} of {c}." for i in range(16)} for c in ("A", "B")}
    path = tmp_path / "text_prompt" / "HiVE_MIL" / "curated" / "mytask.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(prompts))
    task = TaskSpec("mytask", ("A", "B"), tmp_path / "x.csv", prompt_dir=tmp_path / "text_prompt")
    config = RunConfig(
        feature_extractor="plip",
        text_tower=str(tiny_clip_dir),
        feature_dim=64,
        LLM="curated",
        variant="corrected",
    )
    model = build_model("HiVE_MIL", config.model_spec(task))
    assert model.num_classes == 2 and model.options.switches == VariantSwitches.for_variant("corrected")
    from utils.errors import InputError

    with pytest.raises(InputError, match="feature_dim"):
        build_model("HiVE_MIL", with_values(config, feature_dim=512).model_spec(task))


@pytest.mark.parametrize("variant", ["reference", "corrected"])
@pytest.mark.parametrize("max_children", [0, 3])
def test_output_records_which_patch_each_node_is(tiny_text_tower, variant, max_children):
    """Provenance: every 5x node is its bag row, every 20x node its (row, slot) child, padding flagged."""
    bag = make_bag(n5=10, seed=3, children=[0, 2, 16, 5, 0, 1, 9, 16, 3, 7])
    out = make_model(tiny_text_tower, variant, max_children=max_children)(bag)
    emb5 = out.embeddings["x5image"]
    assert out.nodes_5x.shape[0] == emb5.shape[0] == out.x5_mask.shape[0]
    if variant == "reference":  # released pipeline: childless 5x patches are no nodes
        assert out.nodes_5x.tolist() == [1, 2, 3, 5, 6, 7, 8, 9]
    else:
        assert out.nodes_5x.tolist() == list(range(10))
    rows, slots, padding = out.nodes_20x_row, out.nodes_20x_slot, out.nodes_20x_padding
    assert out.n_x20_nodes == rows.shape[0] == out.embeddings["x20image"].shape[0]
    assert torch.equal(padding, ~bag.child_mask[rows, slots])
    assert torch.equal(out.nodes_5x[out.x20_parent], rows)  # 20x parent (node) is the row's 5x node
    kept_rows = out.nodes_5x[out.kept_5x].tolist()
    assert set(rows.tolist()) == {r for r in kept_rows if bag.child_mask[r].any()}
    per_row = torch.bincount(rows, minlength=10)
    if variant == "reference":
        expected = max_children or 16
        assert all(per_row[r] == expected for r in rows.unique())
        for r in rows.unique().tolist():  # real children first; padding only fills what is missing
            real = int(bag.child_mask[r].sum())
            assert int((padding & (rows == r)).sum()) == max(0, expected - real)
    else:
        assert not padding.any()
        for r in rows.unique().tolist():
            real = int(bag.child_mask[r].sum())
            assert per_row[r] == (min(real, max_children) if max_children else real)


@pytest.mark.parametrize("variant", ["reference", "corrected"])
def test_stage1_keeping_nothing_keeps_every_5x_patch(tiny_text_tower, variant):
    """TGDF stage 1 keeps no 5x patch (identical 5x features: zero-spread columns), so the fallback
    keeps all of them, not some: every 5x node is kept and all their children become candidates."""
    d, n5 = 64, 5
    children = [3, 16, 1, 7, 2]
    mask = torch.zeros(n5, 16, dtype=torch.bool)
    for i, k in enumerate(children):
        mask[i, :k] = True
    g = torch.Generator().manual_seed(4)
    bag = SlideBag("z", torch.ones(n5, d), torch.randn(n5, 16, d, generator=g) * mask.unsqueeze(-1), mask, 0)
    out = make_model(tiny_text_tower, variant)(bag)
    assert not out.x5_mask.any()  # TGDF itself kept nothing
    assert out.kept_5x.tolist() == list(range(n5))
    expected_nodes = 16 * n5 if variant == "reference" else sum(children)
    assert out.n_x20_nodes == expected_nodes
    assert sorted(set(out.x20_parent.tolist())) == list(range(n5))
