"""Two-layer hierarchical GNN (docs/method.md section 5): shapes, residual, parameter names."""

from __future__ import annotations

import pytest
import torch

from models.hivemil.gnn import HierHeteroGNN
from models.hivemil.graph import build_hier_graph


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


@pytest.mark.parametrize(("n_src", "n_dst"), [(3, 40), (40, 3)])
def test_sage_mean_equals_pyg_sageconv_in_both_orders(n_src, n_dst):
    """The masked dense product, projecting before or after the mean, gives PyG's SAGEConv on the same
    edges (values and grads); repeated edges count as often as they occur; isolated nodes too."""
    from torch_geometric.nn import SAGEConv

    from models.hivemil.gnn import sage_mean

    torch.manual_seed(0)
    conv = SAGEConv(8, 8, aggr="mean")
    x_src, x_dst = torch.randn(n_src, 8), torch.randn(n_dst, 8)
    src = torch.randint(0, n_src, (30,))
    dst = torch.randint(0, n_dst - 1, (30,))  # the last destination has no neighbour
    edge_index = torch.stack([src, dst])
    assert len(set(zip(src.tolist(), dst.tolist()))) < 30  # some edges repeat: multiplicities matter
    adjacency = torch.zeros(n_dst, n_src).index_put_((dst, src), torch.ones(30), accumulate=True)
    ours = sage_mean(conv, x_src, x_dst, adjacency)
    ours.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in conv.named_parameters()}
    conv.zero_grad()
    reference = conv((x_src, x_dst), edge_index)
    reference.square().sum().backward()
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.allclose(ours[-1], conv.lin_l.bias + conv.lin_r(x_dst[-1]), atol=1e-6)
    for name, p in conv.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-4), name


def test_sage_mean_source_counts_equal_repeated_sources():
    """A source with multiplicity m gives the mean of the graph holding m copies of it."""
    from torch_geometric.nn import SAGEConv

    from models.hivemil.gnn import sage_mean

    torch.manual_seed(1)
    conv = SAGEConv(8, 8, aggr="mean")
    x_src, x_dst = torch.randn(4, 8), torch.randn(6, 8)
    adjacency = (torch.rand(6, 4) > 0.4).float()
    counts = torch.tensor([1, 3, 2, 1])
    copies = torch.repeat_interleave(torch.arange(4), counts)  # source columns repeated
    merged = sage_mean(conv, x_src, x_dst, adjacency, counts)
    expanded = sage_mean(conv, x_src[copies], x_dst, adjacency[:, copies])
    assert torch.allclose(merged, expanded, atol=1e-6)
    assert not torch.allclose(merged, sage_mean(conv, x_src, x_dst, adjacency), atol=1e-3)


def test_sage_weights_draw_pyg_sageconv_parameters_and_sage_exact_is_its_forward_to_the_bit():
    """Same seed, same weights and names as PyG's SAGEConv; sage_exact gives its output bit for bit."""
    from torch_geometric.nn import SAGEConv

    from models.hivemil.gnn import SageWeights, sage_exact

    torch.manual_seed(4)
    ours = SageWeights(8, 6)
    torch.manual_seed(4)
    theirs = SAGEConv(8, 6, aggr="mean")
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for name, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
    x_src, x_dst = torch.randn(5, 8), torch.randn(7, 8)
    edge_index = torch.stack([torch.randint(0, 5, (20,)), torch.randint(0, 6, (20,))])
    assert torch.equal(sage_exact(ours, x_src, x_dst, edge_index), theirs((x_src, x_dst), edge_index))


def test_slide_graph_converts_to_the_same_pyg_heterodata():
    from models.hivemil.graph import INTRA_EDGE_TYPES, build_hier_graph

    torch.manual_seed(2)
    g = build_hier_graph(torch.rand(4, 2), torch.rand(8, 6), torch.arange(8) // 2, 3, 2, true_parents=True)
    data = g.to_hetero_data()
    assert sorted(data.edge_types) == sorted(g.edge_types)
    for et in g.edge_types:
        assert torch.equal(data[et].edge_index, g[et].edge_index), et
    for et in INTRA_EDGE_TYPES:
        assert torch.equal(data[et].adjacency, g[et].adjacency)
    assert {t: data[t].num_nodes for t in data.node_types} == {t: g[t].num_nodes for t in g.node_types}


def test_building_and_running_hivemil_does_not_import_pyg(tiny_clip_dir):
    """PyG costs seconds of start-up; the default path does not need it (and seeding does not load
    torch._inductor, which the Hugging Face tower's import may load anyway)."""
    import subprocess
    import sys
    import textwrap

    from tests.paths import PROJECT

    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(PROJECT)!r})
        import torch
        from utils.seed import seed_everything
        from models.towers import load_towers
        from models.hivemil.model import HiveMIL
        from models.hivemil.options import HiveMILOptions
        from tests.models.hivemil.test_model import DESCRIPTIONS, make_bag
        seed_everything(0)
        assert torch.are_deterministic_algorithms_enabled() and "torch._inductor" not in sys.modules
        tower = load_towers("plip", source={str(tiny_clip_dir)!r}, sides=("text",)).text
        out = HiveMIL(tower, DESCRIPTIONS, HiveMILOptions())(make_bag())
        out.logits.sum().backward()
        print(sorted(m for m in ("torch_geometric",) if m in sys.modules))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
