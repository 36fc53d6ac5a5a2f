"""A slide with a known answer for heatmaps: a planted region and an ABMIL run that attends to it.

:func:`planted_slide` writes the synthetic pyramidal slide of :mod:`preprocess.wsi.synthetic` (40x,
Aperio layout, 0.25 µm per pixel) with a block of 20x tiles of its tissue re-stained a darker purple
(:data:`PLANTED_TILES`). :func:`rigged_abmil_run` writes a run folder (``config.json`` of the demo task
with ``--model_type ABMIL`` and ``s_0_checkpoint.pt``) whose ABMIL is set by hand: its one active
attention unit fires along the direction from ordinary tissue tiles to planted tiles, as encoded by the
run's image tower, so the planted tiles get nearly all the attention. Used by the predict tests and by
``scripts/make_predict_example.py`` (the README pictures).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from preprocess.wsi.synthetic import TISSUE_RGB, synthetic_image, write_pyramid_tiff

TILE_PX = 512  # one 20x tile at 40x, in level-0 pixels
PLANTED_TILES = (0, 2, 4, 6)  # (x0, x1, y0, y1) in 20x-tile units: 4 tiles in the lower-left tissue block
PLANTED_RGB = (120, 50, 140)
ORDINARY_TILES = ((3, 6), (3, 1))  # (x, y) tissue tiles outside the planted block
MPP = 0.25


def planted_rect_px() -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1) of the planted region in level-0 pixels."""
    return tuple(v * TILE_PX for v in PLANTED_TILES)


def planted_slide(path: str | Path, seed: int = 0) -> Path:
    """Write the planted synthetic slide (one 8 x 8-tile block, 4096 x 4096 level-0 px) to ``path``."""
    image = synthetic_image(tile_px=TILE_PX, seed=seed)
    x0, x1, y0, y1 = planted_rect_px()
    shifted = image[y0:y1, x0:x1].astype(np.int16) + np.subtract(PLANTED_RGB, TISSUE_RGB).astype(np.int16)
    image[y0:y1, x0:x1] = np.clip(shifted, 0, 255).astype(np.uint8)  # same stain texture, another colour
    return write_pyramid_tiff(Path(path), image, objective_power=40, mpp=MPP)


def _tile_features(slide: Path, tower, corners: list[tuple[int, int]]) -> torch.Tensor:
    from preprocess.wsi.encode import tile_image
    from preprocess.wsi.reader import open_slide
    from preprocess.wsi.tiling import choose_level

    with open_slide(slide) as reader:
        level = choose_level(reader.level_downsamples, TILE_PX)
        images = [tile_image(reader, (x * TILE_PX, y * TILE_PX), level) for x, y in corners]
    with torch.no_grad():
        return tower.encode_image(torch.stack([tower.preprocess(im) for im in images])).float()


def rigged_abmil_run(results_dir: str | Path, slide: str | Path) -> Path:
    """Write an ABMIL run of the demo task whose attention is rigged to ``slide``'s planted tiles."""
    from models.checkpoint import model_identity, save_checkpoint
    from models.registry import build_model
    from models.towers import load_towers
    from preprocess.demo_tasks import task_defaults
    from training.config import parse_config
    from training.results import checkpoint_path, write_run_config

    argv = ["--task", "demo", "--model_type", "ABMIL", "--results_dir", str(results_dir)]
    config = parse_config(argv, task_defaults=task_defaults)
    task = config.task_spec()
    spec = config.model_spec(task)
    tower = load_towers(config.feature_extractor, source=config.text_tower, sides=("image",)).image
    x0, _, y0, _ = PLANTED_TILES
    feats = _tile_features(Path(slide), tower, [(x0, y0), (x0 + 1, y0 + 1), *ORDINARY_TILES])
    planted, ordinary = feats[:2].mean(0), feats[2:].mean(0)
    direction = (planted - ordinary) / (planted - ordinary).norm()
    middle = float((planted + ordinary) @ direction) / 2
    gain = 3.0 / max(float((planted - ordinary) @ direction) / 2, 1e-6)
    model = build_model("ABMIL", spec)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        # hidden unit 0 = relu(gain * (direction . x - middle)): > 0 on planted tiles, 0 on ordinary ones
        model.embed[0].weight[0] = gain * direction
        model.embed[0].bias[0] = -gain * middle
        model.attention.tanh_branch[0].weight[0, 0] = 1.0  # the sigmoid gate stays at 0.5
        model.attention.score.weight[0, 0] = 10.0  # score = 5 tanh(unit 0)
        model.classifier.bias.copy_(torch.arange(task.num_classes, dtype=torch.float32))
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(checkpoint_path(run_dir, 0), model.state_dict(), model_identity("ABMIL", spec))
    write_run_config(run_dir, config)
    return run_dir
