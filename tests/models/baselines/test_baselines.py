"""Baselines: shapes, gradients, 5x/20x instance selection, hand-checked mechanisms, tiny learning runs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from nystrom_attention import NystromAttention
from nystrom_attention.nystrom_attention import moore_penrose_iter_pinv
from torch import nn

from datasets.bag import SlideBag
from datasets.tasks import TaskSpec
from models.baselines.common import bag_instances
from models.baselines.mil_fc import MILfc
from models.baselines.transmil import TransMIL
from models.baselines.vila_mil import ViLaMIL
from models.baselines.zero_shot import ZeroShotMIL, class_index
from models.registry import available_models, build_model
from models.towers import load_towers
from models.towers.base import TextTower, freeze
from models.towers.tiny import save_tiny_hf_clip
from training.config import RunConfig, with_values

CONVENTIONAL = ("mean_pool", "max_pool", "MIL_fc", "ABMIL", "TransMIL", "LiteMIL")
PERMUTATION_INVARIANT = ("mean_pool", "max_pool", "MIL_fc", "ABMIL", "LiteMIL")
D = 32
# Parameters whose gradient is zero in exact arithmetic: a bias shared by every attention score.
SHIFT_INVARIANT = {"ABMIL": {"attention.score.bias"}}


# ----------------------------------------------------------------------------- helpers
def make_bag(
    gen: torch.Generator,
    n5: int,
    dim: int = D,
    label: int = 0,
    direction: torch.Tensor | None = None,
    strength: float = 5.0,
    empty_rows: int = 1,
) -> SlideBag:
    """Random bag; the first ``empty_rows`` 5x rows have no children; padded slots hold garbage.

    With ``direction``, a quarter of the real 20x children get ``strength * direction`` added.
    """
    counts = torch.randint(1, 17, (n5,), generator=gen)
    counts[: min(empty_rows, n5 - 1)] = 0
    mask = torch.arange(16).unsqueeze(0) < counts.unsqueeze(1)
    x20 = torch.randn(n5, 16, dim, generator=gen)
    if direction is not None:
        planted = (torch.rand(n5, 16, generator=gen) < 0.25) & mask
        x20 = x20 + strength * planted.unsqueeze(-1) * direction
    x20 = torch.where(mask.unsqueeze(-1), x20, torch.full_like(x20, 7.0))  # garbage padding, must be ignored
    return SlideBag(
        f"s{int(torch.randint(10**6, (1,), generator=gen))}",
        torch.randn(n5, dim, generator=gen),
        x20,
        mask,
        label,
    )


def config(**kw) -> RunConfig:
    return with_values(RunConfig(), **{"feature_dim": D, "drop_out": True, **kw})


def task(num_classes: int = 3, prompt_dir=None) -> TaskSpec:
    names = tuple(f"class{c}" for c in range(num_classes))
    kw = {"prompt_dir": prompt_dir} if prompt_dir is not None else {}
    return TaskSpec(
        name="toy",
        class_names=names,
        csv_path="toy.csv",
        label_dict={n: i for i, n in enumerate(names)},
        **kw,
    )


def one_slide(n5: int = 1) -> SlideBag:
    """``n5`` 5x patches with exactly one 20x child in row 0."""
    gen = torch.Generator().manual_seed(5)
    mask = torch.zeros(n5, 16, dtype=torch.bool)
    mask[0, 0] = True
    return SlideBag(
        "one",
        torch.randn(n5, D, generator=gen),
        torch.randn(n5, 16, D, generator=gen) * mask[..., None],
        mask,
        1,
    )


def synthetic_problem(num_classes: int, n_train: int, n_test: int, seed: int = 0):
    """Planted class directions in a subset of 20x children; balanced labels."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(D, num_classes, generator=gen))[0].T  # orthonormal rows

    def bags(n):
        return [
            make_bag(
                gen,
                int(torch.randint(3, 8, (1,), generator=gen)),
                label=i % num_classes,
                direction=directions[i % num_classes],
            )
            for i in range(n)
        ]

    return bags(n_train), bags(n_test)


def train_and_score(model, train, test, epochs: int, lr: float = 1e-3, seed: int = 0) -> float:
    """Adam, one slide per step (as the project's loop); returns held-out accuracy."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for i in torch.randperm(len(train), generator=order).tolist():
            bag = train[i]
            out = model(bag)
            loss = F.cross_entropy(out.logits, torch.tensor([bag.label])) + out.aux_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        cache = model.precompute()
        correct = sum(int(model(b, cache).logits.argmax(1)) == b.label for b in test)
    return correct / len(test)


class FakeTower(TextTower):
    """A tiny word-level text tower: causal running mean of token + position embeddings, pooled at EOT."""

    PAD, SOT, EOT = 0, 1, 2

    def __init__(self, width: int = 16, embed_dim: int = D, context_length: int = 40, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.width, self.embed_dim, self.context_length = width, embed_dim, context_length
        self.embedding = nn.Embedding(600, width)
        self.position = nn.Parameter(torch.randn(context_length, width) * 0.1)
        self.mix = nn.Linear(width, width)
        self.projection = nn.Linear(width, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        freeze(self)

    def _ids(self, text: str) -> list[int]:
        words = [3 + sum(map(ord, w)) * 7 % 597 for w in text.split()]
        return [self.SOT, *words[: self.context_length - 2], self.EOT]

    def tokenize(self, texts):
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self._ids(text)
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 2

    def token_embedding(self, token_ids):
        return self.embedding(token_ids)

    def pool_positions(self, token_ids):
        return (token_ids == self.EOT).int().argmax(dim=1)

    def encode_embeddings(self, embeddings, token_ids, released_layout=False):
        h = embeddings + self.position[: embeddings.shape[1]]
        running = h.cumsum(dim=1) / torch.arange(1, h.shape[1] + 1, device=h.device).view(1, -1, 1)
        pooled = running[torch.arange(h.shape[0]), self.pool_positions(token_ids)]
        return self.projection(torch.tanh(self.mix(pooled)))


def descriptions(num_classes: int) -> tuple[list[list[str]], list[list[str]]]:
    coarse = [[f"coarse{c}_{j} : look {c} {j}" for j in range(4)] for c in range(num_classes)]
    fine = [[f"fine{c}_{j} : detail {c} {j}" for j in range(12)] for c in range(num_classes)]
    return coarse, fine


def write_prompt_file(root, name: str, class_names) -> None:
    data = {
        cls: {
            **{f"{cls} coarse {j}": f"{cls} tissue pattern {j}" for j in range(4)},
            **{f"{cls} fine {j}": f"{cls} cell detail {j}" for j in range(12)},
        }
        for cls in class_names
    }
    path = root / "HiVE_MIL" / "curated" / f"{name}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data), encoding="utf-8")


# ----------------------------------------------------------------------------- registry
def test_every_baseline_is_registered():
    names = set(available_models())
    for name in (*CONVENTIONAL, "zero_shot", "ViLa_MIL"):
        assert name in names
    for name in CONVENTIONAL:
        assert f"{name}_5x" in names


# ----------------------------------------------------------------------------- conventional baselines
@pytest.mark.parametrize("name", CONVENTIONAL)
@pytest.mark.parametrize("n5", [1, 9])
def test_conventional_shape_and_gradients(name, n5):
    torch.manual_seed(0)
    model = build_model(name, config().model_spec(task(3)))
    bag = one_slide() if n5 == 1 else make_bag(torch.Generator().manual_seed(1), n5, empty_rows=3)
    out = model(bag)
    assert out.logits.shape == (1, 3)
    assert torch.isfinite(out.logits).all()
    assert float(out.aux_loss) == 0.0
    (F.cross_entropy(out.logits, torch.tensor([1])) + out.aux_loss).backward()
    params = dict(model.named_parameters())
    assert params and {n for n, p in params.items() if p.requires_grad} == set(params)
    for pname, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    if n5 > 1:
        # With several patches every parameter influences the loss, except a bias added to every
        # attention score before the softmax (softmax is shift-invariant): its gradient is exactly 0
        # in exact arithmetic, so only rounding residue (relative to the largest gradient) is allowed.
        largest = max(float(p.grad.abs().max()) for p in params.values())
        invariant = SHIFT_INVARIANT.get(name, set())
        assert invariant <= set(params)
        for pname, p in params.items():
            size = float(p.grad.abs().max()) / largest
            if pname in invariant:
                assert size < 1e-5, (pname, size)
            else:
                assert size > 1e-4, (pname, size)


@pytest.mark.parametrize("name", CONVENTIONAL)
def test_conventional_reads_only_the_chosen_magnification(name):
    torch.manual_seed(0)
    bag = make_bag(torch.Generator().manual_seed(2), 6, empty_rows=2)
    changed_padding = SlideBag(
        bag.slide_id, bag.x5, bag.x20.masked_fill(~bag.child_mask[..., None], -3.0), bag.child_mask
    )
    changed_5x = SlideBag(bag.slide_id, bag.x5 + 1.0, bag.x20, bag.child_mask)
    changed_20x = SlideBag(bag.slide_id, bag.x5, bag.x20 + 1.0, bag.child_mask)
    model20 = build_model(name, config().model_spec(task(2))).eval()
    model5 = build_model(f"{name}_5x", config().model_spec(task(2))).eval()
    assert model5.mag == "5x" and model20.mag == "20x"
    with torch.no_grad():
        base20 = model20(bag).logits
        assert torch.allclose(model20(changed_padding).logits, base20)
        assert torch.allclose(model20(changed_5x).logits, base20)
        assert not torch.allclose(model20(changed_20x).logits, base20)
        base5 = model5(bag).logits
        assert torch.allclose(model5(changed_20x).logits, base5)
        assert not torch.allclose(model5(changed_5x).logits, base5)


def test_bag_instances_drops_padding_and_falls_back_to_5x():
    bag = make_bag(torch.Generator().manual_seed(3), 4, empty_rows=2)
    real = bag_instances(bag, "20x")
    assert real.shape == (bag.num_20x, D) and not (real == 7.0).all(dim=1).any()
    empty = SlideBag("e", bag.x5, bag.x20, torch.zeros_like(bag.child_mask))
    assert torch.equal(bag_instances(empty, "20x"), bag.x5)
    assert torch.equal(bag_instances(bag, "5x"), bag.x5)


@pytest.mark.parametrize("name", PERMUTATION_INVARIANT)
def test_pooling_baselines_ignore_instance_order(name):
    torch.manual_seed(0)
    model = build_model(f"{name}_5x", config().model_spec(task(3))).eval()
    bag = make_bag(torch.Generator().manual_seed(4), 7)
    perm = torch.randperm(7)
    shuffled = SlideBag("p", bag.x5[perm], bag.x20[perm], bag.child_mask[perm])
    with torch.no_grad():
        assert torch.allclose(model(bag).logits, model(shuffled).logits, atol=1e-5)


def test_mil_fc_top_instance_rules():
    binary = MILfc(D, 2)
    # class-1 probabilities 0.5, 0.88, 0.05: instance 1 although instance 2 is the most confident overall
    assert int(binary.select_top_instance(torch.tensor([[0.0, 0.0], [0.0, 2.0], [3.0, 0.0]]))) == 1
    multi = MILfc(D, 3)
    # highest probability of any class: instance 0 (class 0, p ~ 0.99)
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    assert int(multi.select_top_instance(logits)) == 0
    bag = make_bag(torch.Generator().manual_seed(5), 5)
    out = multi.eval()(bag)
    instance_logits = multi.classifier(multi.embed(bag_instances(bag)))
    assert torch.allclose(out.logits[0], instance_logits[out.extras["top_instance"]])


def test_abmil_attention_is_a_distribution_and_duplicates_do_not_matter():
    torch.manual_seed(0)
    model = build_model("ABMIL_5x", config().model_spec(task(2))).eval()
    bag = make_bag(torch.Generator().manual_seed(6), 6)
    out = model(bag)
    assert torch.isclose(out.extras["attention"].sum(), torch.tensor(1.0))
    single = SlideBag("a", bag.x5[:1], bag.x20[:1], bag.child_mask[:1])
    repeated = SlideBag(
        "b", bag.x5[:1].repeat(5, 1), bag.x20[:1].repeat(5, 1, 1), bag.child_mask[:1].repeat(5, 1)
    )
    assert torch.allclose(model(single).logits, model(repeated).logits, atol=1e-6)


# ----------------------------------------------------------------------------- Nyström / TransMIL
def test_package_iterative_pinv_matches_the_exact_pseudo_inverse():
    gen = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(2, 3, 6, 6, generator=gen), dim=-1)
    assert torch.allclose(moore_penrose_iter_pinv(a, iters=25), torch.linalg.pinv(a), atol=1e-3)


def exact_attention(attention: NystromAttention, x: torch.Tensor) -> torch.Tensor:
    n, heads = x.shape[1], attention.heads
    dim_head = attention.to_qkv.out_features // (3 * heads)
    q, k, v = (t.reshape(1, n, heads, dim_head).transpose(1, 2) for t in attention.to_qkv(x).chunk(3, dim=-1))
    out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim_head), dim=-1) @ v
    return attention.to_out(out.transpose(1, 2).reshape(1, n, heads * dim_head))


def test_nystrom_is_exact_when_tokens_repeat_within_segments():
    """12 tokens = 4 segments of 3 identical tokens: landmarks are the tokens, and Eq. 14 is exact."""
    torch.manual_seed(0)
    attention = NystromAttention(
        16, heads=2, dim_head=8, num_landmarks=4, pinv_iterations=30, residual=False, dropout=0.0
    )
    x = torch.randn(1, 4, 16).repeat_interleave(3, dim=1)
    assert torch.allclose(attention(x), exact_attention(attention, x), atol=1e-4)
    # with distinct tokens it is an approximation, not the exact result
    y = torch.randn(1, 12, 16) * 3
    assert not torch.allclose(attention(y), exact_attention(attention, y), atol=1e-4)


@pytest.mark.parametrize("n", [300, 512])  # 300 is front-padded to 512 by the package, 512 is not
def test_transmil_attention_equals_the_package_nystrom_attention(n):
    """TransMIL's attention is the package's NystromAttention with TransMIL's settings (dim 512, 8 heads
    of 64, 256 landmarks, 6 pinv iterations, value-conv residual, dropout 0.1): same weights, same output."""
    torch.manual_seed(0)
    model = TransMIL(D, 2).eval()
    reference = NystromAttention(
        dim=512,
        dim_head=512 // 8,
        heads=8,
        num_landmarks=512 // 2,
        pinv_iterations=6,
        residual=True,
        dropout=0.1,
    )
    x = torch.randn(1, n, 512)
    for layer in (model.layer1, model.layer2):
        reference.load_state_dict(layer.attention.state_dict())  # strict: same parameters and shapes
        reference.eval()
        ours = layer.attention
        assert (ours.heads, ours.num_landmarks, ours.pinv_iterations, ours.residual) == (8, 256, 6, True)
        assert ours.to_out[1].p == reference.to_out[1].p == 0.1
        with torch.no_grad():
            assert torch.allclose(ours(x), reference(x))
            assert torch.allclose(layer(x), x + reference(layer.norm(x)))


@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_transmil_square_padding_any_bag_size(n):
    torch.manual_seed(0)
    model = TransMIL(D, 2, hidden=32, heads=4, num_landmarks=8).eval()
    logits, _ = model.classify(torch.randn(n, D))
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


# ----------------------------------------------------------------------------- learning
@pytest.mark.parametrize("name", CONVENTIONAL)
def test_conventional_learns_a_planted_3_class_problem(name):
    train, test = synthetic_problem(3, n_train=12, n_test=9)
    torch.manual_seed(0)
    if name == "TransMIL":  # same architecture at a small width, to keep the test fast
        model = TransMIL(D, 3, hidden=64, heads=4, num_landmarks=16)
    else:
        model = build_model(name, config(drop_out=False).model_spec(task(3)))
    accuracy = train_and_score(model, train, test, epochs=8)
    assert accuracy > 0.5, f"{name}: held-out accuracy {accuracy:.2f} (chance 0.33)"


# ----------------------------------------------------------------------------- zero-shot
def test_zero_shot_logits_by_hand():
    e = torch.eye(3)
    model = ZeroShotMIL(
        text5=torch.stack([e[0], e[1]]),
        classes5=torch.tensor([0, 1]),
        text20=torch.stack([e[0], e[2], e[1], 2 * e[1]]),
        classes20=torch.tensor([0, 0, 1, 1]),
        num_classes=2,
        logit_scale=math.log(10.0),
        top_k=2,
    )
    x5 = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 0]])
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[0, :2] = True
    x20 = torch.full((3, 16, 3), 5.0)  # padding must be ignored
    x20[0, 0] = torch.tensor([2.0, 0, 0])
    x20[0, 1] = torch.tensor([0.0, 0, 1])
    out = model(SlideBag("z", x5, x20, mask))
    # 5x: each class text has cosines {1, 0, 0.707} -> top-2 mean 0.8536 for both classes.
    # 20x: class 0 texts e0, e2 -> top-2 means 0.5, 0.5 -> 0.5; class 1 texts e1 -> 0.
    top2 = (1 + 1 / math.sqrt(2)) / 2
    expected = 10.0 * torch.tensor([[top2 + 0.5, top2]])
    assert torch.allclose(out.logits, expected, atol=1e-5)
    assert model.trainable_parameters() == []


def test_zero_shot_from_tower_encodes_each_scale_with_its_descriptions():
    tower = FakeTower()
    coarse, fine = descriptions(2)
    model = ZeroShotMIL.from_tower(tower, coarse, fine)
    assert torch.allclose(model.text5, F.normalize(tower.encode_text(coarse[0] + coarse[1]), dim=-1))
    assert torch.allclose(model.text20, F.normalize(tower.encode_text(fine[0] + fine[1]), dim=-1))
    assert torch.equal(model.classes20, class_index(fine)) and model.classes20.tolist() == [0] * 12 + [1] * 12
    bag = make_bag(torch.Generator().manual_seed(7), 4)
    out = model(bag)
    assert out.logits.shape == (1, 2) and torch.isfinite(out.logits).all()
    assert torch.allclose(out.logits, 10.0 * (out.extras["score5"] + out.extras["score20"]).unsqueeze(0))


def test_zero_shot_builder_reads_the_prompt_file(tmp_path, monkeypatch):
    spec = task(2, prompt_dir=tmp_path)
    write_prompt_file(tmp_path, "toy", spec.class_names)
    from models.baselines import zero_shot

    monkeypatch.setattr(zero_shot, "load_text_tower", lambda cfg: FakeTower())
    model = build_model("zero_shot", config(LLM="curated").model_spec(spec))
    assert model.text5.shape == (8, D) and model.text20.shape == (24, D)
    with pytest.raises(Exception, match="feature_dim 64 does not match"):
        build_model("zero_shot", config(feature_dim=64).model_spec(spec))


def test_zero_shot_with_tiny_hf_clip(tmp_path):
    folder = tmp_path / "tiny_clip"
    save_tiny_hf_clip(folder, width=64, projection=64)
    tower = load_towers("plip", source=str(folder), sides=("text",)).text
    coarse, fine = descriptions(2)
    model = ZeroShotMIL.from_tower(tower, coarse, fine)
    bag = make_bag(torch.Generator().manual_seed(8), 5, dim=64)
    out = model(bag)
    assert out.logits.shape == (1, 2) and torch.isfinite(out.logits).all()
    expected = torch.exp(tower.logit_scale.detach()) * (out.extras["score5"] + out.extras["score20"])
    assert torch.allclose(out.logits[0], expected)


# ----------------------------------------------------------------------------- ViLa-MIL
def vila(num_classes: int = 2, **kw) -> ViLaMIL:
    torch.manual_seed(0)
    coarse, fine = descriptions(num_classes)
    return ViLaMIL(FakeTower(), coarse, fine, D, n_ctx=4, num_prototypes=4, **kw)


def test_vila_mil_shape_gradients_and_frozen_tower():
    model = vila(3)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable and not any(id(p) in trainable for p in model.tower.parameters())
    for bag in (one_slide(3), make_bag(torch.Generator().manual_seed(9), 8, empty_rows=3)):
        model.zero_grad()
        out = model(bag)
        assert out.logits.shape == (1, 3) and torch.isfinite(out.logits).all()
        F.cross_entropy(out.logits, torch.tensor([2])).backward()
        for name, p in model.named_parameters():
            if name.startswith("tower."):
                assert p.grad is None, name
            else:
                assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not model.train().tower.training


def test_vila_mil_cached_text_features_give_the_same_logits():
    model = vila(2).eval()
    bag = make_bag(torch.Generator().manual_seed(10), 5)
    with torch.no_grad():
        assert torch.allclose(model(bag).logits, model(bag, model.precompute()).logits, atol=1e-6)
        low, high = model.precompute()
    assert low.shape == (2, D) and high.shape == (2, D)
    assert torch.allclose(low.norm(dim=-1), torch.ones(2))


def test_vila_mil_learns_a_planted_problem():
    train, test = synthetic_problem(2, n_train=12, n_test=8, seed=1)
    accuracy = train_and_score(vila(2), train, test, epochs=6, lr=1e-3)
    assert accuracy > 0.6, f"held-out accuracy {accuracy:.2f} (chance 0.5)"


def test_vila_mil_builder_reads_the_prompt_file(tmp_path, monkeypatch):
    spec = task(2, prompt_dir=tmp_path)
    write_prompt_file(tmp_path, "toy", spec.class_names)
    from models.baselines import vila_mil

    monkeypatch.setattr(vila_mil, "load_text_tower", lambda cfg: FakeTower())
    model = build_model("ViLa_MIL", config(num_context_tokens=3, prototype_number=5).model_spec(spec))
    assert model.prompts_low.ctx.shape == (3, 16) and model.prototypes.shape == (1, 5, D)
    assert model.prompts_low.token_ids(0).shape[0] == 4 and model.prompts_high.token_ids(1).shape[0] == 12


def test_vila_mil_with_tiny_hf_clip(tmp_path):
    folder = tmp_path / "tiny_clip"
    save_tiny_hf_clip(folder, width=64, projection=64)
    tower = load_towers("plip", source=str(folder), sides=("text",)).text
    coarse, fine = descriptions(2)
    torch.manual_seed(0)
    model = ViLaMIL(tower, coarse, fine, feature_dim=64, n_ctx=4, num_prototypes=4)
    out = model(make_bag(torch.Generator().manual_seed(11), 4, dim=64))
    assert out.logits.shape == (1, 2) and torch.isfinite(out.logits).all()
    F.cross_entropy(out.logits, torch.tensor([0])).backward()
    assert model.prompts_low.ctx.grad.abs().sum() > 0 and model.prompts_high.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.tower.parameters())


def test_vila_mil_checkpoint_leaves_out_the_tower_and_round_trips():
    model = vila(2)
    state = model.state_dict()
    assert state and not any(k.startswith("tower.") for k in state)
    assert "prompts_low.ctx" in state and "prototypes" in state
    other = vila(2)
    with torch.no_grad():
        other.prototypes.add_(1.0)
    other.load_state_dict(state)
    assert torch.equal(other.prototypes, model.prototypes)
    with pytest.raises(RuntimeError, match="missing"):
        other.load_state_dict({k: v for k, v in state.items() if k != "prototypes"})


@pytest.mark.parametrize("classes", [2, 3])
def test_mil_fc_reference_init_is_the_released_one(classes):
    """--variant reference: the released MIL_fc's initial weights for the same seed (default-initialised
    layers fc -> classifier, then Xavier-normal weights and zero biases in that order); corrected keeps
    PyTorch's default init."""
    dim = 1024  # the released feature size: Xavier std sqrt(2 / (1024 + 512)) = 0.036, default ~0.018
    torch.manual_seed(11)
    fc, head = nn.Linear(dim, 512), nn.Linear(512, classes)
    for layer in (fc, head):
        nn.init.xavier_normal_(layer.weight)
        nn.init.zeros_(layer.bias)
    spec = config(variant="reference", feature_dim=dim).model_spec(task(classes))
    torch.manual_seed(11)
    ours = build_model("MIL_fc", spec)
    assert spec.variant == "reference"
    assert torch.equal(ours.embed[0].weight, fc.weight) and torch.equal(ours.classifier.weight, head.weight)
    assert not ours.embed[0].bias.any() and not ours.classifier.bias.any()
    assert abs(float(ours.embed[0].weight.detach().std()) - math.sqrt(2 / (dim + 512))) < 1e-3
    torch.manual_seed(11)
    default = build_model("MIL_fc", config(variant="corrected", feature_dim=dim).model_spec(task(classes)))
    assert abs(float(default.embed[0].weight.detach().std()) - 1 / math.sqrt(3 * dim)) < 1e-3
    assert default.embed[0].bias.abs().sum() > 0
