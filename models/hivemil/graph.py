"""Hierarchical heterogeneous graph of one slide (docs/method.md §4, paper Sec. 3.4).

Node types: ``x5image``, ``x5text``, ``x20image``, ``x20text``.
Intra-scale edges: every kept TGDF entry (image i, text j) gives ``image -> text`` and ``text -> image``
edges (``x5_intra`` / ``x20_intra``), held as ``edge_index`` and as the dense 0/1 ``adjacency``
[N_dst, N_src] (few text nodes: the aggregation is a small masked product). Hierarchical edges link
each 20x image to its 5x parent and each fine text to its coarse text, in both directions (``hier_x20tox5_*`` / ``hier_x5tox20_*``).

The graph is held in :class:`SlideGraph`, a small container with the layout of PyG's ``HeteroData``
(``graph[node_type].num_nodes``, ``graph[edge_type].edge_index``, ``graph.edge_types``) that does not import
PyG: importing ``torch_geometric`` costs 2-3 s of start-up (it loads ``torch._dynamo`` and its LLM
datasets), and the default path of the model needs none of it. :meth:`SlideGraph.to_hetero_data` gives the
PyG object for code that wants one.

The released code maps the r-th 20x node to 5x node ``r // 16``. After TGDF keeps only some 5x
patches, the 20x nodes are the children of *kept* patches only, so that stride mapping points to the
wrong parents (e.g. the children of kept patch 7 land on patch 0 when it is the first kept one).
``true_parents=False`` reproduces it; ``True`` uses each child's real parent index. (The released
model never reads these edges -- its attention is dense -- but the sparse attention does.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

X5_IMAGE, X5_TEXT, X20_IMAGE, X20_TEXT = "x5image", "x5text", "x20image", "x20text"

INTRA_EDGE_TYPES = (
    (X5_IMAGE, "x5_intra", X5_TEXT),
    (X20_IMAGE, "x20_intra", X20_TEXT),
    (X5_TEXT, "x5_intra", X5_IMAGE),
    (X20_TEXT, "x20_intra", X20_IMAGE),
)
HIER_EDGE_TYPES = (
    (X20_IMAGE, "hier_x20tox5_image", X5_IMAGE),
    (X5_IMAGE, "hier_x5tox20_image", X20_IMAGE),
    (X20_TEXT, "hier_x20tox5_text", X5_TEXT),
    (X5_TEXT, "hier_x5tox20_text", X20_TEXT),
)
# Which magnification a node type lives at (index into the scale embeddings: 0 = 5x, 1 = 20x).
NODE_SCALE = {X5_IMAGE: 0, X5_TEXT: 0, X20_IMAGE: 1, X20_TEXT: 1}


@dataclass
class NodeStore:
    num_nodes: int


@dataclass
class EdgeStore:
    edge_index: torch.Tensor  # [2, E]: row 0 source, row 1 destination
    adjacency: torch.Tensor | None = None  # [N_dst, N_src] 0/1 (intra-scale edge types only)


class SlideGraph:
    """Node counts per node type and edge stores per edge type, indexed like PyG's ``HeteroData``."""

    def __init__(self):
        self._nodes: dict[str, NodeStore] = {}
        self._edges: dict[tuple[str, str, str], EdgeStore] = {}

    @property
    def node_types(self) -> list[str]:
        return list(self._nodes)

    @property
    def edge_types(self) -> list[tuple[str, str, str]]:
        return list(self._edges)

    def __getitem__(self, key: str | tuple[str, str, str]) -> NodeStore | EdgeStore:
        return self._nodes[key] if isinstance(key, str) else self._edges[key]

    def add_nodes(self, node_type: str, num_nodes: int) -> None:
        self._nodes[node_type] = NodeStore(int(num_nodes))

    def add_edges(self, edge_type: tuple[str, str, str], edge_index: torch.Tensor, adjacency=None) -> None:
        self._edges[edge_type] = EdgeStore(edge_index, adjacency)

    def to_hetero_data(self):
        """The same graph as a ``torch_geometric.data.HeteroData`` (imports PyG)."""
        from torch_geometric.data import HeteroData

        data = HeteroData()
        for node_type, store in self._nodes.items():
            data[node_type].num_nodes = store.num_nodes
        for edge_type, store in self._edges.items():
            data[edge_type].edge_index = store.edge_index
            if store.adjacency is not None:
                data[edge_type].adjacency = store.adjacency
        return data


def kept_entry_edges(kept: torch.Tensor) -> torch.Tensor:
    """[2, E] (row, col) indices of the non-zero entries of ``kept``, row-major (as ``to_sparse``)."""
    return kept.nonzero().t().contiguous()


def stride_parents(
    num_children: int, stride: int, num_parents: int, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Released mapping: child ``r`` -> parent ``r // stride``, dropping children past the last parent."""
    child = torch.arange(num_children, device=device)
    parent = torch.div(child, stride, rounding_mode="floor")
    valid = parent < num_parents
    return child[valid], parent[valid]


def build_hier_graph(
    x5_kept: torch.Tensor,
    x20_kept: torch.Tensor,
    x20_parent: torch.Tensor,
    texts_per_coarse: int,
    children_per_parent: int,
    true_parents: bool,
) -> SlideGraph:
    """Build the slide graph from the two TGDF stages.

    Args:
        x5_kept: [N5, C*T5] kept 5x similarities (stage 1).
        x20_kept: [N20, C*T20] kept 20x similarities (stage 2).
        x20_parent: [N20] index of each 20x node's 5x parent (a row of ``x5_kept``).
        texts_per_coarse: fine texts per coarse text (3).
        children_per_parent: the released stride (16).
        true_parents: use ``x20_parent`` (True) or the released stride mapping (False).
    """
    device = x5_kept.device
    n5, n5_text = x5_kept.shape
    n20, n20_text = x20_kept.shape
    data = SlideGraph()
    for node_type, n in ((X5_IMAGE, n5), (X5_TEXT, n5_text), (X20_IMAGE, n20), (X20_TEXT, n20_text)):
        data.add_nodes(node_type, n)

    for edge_type, kept in zip(INTRA_EDGE_TYPES, (x5_kept, x20_kept, x5_kept.t(), x20_kept.t())):
        # the same edges also as a dense 0/1 matrix [N_dst, N_src] (GraphSAGE-mean as a masked product)
        data.add_edges(edge_type, kept_entry_edges(kept), (kept.detach() != 0).t().to(kept.dtype))

    if true_parents:
        img_child, img_parent = torch.arange(n20, device=device), x20_parent.to(device)
    else:
        img_child, img_parent = stride_parents(n20, children_per_parent, n5, device)
    if img_child.numel() > 0:
        data.add_edges(HIER_EDGE_TYPES[0], torch.stack([img_child, img_parent]))
        data.add_edges(HIER_EDGE_TYPES[1], torch.stack([img_parent, img_child]))

    txt_child, txt_parent = stride_parents(n20_text, texts_per_coarse, n5_text, device)
    if txt_child.numel() > 0:
        data.add_edges(HIER_EDGE_TYPES[2], torch.stack([txt_child, txt_parent]))
        data.add_edges(HIER_EDGE_TYPES[3], torch.stack([txt_parent, txt_child]))
    return data
