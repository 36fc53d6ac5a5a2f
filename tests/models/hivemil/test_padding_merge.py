"""Merging the zero-padded 20x nodes (reference variant) is exact: same logits, gradients and per-node
outputs as the graph with every padded node, for several padding patterns, and fewer FLOPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from datasets.bag import SlideBag
from models.hivemil.graph import X20_IMAGE
from models.hivemil.model import HiveMIL
from models.hivemil.options import HiveMILOptions, VariantSwitches
from models.hivemil.slide_logits import topk_text_scores
from models.hivemil.tgdf import text_guided_filter

DESCRIPTIONS = [
    [f"term {c}{i} : explanation of feature {i} for class {c} ." for i in range(16)] for c in range(2)
]
N5 = 24


def _bag(children: list[int], seed: int = 0) -> SlideBag:
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(16)[None, :] < torch.tensor(children)[:, None]
    x5 = torch.randn(len(children), 64, generator=g) + 0.3
    x20 = (torch.randn(len(children), 16, 64, generator=g) + 0.3) * mask.unsqueeze(-1)
    return SlideBag("s", x5, x20, mask, 1)


def _spread(seed: int, zero_rows: int = 0) -> list[int]:
    """30% of the 5x patches with 4-12 children, the rest full; the first ``zero_rows`` without any."""
    g = torch.Generator().manual_seed(seed)
    counts = [
        int(torch.randint(4, 13, (1,), generator=g)) if torch.rand(1, generator=g) < 0.3 else 16
        for _ in range(N5)
    ]
    return [0] * zero_rows + counts[zero_rows:]


PATTERNS = {
    "none": [16] * N5,
    "one_padded_slot": [15] + [16] * (N5 - 1),
    "one_padded_row": [16] * 5 + [6] + [16] * (N5 - 6),
    "many": _spread(1),
    "parents_all_padded": _spread(2, zero_rows=4),
    "mostly_padding": [1] * N5,
}


def _model(tower, **kw) -> HiveMIL:
    torch.manual_seed(0)
    return HiveMIL(
        tower, DESCRIPTIONS, HiveMILOptions(switches=VariantSwitches.for_variant("reference"), **kw)
    )


def _run(model: HiveMIL, bag: SlideBag, merge: bool):
    model.merge_padding = merge
    model.zero_grad(set_to_none=True)
    out = model(bag)
    (F.cross_entropy(out.logits, torch.tensor([1])) + out.aux_loss).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("topk_high", [100, 7])
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_merge_gives_the_same_logits_and_gradients(tiny_text_tower, pattern, topk_high):
    model, bag = _model(tiny_text_tower, topk_high=topk_high), _bag(PATTERNS[pattern])
    merged, g_merged = _run(model, bag, True)
    plain, g_plain = _run(model, bag, False)
    torch.testing.assert_close(merged.logits, plain.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(merged.aux_loss, plain.aux_loss, atol=1e-6, rtol=0)
    assert g_merged.keys() == g_plain.keys() and g_plain
    for name in g_plain:
        torch.testing.assert_close(g_merged[name], g_plain[name], atol=1e-6, rtol=0, msg=name)
    torch.testing.assert_close(merged.embeddings[X20_IMAGE], plain.embeddings[X20_IMAGE], atol=1e-6, rtol=0)
    torch.testing.assert_close(merged.x20_kept, plain.x20_kept, atol=1e-6, rtol=0)
    assert torch.equal(merged.nodes_20x_padding, plain.nodes_20x_padding)


def _flops(model: HiveMIL, bag: SlideBag, cache) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(bag, cache)
    return counter.get_total_flops()


@pytest.mark.parametrize("pattern", ["many", "parents_all_padded", "mostly_padding"])
def test_merge_saves_flops_and_a_padded_slide_costs_no_more_than_a_full_one(tiny_text_tower, pattern):
    model, bag = _model(tiny_text_tower), _bag(PATTERNS[pattern])
    cache = model.precompute()
    model.merge_padding = False
    plain = _flops(model, bag, cache)
    model.merge_padding = True
    merged = _flops(model, bag, cache)
    assert merged < plain
    assert merged < _flops(model, _bag(PATTERNS["none"]), cache)  # same 5x features, every patch full


def test_no_merge_without_padding_or_with_exact_order(tiny_text_tower):
    rows = torch.arange(N5)
    padded, full = _bag(PATTERNS["many"]), _bag(PATTERNS["none"])
    exact = _model(tiny_text_tower, exact_order=True)  # --exact-order promises the released bits
    assert exact._padding_merge(exact._select_children(padded, rows)) is None
    model = _model(tiny_text_tower)
    merge = model._padding_merge(model._select_children(padded, rows))
    n_pad = int((~padded.child_mask).sum())
    assert merge is not None and merge.counts[-1] == n_pad and merge.nodes.shape[0] == 16 * N5 - n_pad + 1
    assert model._padding_merge(model._select_children(full, rows)) is None
    padded.x20[~padded.child_mask] = 1.0  # padded slots that are not zero are not merged
    assert model._padding_merge(model._select_children(padded, rows)) is None


def test_topk_counts_a_merged_row_as_often_as_it_occurs():
    g = torch.Generator().manual_seed(3)
    rows, text, scale = torch.randn(6, 8, generator=g), torch.randn(5, 8, generator=g), torch.tensor(2.0)
    counts = torch.tensor([1, 4, 1, 3, 1, 2])
    repeated = rows.repeat_interleave(counts, dim=0)
    for k in (1, 3, 5, 8, 12, 100):
        torch.testing.assert_close(
            topk_text_scores(rows, text, k, scale, counts.float(), int(counts.sum())),
            topk_text_scores(repeated, text, k, scale),
        )


def test_tgdf_statistics_over_images_not_rows():
    g = torch.Generator().manual_seed(4)
    rows, text = torch.randn(7, 8, generator=g), torch.randn(5, 8, generator=g)
    counts = torch.tensor([1, 1, 5, 1, 2, 1, 9])
    plain = text_guided_filter(rows.repeat_interleave(counts, dim=0), text, torch.tensor(1.5), 0.5)
    merged = text_guided_filter(rows, text, torch.tensor(1.5), 0.5, counts.float())
    torch.testing.assert_close(merged.threshold, plain.threshold)
    torch.testing.assert_close(merged.kept.repeat_interleave(counts, dim=0), plain.kept)
    one = text_guided_filter(rows[:1], text, torch.tensor(1.5), 0.5, torch.ones(1))
    assert torch.isnan(one.threshold).all() and not one.image_mask.any()  # one image: std NaN, as torch.std
