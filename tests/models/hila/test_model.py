"""The HiLa-style model and the survival baselines behind the registry."""

from __future__ import annotations

import json

import pytest
import torch

from datasets.survival import SurvivalTaskSpec
from datasets.survival_prompts import parse_survival_prompts
from models.hila.model import HiLaSurvival
from models.hila.options import HiLaOptions
from models.registry import ModelSpec, build_model, model_info
from models.survival import risk_from_logits
from models.towers.loading import TowerSource, load_text_tower
from models.towers.tiny import ensure_demo_text_tower
from tests.mini_run import make_bag
from tests.survival_toy import PROMPTS

DIM = 64


@pytest.fixture(scope="module")
def tower():
    return load_text_tower(TowerSource("demo", str(ensure_demo_text_tower())))


def _model(tower, seed=0, **options) -> HiLaSurvival:
    torch.manual_seed(seed)
    prompts = parse_survival_prompts(json.dumps(PROMPTS), "p.json")
    return HiLaSurvival(tower, prompts, n_bins=4, options=HiLaOptions(**options), n_ctx=4)


def test_forward_gives_hazard_logits_and_weighted_mcl(tower):
    model = _model(tower, mcl_lambda=0.3)
    bag = make_bag(seed=1, dim=DIM)
    out = model(bag)
    assert out.logits.shape == (1, 4)
    assert out.aux_loss.item() == pytest.approx(0.3 * out.mcl.item())
    assert ((out.hazards > 0) & (out.hazards < 1)).all()
    assert out.risk.item() == pytest.approx(risk_from_logits(out.logits.detach())[0].item())
    assert out.plan_region.shape == (bag.num_5x, 3) and out.plan_patch.shape == (bag.num_20x, 3)
    assert torch.allclose(out.plan_patch.sum(0), torch.full((3,), 1 / 3), atol=1e-5)
    # patch nodes are the real children, mapped back to bag rows and slots
    assert torch.equal(
        bag.child_mask[out.patch_rows, out.patch_slots], torch.ones(bag.num_20x, dtype=torch.bool)
    )


def test_cached_text_features_give_the_same_output(tower):
    model = _model(tower).eval()
    bag = make_bag(seed=2, dim=DIM)
    with torch.no_grad():
        cached = model(bag, cache=model.precompute())
        direct = model(bag)
    assert torch.allclose(cached.logits, direct.logits, atol=1e-6)
    region, patch = model.encode_text()
    assert torch.allclose(region, model.prompts_region.encode(model.tower), atol=1e-5)
    assert torch.allclose(patch, model.prompts_patch.encode(model.tower), atol=1e-5)


def test_training_step_reaches_context_clp_and_head_and_checkpoint_has_no_tower(tower):
    model = _model(tower)
    trainable = model.trainable_parameters()
    assert trainable and all(
        not n.startswith("tower.") for n, p in model.named_parameters() if p.requires_grad
    )
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for seed in range(2):  # CLP's output projections start at zero: the second step moves the rest
        out = model(make_bag(seed=seed, dim=DIM))
        optimizer.zero_grad()
        (out.logits.sum() + out.aux_loss).backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    for name in (
        "prompts_region.learner.ctx",
        "prompts_patch.learner.ctx",
        "clp.up.out.weight",
        "clp.down.value.weight",
        "hazard.weight",
    ):
        assert name in changed, name
    state = model.state_dict()
    assert not any(k.startswith("tower.") for k in state)
    fresh = _model(tower, seed=5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.hazard.weight, model.hazard.weight)


def test_feature_dim_mismatch_is_one_line(tower):
    from utils.errors import InputError

    with pytest.raises(InputError, match="features have dim 8"):
        _model(tower)(make_bag(dim=8))


def test_registry_builds_hila_and_the_survival_baselines(tmp_path, tower):
    prompt = tmp_path / "HiLa" / "t.json"
    prompt.parent.mkdir()
    prompt.write_text(json.dumps(PROMPTS))
    task = SurvivalTaskSpec(
        "t", ("bin_0", "bin_1", "bin_2", "bin_3"), tmp_path / "t.csv", tmp_path, bin_cuts=(1.0, 2.0, 3.0)
    )
    assert task.prompt_file("ignored") == prompt and task.n_bins == 4
    spec = ModelSpec(
        task=task,
        feature_dim=DIM,
        tower=TowerSource("demo", str(ensure_demo_text_tower())),
        prompt_file=prompt,
    )
    assert model_info("HiLa").survival and model_info("HiLa").text_tower
    assert build_model("HiLa", spec)(make_bag(dim=DIM)).logits.shape == (1, 4)
    for name in ("mean_pool_surv", "ABMIL_surv", "TransMIL_surv"):
        assert model_info(name).survival and not model_info(name).text_tower
        model = build_model(name, spec)
        assert model(make_bag(dim=DIM)).logits.shape == (1, 4), name
    assert not model_info("ABMIL").survival and not model_info("HiVE_MIL").survival
