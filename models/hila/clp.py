"""Cross-Level Propagation (CLP): regions and patches exchange information along the true parent-child
edges of the hierarchy (docs/survival.md §8.3).

    region_i' = region_i + Att_up(region_i  <- {patch_j : parent(j) = i})     children -> parent
    patch_j'  = patch_j  + Att_down(patch_j <- region_parent(j))              parent -> child

Each direction is single-head scaled dot-product attention restricted to the edges: scores only on the
edges, a softmax over each destination's incoming edges (``torch_geometric.utils.softmax``) and a sum of
the weighted values (``scatter``), so time and memory are linear in the number of nodes (one edge per
20x patch). A patch has one parent, so its softmax weight is 1 and it receives its parent's value. Both
directions read the inputs of the layer (a simultaneous exchange). The output projections start at
zero, so at initialisation CLP is the identity and features stay in the tower's joint space for OPL.
A destination without incoming edges (a 5x patch without children) gets no message.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch_geometric.utils import scatter, softmax


class EdgeAttention(nn.Module):
    """Attention of destination nodes over the source nodes of their incoming edges."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, dst: torch.Tensor, src: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Messages [N_dst, D] for ``dst`` [N_dst, D] from ``src`` [N_src, D] along ``edge_index``
        ([2, E]: row 0 source index, row 1 destination index)."""
        s, d = edge_index[0], edge_index[1]
        n_dst = dst.shape[0]
        scores = (self.query(dst)[d] * self.key(src)[s]).sum(-1) / math.sqrt(self.dim)
        alpha = softmax(scores, d, num_nodes=n_dst)
        message = scatter(alpha.unsqueeze(-1) * self.value(src)[s], d, dim=0, dim_size=n_dst, reduce="sum")
        has_edge = torch.zeros(n_dst, dtype=torch.bool, device=dst.device)
        has_edge[d] = True
        return self.out(message) * has_edge.unsqueeze(-1).to(message.dtype)


class CrossLevelPropagation(nn.Module):
    """One exchange between the region (5x) and patch (20x) levels."""

    def __init__(self, dim: int):
        super().__init__()
        self.up = EdgeAttention(dim)  # children -> parent region
        self.down = EdgeAttention(dim)  # parent region -> child

    def forward(
        self, regions: torch.Tensor, patches: torch.Tensor, parent: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(regions' [N5, D], patches' [N20, D]); ``parent`` [N20] is each patch's region row."""
        child = torch.arange(patches.shape[0], device=patches.device)
        up = self.up(regions, patches, torch.stack([child, parent]))
        down = self.down(patches, regions, torch.stack([parent, child]))
        return regions + up, patches + down
