"""Explain one slide's prediction: HiVE-MIL description contributions and drill-down, or a survival run's maps.

    python explain.py --checkpoint RESULTS/<task>/<extractor>/<shots>/<run> --slide SLIDE_ID [--fold 0] \\
        [--config config.json] [--out DIR] [--top 5] [--slide-file SLIDE.svs] [--device auto] [--threads N] \\
        [--data_root_dir R] [--text_tower PATH]

``--data_root_dir`` and ``--text_tower`` replace the run's own values (a run trained on another machine).

``--checkpoint`` is a run folder (``config.json`` + ``s_<fold>_checkpoint.pt``) or a checkpoint file
(its folder's ``config.json`` unless ``--config`` is given). Writes ``contributions_5x.png``,
``contributions_20x.png``, ``heatmap_5x.png``, ``heatmap_20x.png``, ``drilldown.csv`` and
``explanation.json`` (all numbers) into ``--out`` (default ``<run folder>/explanations/fold_<k>/<slide>``).
The heatmaps are drawn by :mod:`interpretability.heatmaps` (as ``predict.py --heatmaps``), over the
slide's thumbnail with ``--slide-file``.

A **survival run** (docs/survival.md §12): the fold's risk and per-bin survival of the slide, and its
per-patch maps -- the HiLa-style model's transport plans per attribute and level
(``heatmap_5x_attr<k>.png``, ``heatmap_20x_attr<k>.png``; attribute names and transport costs in
``explanation.json``), or the attention of ``ABMIL_surv`` / ``TransMIL_surv`` (``heatmap_5x.png``,
``heatmap_20x.png``) -- with ``scores.npz`` and ``explanation.json`` (the ``--top`` patches of every map).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.cli_flags import DataRootFlags, DeviceFlags, ThreadFlags, TowerFlags
from utils.errors import InputError, run_cli
from utils.flags import add_flags, flag_keys, given_values, read_flags, with_flag_values

RUN_OVERRIDES = (DataRootFlags, TowerFlags)  # flags that replace the run config's value when given


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="explain.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint file (PATH_OR_RUN_DIR)")
    p.add_argument("--config", default=None, help="the run's config.json (default: next to the checkpoint)")
    p.add_argument(
        "--fold", type=int, default=0, help="fold whose checkpoint is loaded from a run folder (default: 0)"
    )
    p.add_argument("--slide", required=True, help="slide id (a row of the task's dataset CSV)")
    p.add_argument("--out", default=None, help="output folder (default: <run>/explanations/fold_<k>/<slide>)")
    p.add_argument("--top", type=int, default=5, help="top patches listed per description (default: 5)")
    p.add_argument(
        "--slide-file",
        default=None,
        help="the raw slide (.svs, .tif, ...): heatmaps drawn over its thumbnail",
    )
    add_flags(p, DeviceFlags)
    add_flags(p, ThreadFlags)
    for group in RUN_OVERRIDES:
        add_flags(p, group)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1:
        raise InputError(f"--top must be >= 1, got {args.top}")
    threads = read_flags(ThreadFlags, args)
    threads.check()
    from inference.runs import (
        explanation_kind,
        is_survival_run,
        load_fold_model,
        load_prompts,
        load_slide,
        read_run_config,
        resolve_run_files,
        run_task,
    )
    from interpretability.attribution import explain_slide
    from interpretability.plots import save_report
    from utils.device import resolve_device

    files = resolve_run_files(args.checkpoint, args.fold, config=args.config)
    # Cheap checks first (model type, task, slide, prompts), then the model.
    config = read_run_config(files.config)
    kind = explanation_kind(config, f"{files.config}: ")
    survival = is_survival_run(config)
    if not survival and kind != "class evidence":
        raise InputError(
            f"{files.config}: model_type {config.model_type!r} is a classification baseline; explain.py explains "
            "HiVE_MIL and survival runs (its attention maps: predict.py --heatmaps)"
        )
    override_keys = {key for group in RUN_OVERRIDES for key in flag_keys(group)}
    overrides = {k: v for k, v in given_values(args).items() if k in override_keys}
    config = with_flag_values(config, overrides)
    device = resolve_device(read_flags(DeviceFlags, args).device)
    task = run_task(config, files.config)
    bag = load_slide(config, task, args.slide)
    prompts = None if survival else load_prompts(config, task)
    image = None
    if args.slide_file:
        from interpretability.heatmaps import read_thumbnail
        from preprocess.wsi.reader import open_slide

        try:
            with open_slide(args.slide_file) as reader:
                image = read_thumbnail(reader)
        except InputError as err:
            raise InputError(f"--slide-file {args.slide_file}: {err}") from None
    if threads.threads:
        import torch

        torch.set_num_threads(threads.threads)
    model = load_fold_model(config, task, files.checkpoint, device)
    out = (
        Path(args.out)
        if args.out
        else files.checkpoint.parent / "explanations" / f"fold_{args.fold}" / args.slide
    )
    if survival:
        from inference.survival_explain import explain_survival_slide, save_survival_explanation

        found = explain_survival_slide(config, task, model, bag, args.fold, device)
        save_survival_explanation(found, out, image=image, top=args.top)
        curve = ", ".join(f"{b} {v:.3f}" for b, v in zip(found.bins, found.survival))
        print(
            f"slide {args.slide}: risk {found.risk:.4f}; survival at the end of each bin: {curve}; wrote {out}"
        )
        return 0
    explanation = explain_slide(model, bag, task.class_names, prompts, top_n=args.top)
    save_report(explanation, out, image=image)
    probs = ", ".join(f"{n} {p:.3f}" for n, p in zip(task.class_names, explanation.probabilities))
    print(f"slide {args.slide}: predicted {explanation.predicted_name} ({probs}); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
