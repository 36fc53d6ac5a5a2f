"""Modality-scale hierarchical attention (docs/method.md §5.3, paper Sec. 3.4 "hierarchical aggregation").

Queries are the destination nodes, keys/values the source nodes of one hierarchical edge type:

    q = Q_e(h_dst + s[scale(dst)]),   k = K_e(h_src + s[scale(src)])
    out = MHA(q, k, k)              (2 heads, value = projected key)

with learned scale embeddings ``s`` (2 x D), per-edge-type projections ``Q_e``/``K_e`` and one
multi-head attention shared by the four hierarchical edge types. The methods return ``out``; the
layer adds the residual (once, or twice as the released code does -- see :mod:`models.hivemil.gnn`).

Two ways to choose which sources a destination attends to:
- :meth:`dense` (released code): every destination attends to *every* source node of the other scale.
- :meth:`sparse` (corrected): only along the edges (true parent <-> children), as a segment softmax
  over each destination's incoming edges -- memory and time linear in the number of edges. A node
  without incoming edges gets no attention output (zero).
Both use the same parameters (``nn.MultiheadAttention``'s in/out projections, computed here with
``scaled_dot_product_attention``), so checkpoints are shared.

Merged keys (``key_log_count`` in :meth:`dense`): a key row that stands for m identical source nodes
gets ``log m`` added to its scores, so the softmax weighs it as the m copies together (exact algebra:
``m exp(s) = exp(s + log m)``). Merged queries need nothing: identical queries give identical rows.

Op order (``exact=True`` in :meth:`dense`, ``--exact-order``): the released code applies ``Q_e``/``K_e``
and then calls ``nn.MultiheadAttention(q, k, k)`` itself (unbatched input, attention weights
returned, so PyTorch's explicit softmax(q k^T / sqrt(d)) v path). ``exact`` does exactly that and
gives the released logits bit for bit; the default fast path folds ``Q_e`` into the attention's input
projection when that is cheaper and uses the fused attention kernel (same maths, last-bit rounding
differs: up to ~5e-7 on the golden logits; docs/divergences.md §15).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

HIER_RELATIONS = ("hier_x20tox5_image", "hier_x5tox20_image", "hier_x20tox5_text", "hier_x5tox20_text")


class ModalityScaleAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int = 2, relations=HIER_RELATIONS, xavier_init: bool = True):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        # Creation and initialisation follow the released order exactly, so one seed gives the released
        # initial weights: scale embedding, attention, the embedding's init, then the q/k projections.
        # ``xavier_init=False``: the released CONCH model file, which skips both re-initialisations.
        self.scale_embeddings = nn.Embedding(2, dim)
        self.mha = nn.MultiheadAttention(dim, num_heads)
        if xavier_init:
            nn.init.xavier_normal_(self.scale_embeddings.weight)
        self.q_projs = nn.ModuleDict({r: nn.Linear(dim, dim) for r in relations})
        self.k_projs = nn.ModuleDict({r: nn.Linear(dim, dim) for r in relations})
        for proj in [*self.q_projs.values(), *self.k_projs.values()] if xavier_init else []:
            nn.init.xavier_normal_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _projected(self, relation: str, query, key, query_scale: int, key_scale: int):
        """Per-head queries, keys and values ``[heads, N, head_dim]`` of one relation.

        Mathematically ``q = W_in_q (Q_e(h_dst + s) ) + b_in_q`` and ``k, v = W_in_{k,v} (K_e(h_src + s))
        + b_in_{k,v}``: two linear maps back to back (:func:`_two_linear`), with the scale embedding ``s``
        carried in the bias instead of added to every row (its gradient then needs no product over the
        rows, and first-layer image features, which need no gradient, get none).
        """
        emb = self.scale_embeddings.weight
        w_q, w_k, w_v = self.mha.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.mha.in_proj_bias.chunk(3)
        q = _two_linear(query, emb[query_scale], self.q_projs[relation], w_q, b_q)
        kv = _two_linear(
            key, emb[key_scale], self.k_projs[relation], torch.cat([w_k, w_v]), torch.cat([b_k, b_v])
        )
        k, v = kv.chunk(2, dim=-1)
        heads, head_dim = self.num_heads, self.dim // self.num_heads
        return tuple(t.reshape(-1, heads, head_dim).transpose(0, 1) for t in (q, k, v))

    def _output(self, heads_out: torch.Tensor) -> torch.Tensor:
        """``[heads, N, head_dim]`` -> the attention's output projection ``[N, D]``."""
        return self.mha.out_proj(heads_out.transpose(0, 1).reshape(-1, self.dim))

    def dense(
        self,
        relation: str,
        query,
        key,
        query_scale: int,
        key_scale: int,
        chunk: int = 0,
        exact: bool = False,
        key_log_count: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``MHA(q, k, k)`` with all-to-all attention (released behaviour).

        With ``chunk > 0`` the queries are processed in blocks of ``chunk`` rows whose attention maps are
        recomputed in the backward pass (activation checkpointing): the same result with memory
        O(chunk x N_keys) instead of O(N_queries x N_keys). With ``exact`` the released op order (module
        docstring); it materialises the [heads, N_queries, N_keys] attention map. ``key_log_count`` [N_keys]:
        log multiplicity of each key row (module docstring).
        """
        if exact:
            return self._released_order(relation, query, key, query_scale, key_scale, chunk, key_log_count)
        qh, kh, vh = self._projected(relation, query, key, query_scale, key_scale)
        bias = None if key_log_count is None else key_log_count.to(qh.dtype).unsqueeze(0)

        def block(q_part, k_all, v_all):
            mask = None if bias is None else bias.expand(q_part.shape[1], -1)
            return self._output(F.scaled_dot_product_attention(q_part, k_all, v_all, attn_mask=mask))

        if chunk <= 0 or qh.shape[1] <= chunk:
            return block(qh, kh, vh)
        parts = [checkpoint(block, q_part, kh, vh, use_reentrant=False) for q_part in qh.split(chunk, dim=1)]
        return torch.cat(parts, dim=0)

    def _released_order(
        self, relation: str, query, key, query_scale: int, key_scale: int, chunk: int, key_log_count=None
    ):
        """The released computation: ``mha(Q_e(h_dst + s), K_e(h_src + s), same)``, op for op."""
        emb = self.scale_embeddings.weight
        q = self.q_projs[relation](query + emb[query_scale])
        k = self.k_projs[relation](key + emb[key_scale])

        def block(q_part, k_all):
            if key_log_count is None:
                return self.mha(q_part, k_all, k_all)[0]
            mask = key_log_count.to(q_part.dtype).unsqueeze(0).expand(q_part.shape[0], -1)
            return self.mha(q_part, k_all, k_all, attn_mask=mask)[0]

        if chunk <= 0 or q.shape[0] <= chunk:
            return block(q, k)
        return torch.cat([checkpoint(block, part, k, use_reentrant=False) for part in q.split(chunk)], dim=0)

    def sparse(
        self, relation: str, query, key, query_scale: int, key_scale: int, edge_index: torch.Tensor
    ) -> torch.Tensor:
        """Attention output restricted to ``edge_index`` ([2, E]: row 0 source/key, row 1 destination/query)."""
        from torch_geometric.utils import scatter, softmax  # PyG only where it is used (start-up time)

        qh, kh, vh = (
            t.transpose(0, 1) for t in self._projected(relation, query, key, query_scale, key_scale)
        )
        src, dst = edge_index[0], edge_index[1]
        scores = (qh[dst] * kh[src]).sum(-1) / math.sqrt(self.dim // self.num_heads)  # [E, heads]
        alpha = softmax(scores, dst, num_nodes=query.shape[0])
        agg = scatter(alpha.unsqueeze(-1) * vh[src], dst, dim=0, dim_size=query.shape[0], reduce="sum")
        out = self._output(agg.transpose(0, 1))
        has_edge = torch.zeros(query.shape[0], dtype=torch.bool, device=query.device)
        has_edge[dst] = True
        return out * has_edge.unsqueeze(-1).to(out.dtype)


def _two_linear(
    x: torch.Tensor, shift: torch.Tensor, first: nn.Linear, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``F.linear(first(x + shift), weight, bias)`` for rows ``x`` [N, d_in] and one ``shift`` [d_in], as
    one product with the folded weights when that is cheaper. Exact algebra: ``first(x + shift) =
    x W_1^T + (W_1 shift + b_1)``, so the shift is folded into the bias and never added to the rows.

    Sequential: ``n * d_in * d_mid + n * d_mid * d_out`` multiply-adds; folded: ``d_out * d_mid * d_in``
    to fold plus ``n * d_in * d_out``.
    """
    n, d_in = x.shape[0], x.shape[-1]
    d_mid, d_out = first.weight.shape[0], weight.shape[0]
    first_bias = F.linear(shift, first.weight, first.bias)  # W_1 shift + b_1
    if n * d_mid * (d_in + d_out) <= d_out * d_mid * d_in + n * d_in * d_out:
        return F.linear(F.linear(x, first.weight, first_bias), weight, bias)
    return F.linear(x, weight @ first.weight, F.linear(first_bias, weight, bias))
