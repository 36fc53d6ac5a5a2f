"""Same seed, same initial weights as the released HiVE-MIL with CONCH (its ``hivemil_conch`` model file).

After seeding, the released CONCH run builds the whole CoCa model with conch-fork's ``create_model`` (its
default initialisations draw from the global RNG: text tower, vision tower, text decoder), then the GNN --
whose attention keeps PyTorch's default init (no Xavier re-initialisation, unlike the Hugging Face model
file) -- then the context. Reproduced here with conch-fork's own factory and plain ``torch.nn`` layers in
the released creation order, on a tiny random CONCH.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn
from torch_geometric.nn import SAGEConv

from models.hivemil.attention import HIER_RELATIONS
from models.hivemil.model import HiveMIL
from models.hivemil.options import HiveMILOptions, VariantSwitches
from models.towers import load_towers
from models.towers.tiny import save_tiny_conch

SEED = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_conch(tmp_path_factory.mktemp("conch") / "conch")


def _released_construction(checkpoint, dim: int, width: int):
    """Released order from the seed on: CoCa, then per layer 8 SAGEConvs and the attention, then ctx."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from conch.open_clip_custom import create_model
    cfg = json.loads((checkpoint.parent / "conch_config.json").read_text())
    torch.manual_seed(SEED)
    create_model(cfg, checkpoint_path=str(checkpoint))
    layers = []
    for _ in range(2):
        convs = [SAGEConv(dim, dim, aggr="mean") for _ in range(8)]
        scale, mha = nn.Embedding(2, dim), nn.MultiheadAttention(dim, 2)
        q = [nn.Linear(dim, dim) for _ in HIER_RELATIONS]
        k = [nn.Linear(dim, dim) for _ in HIER_RELATIONS]
        layers.append((convs, scale, mha, q, k))
    ctx = torch.empty(16, width)
    nn.init.normal_(ctx, std=0.02)
    return layers, ctx


def test_seeded_conch_model_has_the_released_initial_weights(checkpoint):
    tower = load_towers("conch", checkpoint.parent, sides=("text",)).text
    dim, width = tower.embed_dim, tower.width
    released_layers, released_ctx = _released_construction(checkpoint, dim, width)
    descriptions = [[f"term {c} {i} : text {i}" for i in range(16)] for c in range(2)]
    options = HiveMILOptions(switches=VariantSwitches.for_variant("reference", text_encoding="causal"))
    torch.manual_seed(SEED)
    tower = load_towers(
        "conch", checkpoint.parent, sides=("text",)
    ).text  # builds the whole CoCa, as released
    model = HiveMIL(tower, descriptions, options)
    for layer, (convs, scale, mha, q, k) in zip((model.gnn.layer1, model.gnn.layer2), released_layers):
        ours_convs = list(layer.convs.convs.values())
        for ours, theirs in zip(ours_convs, convs):
            assert torch.equal(ours.lin_l.weight, theirs.lin_l.weight)
            assert torch.equal(ours.lin_r.weight, theirs.lin_r.weight)
        assert torch.equal(layer.attn.scale_embeddings.weight, scale.weight)
        assert torch.equal(layer.attn.mha.in_proj_weight, mha.in_proj_weight)
        for rel, q_theirs, k_theirs in zip(HIER_RELATIONS, q, k):
            assert torch.equal(layer.attn.q_projs[rel].weight, q_theirs.weight)
            assert torch.equal(layer.attn.k_projs[rel].bias, k_theirs.bias)
    assert torch.equal(model.prompt_learner.ctx, released_ctx)
