"""A small slide and a finished-looking HiVE-MIL run on disk, shared by the interpretability tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from datasets.bag import SlideBag

P5, P20 = 2048, 512  # 5x / 20x patch sides at level0_mag 40
CHILD_COUNTS = [3, 0, 16, 2, 5, 1, 4, 7]  # 8 5x patches; patch 1 has no children


def prompt_dict(classes, n_coarse: int, n_fine: int) -> dict:
    """``{class: {term: explanation}}``: n_coarse coarse entries, then n_coarse*n_fine fine ones."""
    out = {}
    for cls in classes:
        entries = {f"{cls} coarse {j}": f"coarse feature {j} of {cls} tissue" for j in range(n_coarse)}
        for j in range(n_coarse):
            for f in range(n_fine):
                entries[f"{cls} fine {j}.{f}"] = f"fine detail {f} refining coarse {j} of {cls}"
        out[cls] = entries
    return out


def make_bag(seed: int = 0, dim: int = 64, label: int = 0, slide_id: str = "s") -> SlideBag:
    """8 5x patches on a 4x2 grid, children on the 4x4 sub-grid of each (counts ``CHILD_COUNTS``)."""
    g = torch.Generator().manual_seed(seed)
    n5 = len(CHILD_COUNTS)
    coords5 = torch.tensor(
        [[1000 + (i % 4) * P5, 3000 + (i // 4) * P5] for i in range(n5)], dtype=torch.int64
    )
    mask = torch.zeros(n5, 16, dtype=torch.bool)
    coords20 = torch.zeros(n5, 16, 2, dtype=torch.int64)
    for i, k in enumerate(CHILD_COUNTS):
        mask[i, :k] = True
        slots = torch.arange(k)
        coords20[i, :k, 0] = coords5[i, 0] + (slots % 4) * P20
        coords20[i, :k, 1] = coords5[i, 1] + (slots // 4) * P20
    x5 = torch.randn(n5, dim, generator=g)
    x20 = torch.randn(n5, 16, dim, generator=g) * mask.unsqueeze(-1)
    return SlideBag(slide_id, x5, x20, mask, label, coords5, coords20, meta={"level0_mag": 40})


def make_mini_run(
    root: Path, clip_dir: Path, variant: str = "corrected", model_type: str = "HiVE_MIL"
) -> Path:
    """A finished-looking run of a 3-class custom task (3 slides, 2 coarse x 2 fine prompts) under ``root``.

    Writes features, dataset CSV, prompts, one split, ``config.json`` and ``s_0_checkpoint.pt`` of a
    randomly initialised model; returns the run folder.
    """
    from datasets.features import FeatureLayout, write_patch_file
    from datasets.splits import Split, split_csv_path, write_split
    from datasets.tasks import get_task
    from models.checkpoint import model_identity, save_checkpoint
    from models.registry import build_model
    from preprocess.hierarchy import build_slide_hierarchy
    from training.config import RunConfig, with_values
    from training.results import write_run_config

    task_name, classes = "minitask", ("alpha", "beta", "gamma")
    layout = FeatureLayout(root / "features", task_name, "tiny")
    rows = []
    for i, cls in enumerate(classes):
        bag = make_bag(seed=10 + i, slide_id=f"slide_{i}")
        write_patch_file(layout.low_file(bag.slide_id), bag.x5.numpy(), bag.coords5.numpy())
        write_patch_file(
            layout.high_file(bag.slide_id),
            bag.x20[bag.child_mask].numpy(),
            bag.coords20[bag.child_mask].numpy(),
        )
        build_slide_hierarchy(layout, bag.slide_id, 40)
        rows.append(f"case_{i},{bag.slide_id},{cls},40")
    (root / "csv").mkdir(parents=True, exist_ok=True)
    (root / "csv" / f"{task_name}.csv").write_text(
        "case_id,slide_id,label,level0_mag\n" + "\n".join(rows) + "\n"
    )
    prompt_path = root / "prompts" / "HiVE_MIL" / "curated" / f"{task_name}.json"
    prompt_path.parent.mkdir(parents=True, exist_ok=True)
    prompt_path.write_text(json.dumps(prompt_dict(classes, 2, 2)))
    write_split(
        split_csv_path(root / "splits", task_name, 1, 0), Split(["slide_0"], ["slide_1"], ["slide_2"])
    )
    config = with_values(
        RunConfig(),
        task=task_name, data_root_dir=str(root / "features"), feature_extractor="tiny", feature_dim=64,
        few_shot_num=1, k=1, text_tower=str(clip_dir), csv_dir=str(root / "csv"), prompt_dir=str(root / "prompts"),
        splits_root=str(root / "splits"), num_context_tokens=4, num_low_mag_texts=2, num_high_mag_subtexts=2,
        variant=variant, model_type=model_type, results_dir=str(root / "results"),
    )  # fmt: skip
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if model_type == "HiVE_MIL":
        torch.manual_seed(0)
        task = get_task(task_name, csv_dir=config.csv_dir, prompt_dir=config.prompt_dir)
        spec = config.model_spec(task)
        save_checkpoint(
            run_dir / "s_0_checkpoint.pt",
            build_model(model_type, spec).state_dict(),
            model_identity(model_type, spec),
        )
    else:
        (run_dir / "s_0_checkpoint.pt").write_bytes(b"not used")
    write_run_config(run_dir, config)
    return run_dir
