"""Wall time of one training fold epoch (train + validation) with and without the speed mechanisms.

docs/method.md §9: evaluation computes the slide-independent text features once per pass
(``model.precompute()``), a background thread prefetches the next bags, and a bounded in-memory bag
cache avoids re-reading H5 files. This script writes synthetic slides (published H5 layout) to a work
folder, then for each setting builds the model afresh (same seed) and times ``--epochs`` epochs of
train + validation through the project's own loop (:mod:`training.loop`, :mod:`training.tasks.classification`).
Epoch 1 reads from disk; later epochs show the bag cache.

    python benchmarks/bench_epoch.py                                   # spec: 32 train + 96 val, N5=500, D=512
    python benchmarks/bench_epoch.py --train 8 --val 16 --n5 100 --tower tiny --epochs 2
    python benchmarks/bench_epoch.py --model ABMIL --tower none        # any registered model

``--model`` is any name in :mod:`models.registry`. For ``HiVE_MIL`` a random Hugging Face CLIP text tower
is built locally: ``tiny`` (width 64, 2 layers) or ``plip-size`` (PLIP's shape: width 512, 12 layers,
8 heads); its projection is ``--dim``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOWERS = {
    "none": None,
    "tiny": dict(width=64, layers=2, heads=4),
    "plip-size": dict(width=512, layers=12, heads=8),
}


@dataclass(frozen=True)
class Setting:
    name: str
    text_cache: bool
    prefetch: bool
    bag_cache: bool


SETTINGS = (
    Setting("none", False, False, False),
    Setting("text-cache", True, False, False),
    Setting("prefetch", False, True, False),
    Setting("bag-cache", False, False, True),
    Setting("all", True, True, True),
)


def write_synthetic_slides(root: Path, n_slides: int, n5: int, children: int, dim: int, seed: int = 0):
    """Two-class slides: 5x files and published-format hierarchical files (row i = children of 5x row i)."""
    import h5py
    import numpy as np

    from datasets.features import FeatureLayout, write_patch_file

    layout = FeatureLayout(root, "bench", "bench")
    ids, labels = [f"slide_{i:04d}" for i in range(n_slides)], [i % 2 for i in range(n_slides)]
    if layout.hier_dir.is_dir() and len(list(layout.hier_dir.glob("*.h5"))) >= n_slides:
        return layout, ids, labels
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n5)))
    coords5 = np.stack([np.arange(n5) % side, np.arange(n5) // side], axis=1).astype(np.int64) * 2048
    offsets = np.stack([np.arange(children) % 4, np.arange(children) // 4], axis=1) * 512
    coords20 = (coords5[:, None, :] + offsets[None]).astype(np.int64)
    layout.hier_dir.mkdir(parents=True, exist_ok=True)
    for slide_id, label in zip(ids, labels):
        shift = 0.2 if label else -0.2
        write_patch_file(
            layout.low_file(slide_id), rng.normal(shift, 1, (n5, dim)).astype(np.float32), coords5
        )
        with h5py.File(layout.hier_file(slide_id), "w") as f:
            f.create_dataset("features", data=rng.normal(shift, 1, (n5, children, dim)).astype(np.float32))
            f.create_dataset("coords", data=coords20)
    return layout, ids, labels


def write_prompts(prompt_dir: Path, task: str, classes: tuple[str, ...]) -> None:
    """A prompt file with 4 coarse + 12 fine distinct entries per class."""
    data = {
        c: {
            f"{c} finding {j}": f"description {j} of a morphological pattern seen in {c} tissue"
            for j in range(16)
        }
        for c in classes
    }
    path = prompt_dir / "HiVE_MIL" / "curated" / f"{task}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def ensure_tower(kind: str, dim: int, cache: Path) -> str | None:
    if TOWERS[kind] is None:
        return None
    from models.towers.tiny import save_tiny_hf_clip

    path = cache / f"tower_{kind}_{dim}"
    if not (path / "config.json").is_file():
        save_tiny_hf_clip(path, projection=dim, seed=0, **TOWERS[kind])
    return str(path)


def time_setting(
    args, setting: Setting, layout, ids, labels, task, tower: str | None
) -> list[tuple[float, float]]:
    """[(train seconds, val seconds)] per epoch for one setting."""
    import torch

    from datasets.bag_dataset import BagDataset
    from models.registry import build_model
    from training.bag_losses import build_bag_loss
    from training.config import RunConfig
    from training.loop import LoopOptions, build_optimizer, epoch_order
    from training.tasks.classification import evaluate, train_one_epoch
    from utils.seed import seed_everything

    device = torch.device(args.device)
    config = RunConfig(
        task=task.name,
        model_type=args.model,
        feature_extractor="plip",
        feature_dim=args.dim,
        text_tower=tower,
    )
    seed_everything(0, deterministic=device.type == "cpu")
    model = build_model(args.model, config.model_spec(task)).to(device)
    dataset = BagDataset(layout, ids, labels, cache_mb=args.cache_mb if setting.bag_cache else 0)
    train_idx, val_idx = list(range(args.train)), list(range(args.train, args.train + args.val))
    loss_fn = build_bag_loss("ce", task.num_classes)
    optimizer = build_optimizer("adam", model.trainable_parameters(), 1e-4, 1e-5)
    options = LoopOptions(prefetch_depth=2 if setting.prefetch else 0, workers=1)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(args.epochs):
        order = [train_idx[i] for i in epoch_order([labels[i] for i in train_idx], generator, False)]
        sync(device)
        t0 = time.perf_counter()
        train_one_epoch(model, dataset.__getitem__, order, optimizer, loss_fn, device, options)
        sync(device)
        t1 = time.perf_counter()
        evaluate(
            model,
            dataset.__getitem__,
            val_idx,
            loss_fn,
            device,
            task.num_classes,
            use_text_cache=setting.text_cache,
            prefetch_depth=options.prefetch_depth,
        )
        sync(device)
        times.append((t1 - t0, time.perf_counter() - t1))
    return times


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="HiVE_MIL", help="model name in models.registry")
    p.add_argument("--tower", choices=sorted(TOWERS), default="tiny", help="random text tower for HiVE_MIL")
    p.add_argument("--train", type=int, default=32)
    p.add_argument("--val", type=int, default=96)
    p.add_argument("--n5", type=int, default=500, help="5x patches per slide")
    p.add_argument("--children", type=int, default=16, help="20x children per 5x patch")
    p.add_argument("--dim", type=int, default=512, help="feature dimension")
    p.add_argument("--epochs", type=int, default=2, help="epochs per setting (epoch 1 cold, later warm)")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the settings this many times (interleaved); keep the minimum",
    )
    p.add_argument("--cache_mb", type=float, default=8192, help="bag cache size when on")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--settings", nargs="+", default=[s.name for s in SETTINGS], choices=[s.name for s in SETTINGS]
    )
    p.add_argument(
        "--workdir", default=None, help="where synthetic data and towers go (default: a temp folder)"
    )
    args = p.parse_args(argv)

    import torch

    from datasets.tasks import TaskSpec
    from models.registry import model_info

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_epoch_"))
    classes = ("c0", "c1")
    task = TaskSpec(
        "bench", classes, work / "bench.csv", prompt_dir=work / "text_prompt", label_dict={"c0": 0, "c1": 1}
    )
    write_prompts(work / "text_prompt", "bench", classes)
    t0 = time.perf_counter()
    layout, ids, labels = write_synthetic_slides(
        work / "features", args.train + args.val, args.n5, args.children, args.dim
    )
    print(f"data: {args.train + args.val} slides of N5={args.n5} x {args.children} children, D={args.dim} "
          f"in {work} ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    tower = ensure_tower(args.tower, args.dim, work) if model_info(args.model).text_tower else None
    print(
        f"model {args.model}, tower {args.tower if tower else '-'}, device {args.device}, threads {torch.get_num_threads()}"
    )
    header = f"{'setting':<12}" + "".join(
        f"{f'ep{e + 1} train':>11}{f'ep{e + 1} val':>9}{f'ep{e + 1} total':>11}" for e in range(args.epochs)
    )
    print(header)
    chosen = [s for s in SETTINGS if s.name in args.settings]
    best: dict[str, list[tuple[float, float]]] = {}
    for rep in range(
        args.repeats
    ):  # interleaved, so load changes on a shared machine hit every setting alike
        for setting in chosen:
            times = time_setting(args, setting, layout, ids, labels, task, tower)
            cells = "".join(f"{tr:>11.2f}{va:>9.2f}{tr + va:>11.2f}" for tr, va in times)
            print(f"{setting.name:<12}{cells}   (repeat {rep + 1})", flush=True)
            old = best.get(setting.name)
            best[setting.name] = times if old is None else [min(a, b, key=sum) for a, b in zip(old, times)]
    print(f"minimum over {args.repeats} repeat(s):")
    for setting in chosen:
        cells = "".join(f"{tr:>11.2f}{va:>9.2f}{tr + va:>11.2f}" for tr, va in best[setting.name])
        print(f"{setting.name:<12}{cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
