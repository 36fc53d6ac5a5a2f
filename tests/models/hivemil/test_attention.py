"""Modality-scale attention (docs/method.md section 5): dense, sparse and chunked forms by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.hivemil.attention import ModalityScaleAttention


def _reference_qk(attn, relation, query, key, query_scale, key_scale):
    """The definition: per-relation projections of the scale-embedded inputs (before the MHA)."""
    emb = attn.scale_embeddings.weight
    return attn.q_projs[relation](query + emb[query_scale]), attn.k_projs[relation](key + emb[key_scale])


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
    q, k = _reference_qk(attn, "hier_x5tox20_image", query, key, 1, 0)
    allowed = torch.zeros(4, 6, dtype=torch.bool)
    allowed[edge_index[1], edge_index[0]] = True
    dense, _ = attn.mha(q[:3], k, k, attn_mask=~allowed[:3])  # reference on nodes that have edges
    assert torch.allclose(out[:3], dense, atol=1e-5)
    assert torch.equal(out[3], torch.zeros(8))  # no incoming edge -> no attention output


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


def test_sparse_attention_gives_exactly_zero_without_incoming_edge_not_the_output_bias():
    """A destination without incoming edges gets 0, not ``out_proj(0) = out_proj.bias``."""
    torch.manual_seed(2)
    attn = ModalityScaleAttention(8, num_heads=2)
    with torch.no_grad():
        attn.mha.out_proj.bias.fill_(
            0.25
        )  # nn.MultiheadAttention starts it at zero, which would hide a bias leak
    query, key = torch.randn(3, 8), torch.randn(4, 8)
    edge_index = torch.tensor([[0, 1, 3], [0, 0, 2]])  # query 1 has no incoming edge
    out = attn.sparse("hier_x20tox5_image", query, key, 0, 1, edge_index)
    assert torch.equal(out[1], torch.zeros(8))
    # Destinations with edges do include the bias (the masked dense reference agrees).
    q, k = _reference_qk(attn, "hier_x20tox5_image", query, key, 0, 1)
    allowed = torch.zeros(3, 4, dtype=torch.bool)
    allowed[edge_index[1], edge_index[0]] = True
    dense, _ = attn.mha(q, k, k, attn_mask=~allowed)
    assert torch.allclose(out[[0, 2]], dense[[0, 2]], atol=1e-5)


@pytest.mark.parametrize(("n_query", "n_key"), [(40, 50), (3, 4)])
def test_folded_projections_equal_two_linear_maps_values_and_grads(n_query, n_key):
    """Many rows: the q/k projection and the attention's in-projection are applied as one folded product
    (few rows: one after the other), with the scale embedding carried in the bias; values and every
    parameter's gradient equal the two maps applied back to back to h + s (nn.MultiheadAttention)."""
    torch.manual_seed(5)
    attn = ModalityScaleAttention(8, num_heads=2)
    query, key = torch.randn(n_query, 8), torch.randn(n_key, 8)
    relation = "hier_x5tox20_image"
    out = attn.dense(relation, query, key, 1, 0)
    out.square().sum().backward()
    folded_grads = {n: p.grad.clone() for n, p in attn.named_parameters() if p.grad is not None}
    attn.zero_grad()
    q, k = _reference_qk(attn, relation, query, key, 1, 0)
    expected = attn.mha(q, k, k, need_weights=False)[0]
    expected.square().sum().backward()
    assert torch.allclose(out, expected, atol=1e-5)
    for name, grad in folded_grads.items():
        assert torch.allclose(grad, dict(attn.named_parameters())[name].grad, atol=1e-4), name
    assert set(folded_grads) >= {
        f"q_projs.{relation}.weight",
        f"k_projs.{relation}.weight",
        "mha.in_proj_weight",
        "scale_embeddings.weight",
    }
