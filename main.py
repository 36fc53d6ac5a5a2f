"""Train and evaluate a few-shot WSI classifier (HiVE-MIL by default) over k few-shot folds.

Published command (works unchanged; add ``--text_tower PATH`` to load the text tower offline)::

    python main.py --seed 1 --drop_out --early_stopping --lr 1e-4 --k 5 --few_shot_num 16 \\
        --feature_extractor plip --feature_dim 512 --bag_loss ce --task tcga_brca \\
        --results_dir RESULTS --model_type HiVE_MIL --data_root_dir R

``python main.py --task demo`` trains on the generated demo data: the CLI expands ``demo`` into its
data paths, tiny text tower and training settings; ``--task demo_survival`` likewise for the survival
demo (HiLa-style; docs/survival.md). Both come from :func:`preprocess.demo_tasks.task_defaults`. See
:mod:`training.config` for every flag and :mod:`training.experiment` for what a run does and writes.
"""

from __future__ import annotations

import sys

from preprocess.demo_tasks import task_defaults
from training.config import parse_config
from utils.errors import run_cli


def _kind_defaults(config):
    """The task kind's defaults (the published survival settings); imported once the flags parsed."""
    from training.tasks import kind_defaults

    return kind_defaults(config)


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv, task_defaults=task_defaults, kind_defaults=_kind_defaults)
    from training.experiment import run_experiment  # torch and the rest only once the flags are fine

    run_experiment(config)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
