"""HiVE-MIL forward+backward time and peak memory vs slide size, both variants.

Each measurement runs in a fresh subprocess (so peak RSS is per configuration and an out-of-memory
configuration cannot take the benchmark down) with a memory cap and a time limit. Prints a table,
writes a CSV (and a log-log plot with ``--plot``), and fits the scaling exponent of each variant
(slope of log time and log memory against log N5).

    python benchmarks/bench_model.py                      # N5 = 200 1000 4000, tiny text tower
    python benchmarks/bench_model.py --tower plip-size --sizes 100 1000 10000 --plot out.png

``--tower plip-size`` builds a random text tower with PLIP's shape (width 512, 12 layers, 8 heads,
projection 512) locally; ``tiny`` is the 64-wide test tower. Image features have the tower's dimension.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOWERS = {
    "tiny": dict(width=64, projection=64, layers=2, heads=4),
    "plip-size": dict(width=512, projection=512, layers=12, heads=8),
}


def ensure_tower(kind: str, cache: Path) -> Path:
    from models.towers.tiny import save_tiny_hf_clip

    path = cache / f"bench_tower_{kind}"
    if not (path / "config.json").is_file():
        save_tiny_hf_clip(path, seed=0, **TOWERS[kind])
    return path


def run_one(args) -> dict:
    """Child process: build the model, time ``repeats`` forward+backward steps on a synthetic slide."""
    import torch

    from datasets.bag import SlideBag
    from models.hivemil.model import HiveMIL
    from models.hivemil.options import HiveMILOptions, VariantSwitches
    from models.towers import load_towers

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tower = load_towers("plip", source=args.tower_path, sides=("text",)).text
    descs = [
        [f"feature {i} of class {c} : a morphological description number {i}." for i in range(16)]
        for c in range(2)
    ]
    model = HiveMIL(tower, descs, HiveMILOptions(switches=VariantSwitches.for_variant(args.variant))).to(
        device
    )
    d = tower.embed_dim
    n5 = args.n5
    bag = SlideBag(
        "bench", torch.randn(n5, d), torch.randn(n5, 16, d), torch.ones(n5, 16, dtype=torch.bool), 0
    ).to(device)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-4)
    label = torch.tensor([0], device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(bag)
        loss = torch.nn.functional.cross_entropy(out.logits, label) + out.aux_loss
        loss.backward()
        opt.step()
        return out

    out = step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "variant": args.variant,
        "n5": n5,
        "n20_nodes": out.n_x20_nodes,
        "step_s": min(times),
        "peak_mb": peak / 2**20,
        "trainable_params": sum(p.numel() for p in model.trainable_parameters()),
    }


def measure(variant, n5, tower_path, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--variant",
        variant,
        "--n5",
        str(n5),
        "--tower-path",
        str(tower_path),
        "--repeats",
        str(args.repeats),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--mem-cap-gb",
        str(args.mem_cap_gb),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.time_limit)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "n5": n5, "status": f"timeout>{args.time_limit}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        status = (
            "out of memory"
            if "memory" in tail.lower() or proc.returncode in (-9, 137)
            else f"failed: {tail[:80]}"
        )
        return {"variant": variant, "n5": n5, "status": status}
    row = json.loads(lines[-1])
    row["status"] = "ok"
    return row


def slope(rows, key):
    pts = [(math.log(r["n5"]), math.log(r[key])) for r in rows if r.get("status") == "ok" and r[key] > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 4000])
    parser.add_argument("--variants", nargs="+", default=["reference", "corrected"])
    parser.add_argument("--tower", choices=sorted(TOWERS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mem-cap-gb", type=float, default=20.0)
    parser.add_argument("--time-limit", type=int, default=600)
    parser.add_argument("--csv", default="benchmarks/results/bench_model.csv")
    parser.add_argument("--plot", default=None)
    # child-process arguments
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--n5", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tower-path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.device == "cpu" and args.mem_cap_gb > 0:
            cap = int(args.mem_cap_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        print(json.dumps(run_one(args)))
        return 0

    cache = Path(tempfile.gettempdir()) / "hivemil_bench"
    cache.mkdir(exist_ok=True)
    tower_path = ensure_tower(args.tower, cache)
    rows = []
    print(f"tower={args.tower} device={args.device} threads={args.threads} (min of {args.repeats} steps)")
    print(
        f"{'variant':<10} {'N5':>6} {'20x nodes':>9} {'fwd+bwd s':>10} {'peak MB':>9} {'params':>9}  status"
    )
    for variant in args.variants:
        for n5 in args.sizes:
            row = measure(variant, n5, tower_path, args)
            rows.append(row)
            if row["status"] == "ok":
                print(
                    f"{variant:<10} {n5:>6} {row['n20_nodes']:>9} {row['step_s']:>10.3f} {row['peak_mb']:>9.0f} "
                    f"{row['trainable_params']:>9}  ok",
                    flush=True,
                )
            else:
                print(
                    f"{variant:<10} {n5:>6} {'-':>9} {'-':>10} {'-':>9} {'-':>9}  {row['status']}", flush=True
                )
    for variant in args.variants:
        vr = [r for r in rows if r["variant"] == variant]
        print(
            f"scaling exponent ({variant}): time ~ N5^{slope(vr, 'step_s'):.2f}, memory ~ N5^{slope(vr, 'peak_mb'):.2f}"
        )
    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = ["variant", "n5", "n20_nodes", "step_s", "peak_mb", "trainable_params", "status"]
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for variant in args.variants:
            ok = [r for r in rows if r["variant"] == variant and r["status"] == "ok"]
            axes[0].loglog([r["n5"] for r in ok], [r["step_s"] for r in ok], "o-", label=variant)
            axes[1].loglog([r["n5"] for r in ok], [r["peak_mb"] for r in ok], "o-", label=variant)
        axes[0].set(xlabel="5x patches (N5)", ylabel="forward+backward (s)")
        axes[1].set(xlabel="5x patches (N5)", ylabel="peak memory (MB)")
        for ax in axes:
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
