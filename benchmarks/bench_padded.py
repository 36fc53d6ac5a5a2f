"""Padded children: one train step and one evaluated slide on real-shaped slides, with and without the
merge of the zero-padded 20x nodes, against the same slides with every 5x patch full.

The padded shape: ``--padded-share`` (30%) of the 5x patches hold 4-12 real 20x children (uniform), the
others all 16; the reference variant keeps the zero-padded slots as graph nodes (as released), so a
padded slide has as many 20x nodes as a full one. Per shape and merge setting the script reports the
FLOPs of one train step (slide; the constant text features are computed once before, ``torch.utils.flop_counter``) and of one evaluated slide
(text features cached, as an evaluation pass does), and the best of ``--repeats`` timings of each,
taken round robin over the four configurations.
Slides are synthetic (as in ``bench_fold.py``) and held in memory; features share a mean direction,
as real patch features do, so TGDF keeps a realistic share of image-text entries.

    python benchmarks/bench_padded.py --n5 500 --tower plip-size --threads 2
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fold import ROOT, TOWERS, register_cpu_attention_flops  # noqa: E402  (also puts ROOT on sys.path)


def child_counts(n5: int, share: float, seed: int):
    """[N5] real children per 5x patch: ``share`` of them 4-12, the others 16 (``share=0``: all full)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    counts = torch.full((n5,), 16)
    partial = torch.rand(n5, generator=g) < share
    counts[partial] = torch.randint(4, 13, (int(partial.sum()),), generator=g)
    return counts


def make_slide(n5: int, dim: int, counts, seed: int, label: int):
    import torch

    from datasets.bag import SlideBag

    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(dim, generator=g)
    mask = torch.arange(16)[None, :] < counts[:, None]
    x20 = (mean + torch.randn(n5, 16, dim, generator=g)) * mask.unsqueeze(-1)
    return SlideBag(f"s{seed}", mean + torch.randn(n5, dim, generator=g), x20, mask, label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n5", type=int, default=500)
    parser.add_argument(
        "--padded-share", type=float, default=0.3, help="share of 5x patches with 4-12 children"
    )
    parser.add_argument("--tower", choices=sorted(TOWERS), default="plip-size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print the top operators of each train step")
    parser.add_argument("--cache", default=str(ROOT / "cache"))
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from models.hivemil.model import HiveMIL
    from models.hivemil.options import HiveMILOptions, VariantSwitches
    from models.towers import load_towers
    from models.towers.tiny import save_tiny_hf_clip

    if args.threads:
        torch.set_num_threads(args.threads)
    register_cpu_attention_flops()
    tower_dir = Path(args.cache) / f"bench_tower_{args.tower}"
    if not (tower_dir / "config.json").is_file():
        save_tiny_hf_clip(tower_dir, seed=0, **TOWERS[args.tower])
    torch.manual_seed(0)
    tower = load_towers("plip", source=tower_dir, sides=("text",)).text
    descs = [
        [f"feature {i} of class {c} : a morphological description number {i}." for i in range(16)]
        for c in (0, 1)
    ]
    model = HiveMIL(tower, descs, HiveMILOptions(switches=VariantSwitches.for_variant("reference")))
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-4)
    label = torch.tensor([1])

    def train_step(bag):
        optimizer.zero_grad(set_to_none=True)
        out = model(bag)
        (F.cross_entropy(out.logits, label) + out.aux_loss).backward()
        optimizer.step()
        return out

    def evaluate(bag, cache):
        with torch.no_grad():
            return model(bag, cache)

    def timed(fn, *a) -> float:
        t0 = time.perf_counter()
        fn(*a)
        return time.perf_counter() - t0

    print(f"{'shape':>7} {'merge':>5} {'20x nodes':>9} {'computed':>8} {'GFLOP/step':>10} {'s/step':>7} "
          f"{'GFLOP/eval':>10} {'s/eval':>7}")  # fmt: skip
    configs = {}  # (shape, merge) -> [bag, cache, step FLOPs, eval FLOPs, nodes, computed, step s, eval s]
    model.train()
    model.encode_text()  # released text layout: the constant text features are computed once per run
    for shape, share in (("full", 0.0), ("padded", args.padded_share)):
        bag = make_slide(args.n5, tower.embed_dim, child_counts(args.n5, share, seed=1), seed=2, label=1)
        for merge in (False, True):
            model.merge_padding = merge
            with FlopCounterMode(display=False) as counter:
                out = train_step(bag)
            cache = model.precompute()
            with FlopCounterMode(display=False) as eval_counter:
                evaluate(bag, cache)
            padded = int(out.nodes_20x_padding.sum())
            computed = out.n_x20_nodes - (padded - 1 if merge and padded > 1 else 0)
            configs[shape, merge] = [bag, cache, counter.get_total_flops(), eval_counter.get_total_flops(),
                                     out.n_x20_nodes, computed, math.inf, math.inf]  # fmt: skip
    # Round robin, best of ``repeats`` per configuration: load from other processes hits all alike.
    for _ in range(args.repeats):
        for (_shape, merge), row in configs.items():
            model.merge_padding = merge
            row[6] = min(row[6], timed(train_step, row[0]))
            row[7] = min(row[7], timed(evaluate, row[0], row[1]))
    for (shape, merge), (_, _, step_flops, eval_flops, nodes, computed, step_s, eval_s) in configs.items():
        print(f"{shape:>7} {'on' if merge else 'off':>5} {nodes:>9} {computed:>8} {step_flops / 1e9:>10.2f} "
              f"{step_s:>7.3f} {eval_flops / 1e9:>10.2f} {eval_s:>7.3f}")  # fmt: skip
        if args.profile:
            model.merge_padding = merge
            with torch.profiler.profile() as prof:
                train_step(configs[shape, merge][0])
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    full, padded = configs["full", True][2:], configs["padded", True][2:]
    print(f"padded / full with the merge: FLOPs/step {padded[0] / full[0]:.3f}, s/step {padded[4] / full[4]:.3f}, "
          f"FLOPs/eval {padded[1] / full[1]:.3f}, s/eval {padded[5] / full[5]:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
