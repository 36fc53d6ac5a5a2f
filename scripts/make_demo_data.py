"""Generate the embedded demo data set (synthetic 5x/20x feature bags, CSV, splits, prompts).

    python scripts/make_demo_data.py [--root DIR] [--seed 0] [--force]

Without ``--root`` it goes to ``$HIVEMIL_CACHE/demo`` or ``<project>/cache/demo``. Existing data of
the same generator version and seed is reused unless ``--force``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from preprocess.demo import default_demo_root, ensure_demo_data  # noqa: E402
from utils.errors import run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help=f"output folder (default {default_demo_root()})")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--force", action="store_true", help="regenerate even when up to date")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    demo = ensure_demo_data(args.root, seed=args.seed, force=args.force)
    print(
        f"demo data in {demo.root} ({time.perf_counter() - start:.2f} s): features {demo.data_root_dir}, "
        f"csv {demo.task.csv_path}, splits {demo.splits_root}, prompts {demo.task.prompt_file()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
