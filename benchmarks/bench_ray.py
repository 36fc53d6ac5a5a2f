"""What Ray costs and gains here: start-up, a small grid sequentially vs on Ray, extraction with 1 vs N workers.

1. **Start-up**: a local Ray instance (``ray.init``), then the first task of a fresh worker process, then a
   task that imports the training code (what each worker pays once).
2. **Grid**: the demo task, ``--models`` (default HiVE_MIL ABMIL), ``--folds`` folds of ``--epochs`` epochs
   with ``--threads 1``: ``python main.py`` once per configuration, one after the other, vs
   ``python reproduce.py`` (local Ray instance, one fold per task), each in a fresh results folder and a
   fresh process; wall time from process start to exit. The results of both must be identical.
3. **Extraction**: ``--slides`` synthetic pyramidal slides (``preprocess/wsi/synthetic.py``, 40x, ``--repeat``
   blocks per side, 31 tissue tiles per block) encoded by a random HF CLIP vision tower of the given shape;
   ``extract_features.py`` without Ray and with ``--ray --ray-workers N`` for each ``--ray-workers`` value;
   tiles/s as the script reports it (from the moment the workers hold the encoder) and the process wall time.

    python benchmarks/bench_ray.py                               # all three, tiny tower
    python benchmarks/bench_ray.py --skip grid --vision-width 768 --vision-layers 12   # PLIP-sized encoder
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip", nargs="*", default=[], choices=("startup", "grid", "extract"))
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--models", nargs="+", default=["HiVE_MIL", "ABMIL"])
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2, help="blocks per slide side (31 tiles per block)")
    parser.add_argument("--ray-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--vision-width", type=int, default=32, help="ViT width (PLIP: 768)")
    parser.add_argument("--vision-layers", type=int, default=1, help="ViT layers (PLIP: 12)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="extraction runs per setting (all shown)")
    return parser.parse_args(argv)


def timed(cmd: list[str], cwd: Path = ROOT) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def bench_startup(cpus: int) -> None:
    import ray

    from utils.ray_cluster import start_ray

    session = start_ray(None, num_cpus=cpus)

    @ray.remote(num_cpus=1)
    def nothing():
        return 0

    @ray.remote(num_cpus=1)
    def import_training():
        t = time.perf_counter()
        import training.experiment  # noqa: F401

        return time.perf_counter() - t

    t = time.perf_counter()
    ray.get(nothing.remote())
    first = time.perf_counter() - t
    imports = ray.get(import_training.remote())
    t = time.perf_counter()
    session.close()
    down = time.perf_counter() - t
    print(
        f"ray.init (local, {cpus} CPUs): {session.seconds:.1f} s; first task (worker start): {first:.1f} s; "
        f"importing the training code in a worker: {imports:.1f} s; shutdown {down:.1f} s"
    )


def bench_grid(args: argparse.Namespace, tmp: Path) -> None:
    from models.towers.tiny import ensure_demo_text_tower
    from preprocess.demo import ensure_demo_data

    ensure_demo_data()
    ensure_demo_text_tower()
    common = ["--k", str(args.folds), "--max_epochs", str(args.epochs), "--threads", "1", "--quiet"]
    seq_dir, ray_dir = tmp / "sequential", tmp / "ray"
    total = 0.0
    for model in args.models:
        seconds, _ = timed(
            [
                sys.executable,
                "main.py",
                "--task",
                "demo",
                "--model_type",
                model,
                "--results_dir",
                str(seq_dir),
                *common,
            ]
        )
        print(f"  main.py {model}: {seconds:.1f} s")
        total += seconds
    print(f"sequential (main.py per configuration): {total:.1f} s")
    seconds, out = timed(
        [
            sys.executable,
            "reproduce.py",
            "--tasks",
            "demo",
            "--models",
            *args.models,
            "--results_dir",
            str(ray_dir),
            "--local-cpus",
            str(args.cpus),
            *common,
        ]
    )
    startup = re.search(r"local Ray instance.*\(([\d.]+) s\)", out)
    print(
        f"reproduce.py on Ray ({args.cpus} CPUs, one fold per task): {seconds:.1f} s "
        f"(of which ray.init {startup.group(1) if startup else '?'} s)"
    )
    same = all(
        (seq_dir / p.relative_to(ray_dir)).read_bytes() == p.read_bytes()
        for p in ray_dir.rglob("results.csv")
    )
    print(f"results.csv identical: {same}")


def bench_extract(args: argparse.Namespace, tmp: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from models.towers.preprocess import CLIP_MEAN, CLIP_STD
    from preprocess.wsi.synthetic import synthetic_image, write_pyramid_tiff

    slides = tmp / "slides"
    slides.mkdir()
    image = synthetic_image(512, repeat=args.repeat)
    for i in range(args.slides):
        write_pyramid_tiff(slides / f"slide{i}.svs", image, objective_power=40)
    del image
    tower = tmp / "tower"
    width = args.vision_width
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=args.vision_layers,
            num_attention_heads=max(1, width // 64),
            image_size=args.image_size,
            patch_size=32,
        ),
        projection_dim=512,
    )
    CLIPModel(config).eval().save_pretrained(str(tower))
    CLIPImageProcessor(
        size={"shortest_edge": args.image_size},
        crop_size={"height": args.image_size, "width": args.image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    ).save_pretrained(str(tower))
    base = [
        sys.executable,
        "extract_features.py",
        "--slides",
        str(slides),
        "--task",
        "bench",
        "--feature-extractor",
        "plip",
        "--weights",
        str(tower),
        "--batch-size",
        str(args.batch_size),
        "--device",
        "cpu",
    ]
    print(
        f"extraction: {args.slides} slides x {31 * args.repeat**2} tiles, ViT width {width} x "
        f"{args.vision_layers} layers, {args.image_size} px"
    )
    runs = [("no Ray", [])] + [
        (f"Ray, {n} worker(s)", ["--ray", "--ray-workers", str(n)]) for n in args.ray_workers
    ]
    for i, (name, extra) in enumerate(runs):
        rates, walls, ready = [], [], None
        for r in range(args.repeats):
            seconds, out = timed([*base, "--data-root", str(tmp / f"out{i}_{r}"), *extra])
            rate = re.search(r"\(([\d.]+) tiles/s\)", out)
            rates.append(rate.group(1) if rate else "?")
            walls.append(f"{seconds:.1f}")
            ready = re.search(r"ready in ([\d.]+) s", out) or ready
        print(
            f"  {name:<18} {' / '.join(rates):>8} tiles/s; process {' / '.join(walls)} s"
            + (f" (workers ready after {ready.group(1)} s)" if ready else "")
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "startup" not in args.skip:
            bench_startup(args.cpus)
        if "grid" not in args.skip:
            bench_grid(args, tmp)
        if "extract" not in args.skip:
            bench_extract(args, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
