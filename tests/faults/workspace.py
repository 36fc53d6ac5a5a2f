"""Pristine data for the fault cases, built once per session, and the helpers cases use to damage copies.

:class:`Assets` holds the demo task (``preprocess/demo.py``), its tiny text tower, one finished
HiVE-MIL run (for ``explain.py`` and the checkpoint converter), one resumable run (restored before
each resume case), synthetic pyramidal slides and two tiny image towers. Hierarchy cases build their
own tiny feature sets (:func:`make_hier_root`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from tests.faults.harness import Ctx, Result, run_inprocess


class Assets:
    """Pristine inputs, each built on first use under ``work``; cases copy what they damage."""

    def __init__(self, work: Path):
        self.work = Path(work)
        self._cache: dict[str, object] = {}

    def once(self, key: str, build: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def demo(self) -> Path:
        """The demo task (48 slides, 3 classes, features of dim 64)."""

        def build():
            from preprocess.demo import ensure_demo_data

            return ensure_demo_data(self.work / "assets" / "demo", seed=0).root

        return self.once("demo", build)

    def text_tower(self) -> Path:
        def build():
            from models.towers.tiny import ensure_demo_text_tower

            return ensure_demo_text_tower(self.work / "assets")

        return self.once("text_tower", build)

    def trained_run(self) -> tuple[Path, Path]:
        """(demo copy, run folder) of one finished HiVE-MIL run (1 fold, 1 epoch), for explain/convert."""

        def build():
            data = copy_demo(self, self.work / "assets" / "run_ws")
            results = self.work / "assets" / "run_ws" / "results"
            res = run_inprocess("main", main_argv(self, data, results))
            if res.code != 0:
                raise RuntimeError(f"the reference training run failed:\n{res.err[-2000:]}")
            return data, run_dir_of(results)

        return self.once("trained_run", build)

    def resume_chain(self) -> ResumeChain:
        """The resumable run, restored to its state right after its first run."""
        chain = self.once("resume_chain", lambda: ResumeChain(self))
        chain.restore()
        return chain

    def slides(self) -> dict[str, Path]:
        """Synthetic pyramidal slides: ``s40`` (40x), ``s20`` (no magnification), ``blank`` (no tissue)."""

        def build():
            import numpy as np

            from preprocess.wsi.synthetic import synthetic_image, write_pyramid_tiff

            folder = self.work / "assets" / "slides"
            folder.mkdir(parents=True, exist_ok=True)
            blank = np.full((2048, 2048, 3), 242, dtype=np.uint8)
            return {
                "s40": write_pyramid_tiff(
                    folder / "s40.svs", synthetic_image(tile_px=512), objective_power=40
                ),
                "s20": write_pyramid_tiff(folder / "s20.tif", synthetic_image(tile_px=256, seed=1)),
                "blank": write_pyramid_tiff(folder / "blank.svs", blank, objective_power=20),
            }

        return self.once("slides", build)

    def image_tower(self, name: str) -> Path:
        """Tiny Hugging Face CLIP image towers ``a`` and ``b`` (different weights)."""

        def build():
            from models.towers.tiny import save_tiny_hf_clip

            seed = {"a": 0, "b": 1}[name]
            return save_tiny_hf_clip(
                self.work / "assets" / f"image_tower_{name}", image_size=32, projection=24, seed=seed
            )

        return self.once(f"image_tower_{name}", build)


class ResumeChain:
    """One trained run (1 fold, 1 epoch) in a fixed folder; :meth:`restore` puts back its first state
    (same paths, file times kept), so each resume case starts from it whatever ran before."""

    def __init__(self, assets: Assets):
        self.assets = assets
        self.root = assets.work / "resume"
        self.pristine = assets.work / "assets" / "resume_pristine"
        self.data = copy_demo(assets, self.root)
        self.results = self.root / "results"
        first = run_inprocess("main", self.argv())
        if first.code != 0:
            raise RuntimeError(f"resume chain: first run failed:\n{first.err[-2000:]}")
        shutil.copytree(self.root, self.pristine)

    def restore(self) -> None:
        shutil.rmtree(self.root)
        shutil.copytree(self.pristine, self.root)

    def argv(self, *extra) -> list:
        return main_argv(self.assets, self.data, self.results, *extra)

    @property
    def run_dir(self) -> Path:
        return run_dir_of(self.results)


# ------------------------------------------------------------------------------------------ demo task
def copy_demo(assets: Assets, target: Path) -> Path:
    shutil.copytree(assets.demo(), target / "demo")
    return target / "demo"


def main_argv(assets: Assets, data: Path, results: Path, *extra) -> list:
    """``main.py`` on a copy of the demo task: 1 fold, 1 epoch."""
    from preprocess.demo import EXTRACTOR, FEATURE_DIM, FEW_SHOT_NUM, PROMPT_LLM, TASK_NAME

    return [
        "--task", TASK_NAME, "--data_root_dir", data / "features", "--csv_dir", data / "dataset_csv",
        "--prompt_dir", data / "text_prompt", "--splits_root", data / "splits", "--LLM", PROMPT_LLM,
        "--text_tower", assets.text_tower(), "--feature_extractor", EXTRACTOR, "--feature_dim", FEATURE_DIM,
        "--few_shot_num", FEW_SHOT_NUM, "--k", "1", "--max_epochs", "1", "--lr", "1e-3",
        "--results_dir", results, *extra,
    ]  # fmt: skip


def demo_case(ctx: Ctx, damage: Callable[[Path], None] | None = None, *extra) -> Result:
    """Copy the demo task, apply ``damage(data)``, run main.py on it."""
    data = copy_demo(ctx.assets, ctx.dir)
    if damage is not None:
        damage(data)
    ctx.inputs(data, ctx.assets.text_tower())
    return run_inprocess("main", main_argv(ctx.assets, data, ctx.dir / "results", *extra))


def run_dir_of(results: Path) -> Path:
    found = sorted(p.parent for p in Path(results).rglob("config.json"))
    if not found:
        raise RuntimeError(f"no run folder under {results}")
    return found[0]


def demo_layout(data: Path):
    from datasets.features import FeatureLayout
    from preprocess.demo import EXTRACTOR, TASK_NAME

    return FeatureLayout(data / "features", TASK_NAME, EXTRACTOR)


def demo_split(data: Path, fold: int = 0):
    """(path, Split) of the demo task's split file ``fold``."""
    from datasets.splits import read_split, split_csv_path
    from preprocess.demo import FEW_SHOT_NUM, TASK_NAME

    path = split_csv_path(data / "splits", TASK_NAME, FEW_SHOT_NUM, fold)
    return path, read_split(path)


def first_train(data: Path) -> str:
    return demo_split(data)[1].train[0]


def first_test(data: Path) -> str:
    return demo_split(data)[1].test[-1]


def demo_csv(data: Path) -> Path:
    return data / "dataset_csv" / "demo.csv"


def edit_csv(data: Path, edit: Callable) -> None:
    """Rewrite the demo dataset CSV: ``edit(frame)`` (all columns as text) returns the new frame."""
    import pandas as pd

    frame = pd.read_csv(demo_csv(data), dtype=str)
    edit(frame).to_csv(demo_csv(data), index=False)


def write_demo_split(data: Path, edit: Callable) -> None:
    """Rewrite split 0: ``edit(train, val, test)`` returns the new three lists."""
    from datasets.splits import Split, write_split

    path, split = demo_split(data)
    train, val, test = edit(list(split.train), list(split.val), list(split.test))
    write_split(path, Split(train, val, test))


def prompt_file(data: Path) -> Path:
    return data / "text_prompt" / "HiVE_MIL" / "curated" / "demo.json"


def bump_first_feature(features, coords):
    """An ``edit_patch_file`` edit: the first feature value + 1 (the file's content changes)."""
    features[0, 0] += 1.0
    return features, coords


def edit_patch_file(path: Path, edit: Callable) -> None:
    """Rewrite a 5x/20x file: ``edit(features, coords)`` returns the new pair."""
    import h5py

    from datasets.features import write_patch_file

    with h5py.File(path, "r") as f:
        feats, coords = f["features"][()], f["coords"][()]
    feats, coords = edit(feats, coords)
    write_patch_file(path, feats, coords)


def write_raw_h5(path: Path, **datasets) -> None:
    import h5py

    path.unlink(missing_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)


# ------------------------------------------------------------------------------------------ hierarchy data
HIER_TASK, HIER_EXT = "fc", "fe"


def make_hier_root(root: Path, n_slides: int = 4, n5: int = 9, dim: int = 16, seed: int = 0):
    """Slides at level0_mag 40: ``n5`` 5x tiles (2048 px) on a grid, each with a random subset of its
    16 20x tiles (512 px); a dataset CSV ``root/fc.csv``. Returns the layout."""
    import numpy as np
    import pandas as pd

    from datasets.features import FeatureLayout, write_patch_file

    layout = FeatureLayout(root, HIER_TASK, HIER_EXT)
    rng = np.random.default_rng(seed)
    rows = []
    side = int(np.ceil(np.sqrt(n5)))
    for i in range(n_slides):
        slide = f"h{i:03d}"
        coords5 = np.array([[(j % side) * 2048, (j // side) * 2048] for j in range(n5)], dtype=np.int64)
        coords20 = []
        for corner in coords5:
            picks = rng.choice(16, size=int(rng.integers(4, 17)), replace=False)
            coords20 += [[corner[0] + (p % 4) * 512, corner[1] + (p // 4) * 512] for p in sorted(picks)]
        coords20 = np.array(coords20, dtype=np.int64)
        write_patch_file(layout.low_file(slide), rng.standard_normal((n5, dim)).astype(np.float32), coords5)
        write_patch_file(
            layout.high_file(slide), rng.standard_normal((len(coords20), dim)).astype(np.float32), coords20
        )
        rows.append((f"c{i:03d}", slide, "A", 40))
    pd.DataFrame(rows, columns=["case_id", "slide_id", "label", "level0_mag"]).to_csv(
        root / "fc.csv", index=False
    )
    return layout


def hier_flags(root: Path, *extra) -> list:
    return [
        "--dataset-root-path", root, "--dataset-name", HIER_TASK, "--feature-extractor-name", HIER_EXT,
        "--csv", root / "fc.csv", *extra,
    ]  # fmt: skip


def hier_inputs(layout) -> list[Path]:
    return [layout.low_dir, layout.high_dir, layout.data_root_dir / "fc.csv"]
