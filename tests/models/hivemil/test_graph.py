"""Hierarchical graph (docs/method.md section 4): edges and parent mapping by hand."""

from __future__ import annotations

import torch

from models.hivemil.graph import HIER_EDGE_TYPES, INTRA_EDGE_TYPES, build_hier_graph, stride_parents


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


def test_intra_adjacency_holds_the_same_edges_as_edge_index():
    torch.manual_seed(0)
    x5_kept = torch.rand(5, 4) * (torch.rand(5, 4) > 0.5)
    x20_kept = torch.rand(9, 12) * (torch.rand(9, 12) > 0.7)
    g = build_hier_graph(x5_kept, x20_kept, torch.arange(9) // 2, 3, children_per_parent=2, true_parents=True)
    for et in INTRA_EDGE_TYPES:
        src, dst = g[et].edge_index
        dense = torch.zeros(g[et[2]].num_nodes, g[et[0]].num_nodes)
        dense[dst, src] = 1.0
        assert torch.equal(g[et].adjacency, dense), et
