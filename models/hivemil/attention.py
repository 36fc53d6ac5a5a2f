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
Both use the same parameters (``nn.MultiheadAttention``'s in/out projections), so checkpoints are shared.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch_geometric.utils import scatter, softmax

HIER_RELATIONS = ("hier_x20tox5_image", "hier_x5tox20_image", "hier_x20tox5_text", "hier_x5tox20_text")


class ModalityScaleAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int = 2, relations=HIER_RELATIONS):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        # Creation and initialisation follow the released order exactly, so one seed gives the released
        # initial weights: scale embedding, attention, the embedding's init, then the q/k projections.
        self.scale_embeddings = nn.Embedding(2, dim)
        self.mha = nn.MultiheadAttention(dim, num_heads)
        nn.init.xavier_normal_(self.scale_embeddings.weight)
        self.q_projs = nn.ModuleDict({r: nn.Linear(dim, dim) for r in relations})
        self.k_projs = nn.ModuleDict({r: nn.Linear(dim, dim) for r in relations})
        for proj in [*self.q_projs.values(), *self.k_projs.values()]:
            nn.init.xavier_normal_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _project(self, relation: str, query, key, query_scale: int, key_scale: int):
        emb = self.scale_embeddings.weight
        q = self.q_projs[relation](query + emb[query_scale])
        k = self.k_projs[relation](key + emb[key_scale])
        return q, k

    def dense(
        self, relation: str, query, key, query_scale: int, key_scale: int, chunk: int = 0
    ) -> torch.Tensor:
        """``MHA(q, k, k)`` with all-to-all attention (released behaviour).

        With ``chunk > 0`` the queries are processed in blocks of ``chunk`` rows whose attention maps are
        recomputed in the backward pass (activation checkpointing): the same result with memory
        O(chunk x N_keys) instead of O(N_queries x N_keys).
        """
        q, k = self._project(relation, query, key, query_scale, key_scale)
        if chunk <= 0 or q.shape[0] <= chunk:
            return self.mha(q, k, k, need_weights=False)[0]

        def block(q_part, k_all):
            return self.mha(q_part, k_all, k_all, need_weights=False)[0]

        parts = [checkpoint(block, q_part, k, use_reentrant=False) for q_part in q.split(chunk)]
        return torch.cat(parts, dim=0)

    def sparse(
        self, relation: str, query, key, query_scale: int, key_scale: int, edge_index: torch.Tensor
    ) -> torch.Tensor:
        """Attention output restricted to ``edge_index`` ([2, E]: row 0 source/key, row 1 destination/query)."""
        q, k = self._project(relation, query, key, query_scale, key_scale)
        w_q, w_k, w_v = self.mha.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.mha.in_proj_bias.chunk(3)
        heads, head_dim = self.num_heads, self.dim // self.num_heads
        qh = F.linear(q, w_q, b_q).view(-1, heads, head_dim)
        kh = F.linear(k, w_k, b_k).view(-1, heads, head_dim)
        vh = F.linear(k, w_v, b_v).view(-1, heads, head_dim)
        src, dst = edge_index[0], edge_index[1]
        scores = (qh[dst] * kh[src]).sum(-1) / math.sqrt(head_dim)  # [E, heads]
        alpha = softmax(scores, dst, num_nodes=query.shape[0])
        agg = scatter(alpha.unsqueeze(-1) * vh[src], dst, dim=0, dim_size=query.shape[0], reduce="sum")
        out = self.mha.out_proj(agg.reshape(-1, self.dim))
        has_edge = torch.zeros(query.shape[0], dtype=torch.bool, device=query.device)
        has_edge[dst] = True
        return out * has_edge.unsqueeze(-1).to(out.dtype)
