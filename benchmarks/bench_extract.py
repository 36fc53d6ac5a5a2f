"""Feature extraction throughput (tiles/s) and where the time goes, on a generated slide.

Builds a synthetic pyramidal TIFF (``preprocess/wsi/synthetic.py``: 31 tissue tiles per 8x8 block of 20x
tiles, ``--repeat`` x ``--repeat`` blocks) and a random HF CLIP vision tower, then extracts the slide
with :func:`preprocess.wsi.pipeline.extract_slide` for each ``--workers`` value and prints one row per run:
total tiles/s and seconds per stage (open, thumbnail, tissue = thumbnail read + segmentation + tiling;
read, resize, preprocess = summed over reader threads; wait = encoder idle waiting for a batch;
encode; write). With ``--workers 0`` the stages run serially, so they add up to the total.

    python benchmarks/bench_extract.py                                  # tiny tower, CPU
    python benchmarks/bench_extract.py --repeat 1 --vision-width 768 --vision-layers 12 --device auto  # PLIP-sized
    python benchmarks/bench_extract.py --repeat 1 --workers 2 --backbone resnet50_trunc uni phikon_v2

``--backbone`` measures the image-only backbones at their real sizes (random weights written in their
real formats by :mod:`models.towers.tiny_backbones`, loaded through ``load_towers``; Phikon v2 as a
Dinov2 ViT-L/16 at 224) instead of the CLIP tower (``clip``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from datasets.features import FeatureLayout  # noqa: E402
from preprocess.wsi.pipeline import ExtractOptions, extract_slide  # noqa: E402
from preprocess.wsi.sources import SlideSource  # noqa: E402
from preprocess.wsi.synthetic import synthetic_image, write_pyramid_tiff  # noqa: E402
from utils.device import resolve_device  # noqa: E402

STAGES = ("open", "thumbnail", "tissue", "read", "resize", "preprocess", "wait", "encode", "write")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="blocks per side (31 tiles per block)")
    parser.add_argument("--level0-mag", type=int, default=40, choices=(20, 40))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="reader threads per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"), help="mixed precision")
    parser.add_argument("--image-size", type=int, default=224, help="tower input size (real towers: 224)")
    parser.add_argument("--vision-width", type=int, default=32, help="ViT width (PLIP: 768)")
    parser.add_argument("--vision-layers", type=int, default=1, help="ViT layers (PLIP: 12)")
    parser.add_argument("--vision-patch", type=int, default=32, help="ViT patch size (PLIP ViT-B/32: 32)")
    parser.add_argument(
        "--backbone",
        nargs="+",
        default=["clip"],
        choices=("clip", "resnet50_trunc", "uni", "phikon_v2"),
        help="encoders to measure: clip (the --vision-* tower) and/or real-size image-only backbones",
    )
    parser.add_argument(
        "--backend", default=None, choices=("openslide", "tiffslide"), help="force a slide reader"
    )
    return parser.parse_args(argv)


def build_tower(folder: Path, image_size: int, width: int, layers: int, patch: int, device):
    """A random HF CLIP folder with the requested vision shape, loaded through the project's loader."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from models.towers import load_towers
    from models.towers.preprocess import CLIP_MEAN, CLIP_STD

    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=max(1, width // 64),
            image_size=image_size,
            patch_size=patch,
        ),
        projection_dim=512,
    )
    CLIPModel(config).eval().save_pretrained(str(folder))
    CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    ).save_pretrained(str(folder))
    return load_towers("plip", source=folder, sides=("image",), device=device).image


def build_backbone(name: str, folder: Path, device):
    """A real-size image-only backbone with random weights in its real format, loaded by ``load_towers``."""
    from models.towers import load_towers
    from models.towers.tiny_backbones import save_random_phikon_v2, save_random_resnet50, save_random_uni

    if name == "resnet50_trunc":
        weights = save_random_resnet50(folder / "resnet50.pth")
    elif name == "uni":
        weights = save_random_uni(folder / "pytorch_model.bin")
    else:
        weights = save_random_phikon_v2(folder)
    return load_towers(name, source=weights, sides=("image",), device=device).image


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tile_px = 512 if args.level0_mag == 40 else 256
        t0 = time.perf_counter()
        image = synthetic_image(tile_px, repeat=args.repeat)
        slide = write_pyramid_tiff(tmp / "bench.svs", image, objective_power=args.level0_mag)
        del image
        print(f"slide {slide.stat().st_size / 1e6:.0f} MB written in {time.perf_counter() - t0:.1f} s")
        backends = (args.backend,) if args.backend else None
        header = f"{'encoder':>14} {'workers':>7} {'tiles':>6} {'total s':>8} {'tiles/s':>8} " + " ".join(
            f"{s:>10}" for s in STAGES
        )
        rows = []
        for encoder in args.backbone:
            if encoder == "clip":
                tower = build_tower(
                    tmp / "tower",
                    args.image_size,
                    args.vision_width,
                    args.vision_layers,
                    args.vision_patch,
                    device,
                )
            else:
                tower = build_backbone(encoder, tmp / encoder, device)
            for workers in args.workers:
                options = ExtractOptions(
                    extractor="bench",
                    batch_size=args.batch_size,
                    workers=workers,
                    device=str(device),
                    amp=args.amp,
                    backends=backends,
                )
                layout = FeatureLayout(tmp / f"out_{encoder}_{workers}", "bench", "bench")
                result = extract_slide(SlideSource("bench", slide), layout, tower, options)
                tiles = result.num_low + result.num_high
                stages = " ".join(f"{result.times.get(s, 0.0):>10.3f}" for s in STAGES)
                rows.append(
                    f"{encoder:>14} {workers:>7} {tiles:>6} {result.seconds:>8.2f} "
                    f"{tiles / result.seconds:>8.1f} {stages}"
                )
            del tower
        print(
            f"device {device}, backend {result.backend}, level0 {args.level0_mag}x, batch {args.batch_size}, "
            f"torch threads {torch.get_num_threads()}; clip = ViT width {args.vision_width} x "
            f"{args.vision_layers} layers, patch {args.vision_patch}, {args.image_size} px"
        )
        print(header)
        print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
