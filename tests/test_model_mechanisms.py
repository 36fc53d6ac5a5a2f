"""Each HiVE-MIL mechanism computed by hand on tiny inputs and compared."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.hivemil.attention import ModalityScaleAttention
from models.hivemil.gnn import HierHeteroGNN
from models.hivemil.graph import HIER_EDGE_TYPES, INTRA_EDGE_TYPES, build_hier_graph, stride_parents
from models.hivemil.htcl import hierarchical_text_contrastive_loss
from models.hivemil.slide_logits import topk_class_logits
from models.hivemil.tgdf import text_guided_filter


# ----- TGDF -----------------------------------------------------------------------------------------
def test_tgdf_thresholds_and_kept_entries_by_hand():
    # logit_scale = log(2): similarities are doubled before min-max normalisation (which undoes it).
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.0, 0.0]])
    text = torch.eye(2)
    res = text_guided_filter(image, text, torch.tensor(math.log(2.0)), alpha=0.5)
    # column 0 raw sims *2: [2, 0, 1, 0] -> min-max [1, 0, .5, 0]; mean .375, std(unbiased) of that:
    col = torch.tensor([1.0, 0.0, 0.5, 0.0])
    tau = col.mean() + 0.5 * col.std()
    assert res.threshold[0].item() == pytest.approx(tau.item(), abs=1e-6)
    assert res.threshold[1].item() == pytest.approx(tau.item(), abs=1e-6)  # symmetric column
    expected = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.0, 0.0]])
    expected[expected < tau] = 0.0  # tau ~ 0.61: the 0.5 entries are dropped
    assert torch.allclose(res.kept, expected, atol=1e-6)
    assert res.image_mask.tolist() == [True, True, False, False]


def test_tgdf_zero_spread_column_keeps_nothing_and_no_nan():
    image = torch.ones(3, 2)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    res = text_guided_filter(image, text, torch.tensor(0.0), alpha=0.5)
    assert torch.isfinite(res.kept).all()
    assert not res.image_mask.any()


def test_tgdf_single_image_keeps_nothing_like_released_code():
    res = text_guided_filter(torch.randn(1, 4), torch.randn(3, 4), torch.tensor(1.0), alpha=0.5)
    assert not res.image_mask.any()  # std is NaN -> every comparison false


def test_tgdf_empty_image_set():
    res = text_guided_filter(torch.zeros(0, 4), torch.randn(3, 4), torch.tensor(1.0), alpha=0.5)
    assert res.kept.shape == (0, 3) and res.image_mask.shape == (0,)


# ----- graph ----------------------------------------------------------------------------------------
def test_graph_edges_and_parent_mapping_by_hand():
    x5_kept = torch.tensor([[0.0, 0.9], [0.7, 0.0], [0.8, 0.6]])  # 3 patches x 2 coarse texts
    # two kept parents (1 and 2), 2 children each; 6 fine texts (3 per coarse)
    x20_kept = torch.zeros(4, 6)
    x20_kept[0, 5] = 1.0
    x20_kept[3, 0] = 0.5
    x20_parent = torch.tensor([1, 1, 2, 2])
    g_true = build_hier_graph(x5_kept, x20_kept, x20_parent, 3, children_per_parent=2, true_parents=True)
    g_rel = build_hier_graph(x5_kept, x20_kept, x20_parent, 3, children_per_parent=2, true_parents=False)
    img_to_txt = g_true[INTRA_EDGE_TYPES[0]].edge_index
    assert img_to_txt.tolist() == [[0, 1, 2, 2], [1, 0, 0, 1]]  # row-major non-zero entries
    txt_to_img = g_true[INTRA_EDGE_TYPES[2]].edge_index
    assert txt_to_img.tolist() == [[0, 0, 1, 1], [1, 2, 0, 2]]
    assert g_true[INTRA_EDGE_TYPES[1]].edge_index.tolist() == [[0, 3], [5, 0]]
    # true parents
    assert g_true[HIER_EDGE_TYPES[0]].edge_index.tolist() == [[0, 1, 2, 3], [1, 1, 2, 2]]
    assert g_true[HIER_EDGE_TYPES[1]].edge_index.tolist() == [[1, 1, 2, 2], [0, 1, 2, 3]]
    # released stride mapping: child r -> r // 2, i.e. parents 0,0,1,1 (wrong after filtering)
    assert g_rel[HIER_EDGE_TYPES[0]].edge_index.tolist() == [[0, 1, 2, 3], [0, 0, 1, 1]]
    # text hierarchy: fine j -> coarse j // 3
    assert g_true[HIER_EDGE_TYPES[2]].edge_index.tolist() == [[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 1, 1]]


def test_stride_parents_drops_children_past_last_parent():
    child, parent = stride_parents(7, 3, 2)
    assert child.tolist() == [0, 1, 2, 3, 4, 5] and parent.tolist() == [0, 0, 0, 1, 1, 1]


# ----- attention ------------------------------------------------------------------------------------
def test_dense_attention_matches_manual_multihead():
    torch.manual_seed(0)
    attn = ModalityScaleAttention(8, num_heads=2)
    query, key = torch.randn(3, 8), torch.randn(5, 8)
    out = attn.dense("hier_x20tox5_image", query, key, 0, 1)
    emb = attn.scale_embeddings.weight
    q = attn.q_projs["hier_x20tox5_image"](query + emb[0])
    k = attn.k_projs["hier_x20tox5_image"](key + emb[1])
    wq, wk, wv = attn.mha.in_proj_weight.chunk(3)
    bq, bk, bv = attn.mha.in_proj_bias.chunk(3)
    Q, K, V = F.linear(q, wq, bq), F.linear(k, wk, bk), F.linear(k, wv, bv)
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        a = torch.softmax(Q[:, sl] @ K[:, sl].t() / 2.0, dim=-1)
        heads.append(a @ V[:, sl])
    expected = attn.mha.out_proj(torch.cat(heads, dim=1))
    assert out.shape == (3, 8)
    assert torch.allclose(out, expected, atol=1e-5)


def test_sparse_attention_equals_dense_masked_reference():
    torch.manual_seed(1)
    attn = ModalityScaleAttention(8, num_heads=2)
    query, key = torch.randn(4, 8), torch.randn(6, 8)
    # edges src(key) -> dst(query); query 3 has no edge
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 1, 1, 2, 2]])
    out = attn.sparse("hier_x5tox20_image", query, key, 1, 0, edge_index)
    q, k = attn._project("hier_x5tox20_image", query, key, 1, 0)
    allowed = torch.zeros(4, 6, dtype=torch.bool)
    allowed[edge_index[1], edge_index[0]] = True
    dense, _ = attn.mha(q[:3], k, k, attn_mask=~allowed[:3])  # reference on nodes that have edges
    assert torch.allclose(out[:3], dense, atol=1e-5)
    assert torch.equal(out[3], torch.zeros(8))  # no incoming edge -> no attention output


# ----- GNN ------------------------------------------------------------------------------------------
def _tiny_graph(n5=3, n20=6, d=8):
    torch.manual_seed(2)
    x5_kept = (torch.rand(n5, 4) > 0.5).float()
    x20_kept = (torch.rand(n20, 12) > 0.6).float()
    parent = torch.arange(n20) // 2
    g = build_hier_graph(x5_kept, x20_kept, parent, 3, children_per_parent=2, true_parents=True)
    feats = {
        "x5text": torch.randn(4, d),
        "x5image": torch.randn(n5, d),
        "x20text": torch.randn(12, d),
        "x20image": torch.randn(n20, d),
    }
    return g, feats


@pytest.mark.parametrize("dense", [True, False])
def test_gnn_shapes_and_unit_norm(dense):
    g, feats = _tiny_graph()
    gnn = HierHeteroGNN(8, dense_attention=dense)
    out = gnn(g, feats)
    for t, x in feats.items():
        assert out[t].shape == x.shape
        assert torch.allclose(out[t].norm(dim=-1), torch.ones(x.shape[0]), atol=1e-5)


def test_double_residual_adds_input_once_more():
    g, feats = _tiny_graph()
    single = HierHeteroGNN(8, double_residual=False).layer1
    double = HierHeteroGNN(8, double_residual=True).layer1
    double.load_state_dict(single.state_dict())
    diff = {t: double(g, feats)[t] - single(g, feats)[t] for t in feats}
    # every node type receives exactly one hierarchical edge type in this graph
    for t, x in feats.items():
        assert torch.allclose(diff[t], x, atol=1e-5), t


def test_released_state_dict_names():
    names = set(HierHeteroGNN(8).state_dict())
    assert "layer1.convs.convs.<x5text___self___x5text>.lin_l.weight" in names
    assert "layer2.attn.mha.in_proj_weight" in names
    assert "layer1.attn.q_projs.hier_x20tox5_image.weight" in names
    assert "layer1.attn.scale_embeddings.weight" in names


# ----- logits ---------------------------------------------------------------------------------------
def test_topk_logits_by_hand_with_k_clipping():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])  # 2 classes x 2 texts
    sim = image @ text.t()
    # k_max = 2 -> k = 2
    per_text = torch.stack([sim[:, j].topk(2).values.mean() for j in range(4)]) * 3.0
    expected = per_text.reshape(2, 2).mean(1)
    got = topk_class_logits(image, text, 2, 2, torch.tensor(3.0))
    assert torch.allclose(got, expected)
    # k_max = 100 > N -> all images
    per_text = sim.mean(0) * 3.0
    assert torch.allclose(
        topk_class_logits(image, text, 2, 100, torch.tensor(3.0)), per_text.reshape(2, 2).mean(1)
    )


def test_topk_logits_without_images_are_zero():
    assert torch.equal(
        topk_class_logits(torch.zeros(0, 2), torch.randn(4, 2), 2, 5, torch.tensor(1.0)), torch.zeros(2)
    )


# ----- HTCL -----------------------------------------------------------------------------------------
def test_htcl_value_both_variants_by_hand():
    coarse = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # 2 classes x 1 coarse text
    fine = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # 2 fine per coarse
    a0, a1 = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    pos0 = F.cosine_similarity(a0, coarse[0], dim=0)
    pos1 = F.cosine_similarity(a1, coarse[1], dim=0)
    zero = -(torch.log(torch.sigmoid(pos0)) + torch.log(torch.sigmoid(pos1))) / 2
    got = hierarchical_text_contrastive_loss(coarse, fine, num_classes=2, negatives="zero")
    assert got.item() == pytest.approx(zero.item(), abs=1e-6)
    neg = F.cosine_similarity(a0, a1, dim=0)
    real = -(torch.log(torch.sigmoid(pos0 - neg)) + torch.log(torch.sigmoid(pos1 - neg))) / 2
    got = hierarchical_text_contrastive_loss(coarse, fine, num_classes=2, negatives="real")
    assert got.item() == pytest.approx(real.item(), abs=1e-6)
    assert real.item() != pytest.approx(zero.item(), abs=1e-3)


def test_chunked_dense_attention_equals_one_block_values_and_grads():
    torch.manual_seed(3)
    attn = ModalityScaleAttention(8, num_heads=2)
    query = torch.randn(11, 8, requires_grad=True)
    key = torch.randn(7, 8, requires_grad=True)
    full = attn.dense("hier_x5tox20_text", query, key, 1, 0)
    full.square().sum().backward()
    grads_full = (query.grad.clone(), key.grad.clone(), attn.mha.in_proj_weight.grad.clone())
    for t in (query, key, attn.mha.in_proj_weight):
        t.grad = None
    chunked = attn.dense("hier_x5tox20_text", query, key, 1, 0, chunk=4)
    chunked.square().sum().backward()
    assert torch.allclose(full, chunked, atol=1e-6)
    for a, b in zip(grads_full, (query.grad, key.grad, attn.mha.in_proj_weight.grad)):
        assert torch.allclose(a, b, atol=1e-5)


def test_cap_children_keeps_real_children_first_and_is_seeded():
    from models.hivemil.model import cap_children

    valid = torch.tensor([[True, False, True, True, False], [False, False, False, False, True]])
    rows = torch.arange(10.0).reshape(2, 5, 1)
    r1, v1 = cap_children(rows, valid, 2)
    r2, v2 = cap_children(rows, valid, 2)
    assert torch.equal(r1, r2) and torch.equal(v1, v2)
    assert v1[0].all()  # row 0 has 3 real children: two of them are kept
    assert set(r1[0, :, 0].tolist()) <= {0.0, 2.0, 3.0}
    assert v1[1].tolist().count(True) == 1 and 9.0 in r1[1, :, 0].tolist()  # the single real child survives
