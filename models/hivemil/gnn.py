"""Two-layer hierarchical heterogeneous GNN (docs/method.md §5, paper Sec. 3.4).

One layer updates every node type as

    h'_t = h_t + sum_{intra edge types e -> t} SAGE_e(h)  +  sum_{hier edge types e -> t} A_e(h)

where SAGE_e is GraphSAGE with mean aggregation (``lin_l(mean_neighbours) + lin_r(h_dst)``,
:func:`sage_mean`: the parameters of PyG's ``SAGEConv``, computed as a masked dense product in the cheaper
exact order) and A_e
the modality-scale attention (:mod:`models.hivemil.attention`). The released attention term is
``h_dst + MHA(...)``, so the residual is counted twice (``attn_residual="double"``); ``"single"`` adds
only the attention output. The network is layer 1 -> ReLU -> layer 2 -> L2 normalisation.
With ``exact_order`` the intra-scale terms are PyG's ``SAGEConv`` computation (:func:`sage_exact`) and
the attention follows the released op order (:mod:`models.hivemil.attention`): bit-identical to the
released forward, at the cost of the two shortcuts (one ``N x D x D`` product each).

Merged nodes (``counts``: node type -> [N] multiplicities): a node that stands for m identical nodes
counts m times where it is a *source* -- in the SAGE mean (weight m) and as an attention key (log m
added to its scores); as a destination it needs nothing. Exact algebra: the same outputs as the graph
with the m copies, at the cost of one node.

Parameter names follow the released checkpoints (``layer1.convs.convs.<src___rel___dst>``,
``layer1.attn.mha``, ``layer1.attn.q_projs`` ...), including the four unused ``self`` convolutions. The
GraphSAGE weights are held by :class:`SageWeights` (PyG's ``SAGEConv`` parameters, names and random draws)
and the convolutions by :class:`SageConvs` (``HeteroConv``'s layout), so building and running the model
does not import PyG (2-3 s of start-up); ``--exact-order`` computes the mean with PyG's own ``scatter``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.hivemil.attention import ModalityScaleAttention
from models.hivemil.graph import HIER_EDGE_TYPES, INTRA_EDGE_TYPES, NODE_SCALE, SlideGraph

# Released order of the convolutions (the 'self' ones are never fed edges but exist in checkpoints).
_CONV_EDGE_TYPES = (
    ("x5text", "self", "x5text"),
    ("x20text", "self", "x20text"),
    ("x5image", "self", "x5image"),
    ("x20image", "self", "x20image"),
    ("x20image", "x20_intra", "x20text"),
    ("x20text", "x20_intra", "x20image"),
    ("x5image", "x5_intra", "x5text"),
    ("x5text", "x5_intra", "x5image"),
)


class SageWeights(nn.Module):
    """The parameters of PyG's ``SAGEConv(d_in, d_out, aggr="mean")``: ``lin_l`` (with bias) applied to the
    neighbour mean and ``lin_r`` (no bias) to the destination node, under the same names and drawn in the
    same order (each linear layer is initialised when it is built and both once more by ``SAGEConv``'s
    reset; PyG's and PyTorch's linear initialisations draw the same uniform bounds), so one seed gives the
    released weights."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.lin_l = nn.Linear(in_dim, out_dim)
        self.lin_r = nn.Linear(in_dim, out_dim, bias=False)
        self.lin_l.reset_parameters()
        self.lin_r.reset_parameters()


class SageConvs(nn.Module):
    """PyG ``HeteroConv``'s layout: ``convs`` maps ``"<src___rel___dst>"`` to each edge type's weights."""

    def __init__(self, edge_types, in_dim: int, out_dim: int):
        super().__init__()
        self.convs = nn.ModuleDict({edge_key(et): SageWeights(in_dim, out_dim) for et in edge_types})

    def __getitem__(self, edge_type: tuple[str, str, str]) -> SageWeights:
        return self.convs[edge_key(edge_type)]


def edge_key(edge_type: tuple[str, str, str]) -> str:
    """PyG's ModuleDict key of an edge type (the released checkpoints' names)."""
    return "<" + "___".join(edge_type) + ">"


def sage_exact(
    conv: SageWeights, x_src: torch.Tensor, x_dst: torch.Tensor, edge_index: torch.Tensor
) -> torch.Tensor:
    """PyG ``SAGEConv``'s own computation, op for op: gather each edge's source row, PyG's mean ``scatter``
    per destination, then ``lin_l`` and ``+ lin_r(x_dst)`` (``--exact-order``: the released bits)."""
    from torch_geometric.utils import scatter

    messages = x_src.index_select(0, edge_index[0])
    mean = scatter(messages, edge_index[1], dim=0, dim_size=x_dst.shape[0], reduce="mean")
    return F.linear(mean, conv.lin_l.weight, conv.lin_l.bias) + F.linear(x_dst, conv.lin_r.weight)


def sage_mean(
    conv: SageWeights,
    x_src: torch.Tensor,
    x_dst: torch.Tensor,
    adjacency: torch.Tensor,
    src_count: torch.Tensor | None = None,
) -> torch.Tensor:
    """GraphSAGE with mean aggregation, ``lin_l(mean_{j -> i} x_j) + lin_r(x_i)``, as PyG's ``SAGEConv``
    computes it.

    ``adjacency`` [N_dst, N_src] holds the weight of each edge ``j -> i`` (1 for an edge, 0 for none;
    an integer multiplicity counts a source that many times). The mean is the masked dense product
    ``(A @ x_src) / rowsum(A)``: the image-text edge types have only a handful of text nodes on one side,
    so this is one small GEMM instead of a gather of every edge's features and a scatter back (the
    same sums, in another order: equal to fp32 rounding).

    ``lin_l`` is linear, so ``mean_j(W x_j) + b = W mean_j(x_j) + b``: when there are fewer source nodes
    than destinations (e.g. 96 texts sending to 2,000 image nodes) the sources are projected *before*
    aggregating, which needs far fewer multiplications. A node without neighbours gets ``b + lin_r(x_i)``
    either way. ``src_count`` [N_src]: multiplicity of each source node (the mean weighs it that often:
    its column of ``adjacency`` is multiplied by it).
    """
    weight = adjacency.float()  # float32 even under autocast: edge counts and degrees stay exact
    if src_count is not None:
        weight = weight * src_count.float().unsqueeze(0)
    inv_degree = (1.0 / weight.sum(dim=1, keepdim=True).clamp(min=1.0)).to(x_src.dtype)
    weight = weight.to(x_src.dtype)
    if x_src.shape[0] < x_dst.shape[0]:
        projected = F.linear(x_src, conv.lin_l.weight)
        aggregated = (weight @ projected) * inv_degree + conv.lin_l.bias
    else:
        aggregated = conv.lin_l((weight @ x_src) * inv_degree)
    return aggregated + conv.lin_r(x_dst)


class HierGraphLayer(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_heads: int = 2,
        dense_attention: bool = True,
        double_residual: bool = True,
        attention_chunk: int = 0,
        exact_order: bool = False,
        xavier_attention: bool = True,
    ):
        super().__init__()
        if in_dim != out_dim:
            raise ValueError("the residual update needs in_dim == out_dim")
        self.convs = SageConvs(_CONV_EDGE_TYPES, in_dim, out_dim)
        self.attn = ModalityScaleAttention(in_dim, num_heads, xavier_init=xavier_attention)
        self.dense_attention = dense_attention
        self.double_residual = double_residual
        self.attention_chunk = attention_chunk
        self.exact_order = exact_order

    def _intra(self, et, h: dict[str, torch.Tensor], edges, counts: dict) -> torch.Tensor:
        """The SAGE term of intra-scale edge type ``et`` (``edges``: its store in the graph)."""
        conv = self.convs[et]
        if et[0] in counts:
            return sage_mean(conv, h[et[0]], h[et[2]], edges.adjacency, counts[et[0]])
        if self.exact_order:
            return sage_exact(conv, h[et[0]], h[et[2]], edges.edge_index)
        return sage_mean(conv, h[et[0]], h[et[2]], edges.adjacency)

    def forward(
        self, graph: SlideGraph, h: dict[str, torch.Tensor], counts: dict | None = None
    ) -> dict[str, torch.Tensor]:
        counts = counts or {}
        log_counts = {t: c.to(h[t].dtype).log() for t, c in counts.items()}
        new_h = {t: x.clone() for t, x in h.items()}
        conv_out = {
            et[2]: self._intra(et, h, graph[et], counts) for et in INTRA_EDGE_TYPES if et in graph.edge_types
        }
        for et in HIER_EDGE_TYPES:
            if et not in graph.edge_types:
                continue
            src, rel, dst = et
            if self.dense_attention:
                out = self.attn.dense(
                    rel, h[dst], h[src], NODE_SCALE[dst], NODE_SCALE[src], self.attention_chunk,
                    exact=self.exact_order, key_log_count=log_counts.get(src),
                )  # fmt: skip
            else:
                if src in counts:
                    raise ValueError("merged nodes need dense attention (sparse edges differ per copy)")
                out = self.attn.sparse(
                    rel, h[dst], h[src], NODE_SCALE[dst], NODE_SCALE[src], graph[et].edge_index
                )
            # Released: new_h += (h_dst + out), so h_dst is counted twice in the update.
            new_h[dst] = new_h[dst] + (h[dst] + out if self.double_residual else out)
        for t, x in conv_out.items():
            new_h[t] = new_h[t] + x
        return new_h


class HierHeteroGNN(nn.Module):
    """layer1 -> ReLU -> layer2 -> L2 normalise, for all four node types."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 2,
        dense_attention: bool = True,
        double_residual: bool = True,
        attention_chunk: int = 0,
        exact_order: bool = False,
        xavier_attention: bool = True,
    ):
        super().__init__()
        args = (num_heads, dense_attention, double_residual, attention_chunk, exact_order, xavier_attention)
        self.layer1 = HierGraphLayer(dim, dim, *args)
        self.layer2 = HierGraphLayer(dim, dim, *args)

    def forward(
        self, graph: SlideGraph, features: dict[str, torch.Tensor], counts: dict | None = None
    ) -> dict[str, torch.Tensor]:
        """GNN outputs per node type; ``counts``: multiplicities of merged nodes (module docstring)."""
        h = self.layer1(graph, features, counts)
        h = {t: F.relu(x) for t, x in h.items()}
        h = self.layer2(graph, h, counts)
        return {t: F.normalize(x, p=2, dim=-1) for t, x in h.items()}
