"""One fold of HiVE-MIL training, timed and FLOP-counted against this machine's measured GEMM peak.

A fold epoch is ``train`` optimiser steps (one slide each) plus validation of ``val`` slides (text
features once per pass, as training does). Slides are synthetic bags with ``--n5`` 5x patches and
``--children`` 20x children each, held in memory (no disk I/O in the timing). The script reports:

* seconds per train step and per evaluated slide, and the fold time ``epochs x (train + val)``;
* FLOPs of one train step and one evaluation (``torch.utils.flop_counter``; the CPU flash-attention
  kernels are registered with the standard attention formula, which the counter lacks);
* the machine's fp32 (or bf16) GEMM peak, measured in the same run with large square matmuls, and the
  fraction of it the train step achieves.

    python benchmarks/bench_fold.py --n5 500 --train 32 --val 96 --tower plip-size
    python benchmarks/bench_fold.py --n5 4000 --train 2 --val 2 --steps-only --amp bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOWERS = {
    "tiny": dict(width=64, projection=64, layers=2, heads=4),
    "plip-size": dict(width=512, projection=512, layers=12, heads=8),
}


def register_cpu_attention_flops() -> None:
    """Count ``_scaled_dot_product_flash_attention_for_cpu`` (and its backward) like the CUDA kernels."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in fc.flop_registry:
        return

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
    def _forward(query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query.shape, key.shape, value.shape)

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
    def _backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def gemm_peak_gflops(dtype, seconds: float = 1.5, size: int = 2048) -> float:
    """Best GFLOP/s of ``size`` x ``size`` matmuls in ``dtype`` over about ``seconds``."""
    import torch

    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return best


def build(args):
    import torch

    from datasets.bag import SlideBag
    from models.hivemil.model import HiveMIL
    from models.hivemil.options import HiveMILOptions, VariantSwitches
    from models.towers import load_towers
    from models.towers.tiny import save_tiny_hf_clip

    tower_dir = Path(args.cache) / f"bench_tower_{args.tower}"
    if not (tower_dir / "config.json").is_file():
        save_tiny_hf_clip(tower_dir, seed=0, **TOWERS[args.tower])
    torch.manual_seed(0)
    tower = load_towers("plip", source=tower_dir, sides=("text",)).text
    descs = [
        [f"feature {i} of class {c} : a morphological description number {i}." for i in range(16)]
        for c in range(2)
    ]
    model = HiveMIL(tower, descs, HiveMILOptions(switches=VariantSwitches.for_variant(args.variant)))
    d, n5, m = tower.embed_dim, args.n5, args.children
    g = torch.Generator().manual_seed(1)

    def bag(i: int) -> SlideBag:
        mask = torch.zeros(n5, 16, dtype=torch.bool)
        mask[:, :m] = True
        x20 = torch.randn(n5, 16, d, generator=g) * mask.unsqueeze(-1)
        return SlideBag(f"s{i}", torch.randn(n5, d, generator=g), x20, mask, i % 2)

    slides = [bag(i) for i in range(max(args.train, args.val, 1))]
    return model, slides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n5", type=int, default=500)
    parser.add_argument("--children", type=int, default=16, help="real 20x children per 5x patch (<= 16)")
    parser.add_argument("--train", type=int, default=32, help="training slides (optimiser steps) per epoch")
    parser.add_argument("--val", type=int, default=96, help="validation slides per epoch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--tower", choices=sorted(TOWERS), default="plip-size")
    parser.add_argument("--variant", choices=("reference", "corrected"), default="reference")
    parser.add_argument("--amp", choices=("off", "bf16"), default="off")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--steps-only", action="store_true", help="time 3 train steps and 3 evaluations only")
    parser.add_argument("--cache", default=str(ROOT / "cache"))
    args = parser.parse_args(argv)

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from training.bag_losses import build_bag_loss
    from training.loop import LoopOptions, build_optimizer
    from training.tasks.classification import evaluate, train_one_epoch

    if args.threads:
        torch.set_num_threads(args.threads)
    register_cpu_attention_flops()
    model, slides = build(args)
    device = torch.device("cpu")
    loss_fn = build_bag_loss("ce", 2)
    optimizer = build_optimizer("adam", model.trainable_parameters(), 1e-4, 1e-5)
    options = LoopOptions(prefetch_depth=0, amp=args.amp)

    def train_steps(n: int) -> float:
        t0 = time.perf_counter()
        train_one_epoch(
            model,
            slides.__getitem__,
            [i % len(slides) for i in range(n)],
            optimizer,
            loss_fn,
            device,
            options,
        )
        return time.perf_counter() - t0

    def evaluation(n: int) -> float:
        t0 = time.perf_counter()
        evaluate(
            model,
            slides.__getitem__,
            [i % len(slides) for i in range(n)],
            loss_fn,
            device,
            2,
            prefetch_depth=0,
            amp=args.amp,
        )
        return time.perf_counter() - t0

    # FLOPs of one train step and of one evaluated slide (text features: once per pass, counted apart)
    with FlopCounterMode(display=False) as counter:
        train_steps(1)
    step_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        evaluation(1)
    eval_one = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        evaluation(2)
    eval_slide_flops = counter.get_total_flops() - eval_one

    train_steps(1)  # warm-up
    if args.steps_only:
        step_s = min(train_steps(1) for _ in range(3))
        eval_s = min(evaluation(2) - evaluation(1) for _ in range(2))
        fold_s = float("nan")
    else:
        times = [(train_steps(args.train), evaluation(args.val)) for _ in range(args.epochs)]
        step_s = statistics.median(t / args.train for t, _ in times)
        eval_s = statistics.median(v / args.val for _, v in times)
        fold_s = sum(t + v for t, v in times)
    dtype = torch.bfloat16 if args.amp == "bf16" else torch.float32
    peak = gemm_peak_gflops(dtype)
    achieved = step_flops / step_s / 1e9
    print(
        f"{'variant':>9} {'N5':>6} {'train':>5} {'val':>5} {'amp':>4} {'GFLOP/step':>10} {'s/step':>7} "
        f"{'GFLOP/eval':>10} {'s/eval':>7} {'fold s':>8} {'GFLOP/s':>8} {'peak':>7} {'of peak':>7}"
    )
    print(
        f"{args.variant:>9} {args.n5:>6} {args.train:>5} {args.val:>5} {args.amp:>4} {step_flops / 1e9:>10.1f} "
        f"{step_s:>7.3f} {eval_slide_flops / 1e9:>10.2f} {eval_s:>7.3f} {fold_s:>8.1f} {achieved:>8.1f} "
        f"{peak:>7.1f} {achieved / peak:>7.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
