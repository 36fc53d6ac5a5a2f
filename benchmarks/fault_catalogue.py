"""Fault catalogue: bad inputs and faults as careless or unlucky users make them, and what each tool does.

Every case builds its own small workspace in a temporary folder (demo-sized data from
``preprocess/demo.py``, tiny hierarchy sets, synthetic pyramidal TIFFs from ``preprocess/wsi/synthetic.py``,
tiny random towers), damages something (missing, empty, corrupt or truncated files, wrong shapes or
dimensions, NaN/Inf, a wrong ``level0_mag``, duplicate coordinates, leaky splits, unknown slides,
prompt classes that do not match, inputs changed between resumes, a second run into a busy folder,
unwritable outputs, a process killed with SIGKILL and rerun, bad flag values, ...) and runs the tool:
``main.py``, ``create_hierarchical_features.py``, ``check_hierarchical_consistency.py``,
``create_splits.py``, ``extract_features.py``, ``explain.py`` and ``python -m models.convert_checkpoint``.

The entry points run in this process through their ``main(argv)`` wrapped in
:func:`utils.errors.run_cli`, exactly as their ``__main__`` blocks run them (loaded by module name:
this harness drives them the way a user does and builds on none of their code); a case whose point is
a crash, a kill or a second concurrent process starts a subprocess. Each outcome is classified:

* ``clear error before training``: exit code != 0 with ``error:`` line(s) (or one ``failed <slide>:``
  line per bad slide), no traceback, no training started;
* ``late error``: exit code != 0 after a fold started training;
* ``traceback``: an exception escaped, or a traceback was printed;
* ``unclear error``: exit code != 0 without a one-line reason;
* ``warned``: exit code 0 where the case expects a refusal, but a ``warning:`` line names the problem;
* ``silent``: exit code 0 where the case expects a refusal (without a warning), or exit 0 with outputs
  inconsistent with the inputs (each succeeding case checks its outputs);
* ``ok``: a case that should succeed did, with consistent outputs (``--skip-missing``, resumes with
  unchanged inputs, rebuilds of stale files, ...);
* ``false refusal``: a case that should succeed was refused.

Inputs (everything a case reads) are hashed before the command and compared afterwards; a changed
input is reported in the ``inputs`` column. Prints a table (case, tool, expected, outcome, inputs,
first error line or note) and the counts per class.

    python benchmarks/fault_catalogue.py             # every case (several minutes on 2 CPU cores)
    python benchmarks/fault_catalogue.py --quick     # a representative subset
    python benchmarks/fault_catalogue.py --only resume --keep
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLEAR = "clear error before training"
LATE = "late error"
TRACEBACK = "traceback"
UNCLEAR = "unclear error"
WARNED = "warned"
SILENT = "silent"
OK = "ok"
FALSE_REFUSAL = "false refusal"
CLASSES = (CLEAR, LATE, TRACEBACK, UNCLEAR, WARNED, SILENT, OK, FALSE_REFUSAL)
REFUSE, SUCCEED = "refuse", "succeed"

# Entry points by module name (loaded with importlib when first used).
CLIS = {
    "main": "main",
    "hier": "create_hierarchical_features",
    "check": "check_hierarchical_consistency",
    "splits": "create_splits",
    "extract": "extract_features",
    "explain": "explain",
    "convert": "models.convert_checkpoint",
}
TRAINING_STARTED = re.compile(r"^(fold \d+: .*trainable parameters|epoch\s+\d+)", re.MULTILINE)


# ------------------------------------------------------------------------------------------ running
@dataclass
class Result:
    """What one command did."""

    code: int
    out: str = ""
    err: str = ""
    exception: str | None = None  # an exception that escaped run_cli (one line)
    seconds: float = 0.0

    @property
    def trained(self) -> bool:
        return bool(TRAINING_STARTED.search(self.out))

    def error_lines(self) -> list[str]:
        """``error: ...`` lines, ``failed <slide>: ...`` lines (one per bad slide), argparse's
        ``prog: error: ...`` and the consistency checker's ``PROBLEM <slide>: ...`` report lines."""
        lines = [line.strip() for line in self.err.splitlines()]
        found = [
            line
            for line in lines
            if line.startswith(("error:", "failed ")) or re.match(r"^[\w.]+(\.py)?: error: ", line)
        ]
        return found + [line.strip() for line in self.out.splitlines() if line.startswith("PROBLEM ")]


def run_inprocess(tool: str, argv: list[str]) -> Result:
    """``run_cli(<tool>.main, argv)`` with stdout/stderr captured; escaped exceptions are recorded."""
    from utils.errors import run_cli

    module = importlib.import_module(CLIS[tool])
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    exception = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run_cli(module.main, [str(a) for a in argv])
        except SystemExit as stop:  # argparse
            code = stop.code if isinstance(stop.code, int) else 2
        except BaseException as exc:  # noqa: BLE001 - the point is to see what escapes
            code = 1
            frames = traceback.format_exception(exc)
            err.write("".join(frames))
            exception = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200]
    return Result(int(code or 0), out.getvalue(), err.getvalue(), exception, time.perf_counter() - start)


def script_command(tool: str, argv: list[str]) -> list[str]:
    module = CLIS[tool]
    if "." in module:
        return [sys.executable, "-m", module, *map(str, argv)]
    return [sys.executable, str(ROOT / f"{module}.py"), *map(str, argv)]


def run_subprocess(tool: str, argv: list[str], timeout: float = 600) -> Result:
    start = time.perf_counter()
    proc = subprocess.run(
        script_command(tool, argv), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, None, time.perf_counter() - start)


def start_subprocess(tool: str, argv: list[str], log: Path) -> subprocess.Popen:
    """A background run whose stdout and stderr go to ``log``."""
    handle = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed by the child's exit
    return subprocess.Popen(script_command(tool, argv), cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen | None, timeout: float) -> bool:
    """Poll ``predicate`` until true (False when ``proc`` ends first or after ``timeout`` s)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(0.1)
    return False


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a process this harness started, and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


# ------------------------------------------------------------------------------------------ snapshots
def digest_tree(paths: list[Path]) -> dict[str, str]:
    """BLAKE2b of every file under ``paths`` (files or folders)."""
    out = {}
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            out[str(path)] = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    return out


# ------------------------------------------------------------------------------------------ assets
class Assets:
    """Pristine data built once per catalogue run; cases copy what they damage."""

    def __init__(self, work: Path):
        self.work = work
        self._cache: dict[str, object] = {}

    def once(self, key: str, build: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    # demo task (48 slides, 3 classes, features of dim 64, tiny text tower)
    def demo(self) -> Path:
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

    # extraction: synthetic slides and two tiny image towers
    def slides(self) -> dict[str, Path]:
        def build():
            from preprocess.wsi.synthetic import synthetic_image, write_pyramid_tiff

            folder = self.work / "assets" / "slides"
            folder.mkdir(parents=True, exist_ok=True)
            files = {
                "s40": write_pyramid_tiff(
                    folder / "s40.svs", synthetic_image(tile_px=512), objective_power=40
                ),
                "s20": write_pyramid_tiff(folder / "s20.tif", synthetic_image(tile_px=256, seed=1)),
            }
            import numpy as np

            blank = np.full((2048, 2048, 3), 242, dtype=np.uint8)
            files["blank"] = write_pyramid_tiff(folder / "blank.svs", blank, objective_power=20)
            return files

        return self.once("slides", build)

    def image_tower(self, name: str) -> Path:
        def build():
            from models.towers.tiny import save_tiny_hf_clip

            seed = {"a": 0, "b": 1}[name]
            return save_tiny_hf_clip(
                self.work / "assets" / f"image_tower_{name}", image_size=32, projection=24, seed=seed
            )

        return self.once(f"image_tower_{name}", build)


def copy_demo(assets: Assets, target: Path) -> Path:
    shutil.copytree(assets.demo(), target / "demo")
    return target / "demo"


def main_argv(assets: Assets, data: Path, results: Path, *extra) -> list[str]:
    """``main.py`` on a copy of the demo task: 1 fold, 1 epoch."""
    from preprocess.demo import EXTRACTOR, FEATURE_DIM, FEW_SHOT_NUM, PROMPT_LLM, TASK_NAME

    return [
        "--task", TASK_NAME, "--data_root_dir", data / "features", "--csv_dir", data / "dataset_csv",
        "--prompt_dir", data / "text_prompt", "--splits_root", data / "splits", "--LLM", PROMPT_LLM,
        "--text_tower", assets.text_tower(), "--feature_extractor", EXTRACTOR, "--feature_dim", FEATURE_DIM,
        "--few_shot_num", FEW_SHOT_NUM, "--k", "1", "--max_epochs", "1", "--lr", "1e-3",
        "--results_dir", results, *extra,
    ]  # fmt: skip


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
    from datasets.splits import read_split, split_csv_path
    from preprocess.demo import FEW_SHOT_NUM, TASK_NAME

    path = split_csv_path(data / "splits", TASK_NAME, FEW_SHOT_NUM, fold)
    return path, read_split(path)


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


# ------------------------------------------------------------------------------------------ cases
@dataclass
class Ctx:
    """One case's workspace and records."""

    dir: Path
    assets: Assets
    watched: list[Path] = field(default_factory=list)
    before: dict[str, str] = field(default_factory=dict)
    cleanup: list[Callable[[], None]] = field(default_factory=list)  # run after the inputs are compared

    def inputs(self, *paths) -> None:
        """Hash these inputs now (after the case's set-up); compared after the case."""
        self.watched += [Path(p) for p in paths]
        self.before.update(digest_tree([Path(p) for p in paths]))

    def modified(self) -> list[str]:
        after = digest_tree(self.watched)
        return sorted(k for k in set(self.before) | set(after) if self.before.get(k) != after.get(k))


@dataclass
class Case:
    name: str
    tool: str
    expect: str
    run: Callable[[Ctx], Result | tuple[Result, str | None]]
    quick: bool = False


CASES: list[Case] = []


def case(name: str, tool: str, expect: str, quick: bool = False):
    def register(fn):
        CASES.append(Case(name, tool, expect, fn, quick))
        return fn

    return register


def demo_case(ctx: Ctx, damage: Callable[[Path], None] | None = None, *extra) -> Result:
    """Copy the demo task, apply ``damage(data)``, run main.py on it."""
    data = copy_demo(ctx.assets, ctx.dir)
    if damage is not None:
        damage(data)
    ctx.inputs(data, ctx.assets.text_tower())
    return run_inprocess("main", main_argv(ctx.assets, data, ctx.dir / "results", *extra))


def first_train(data: Path) -> str:
    return demo_split(data)[1].train[0]


def first_test(data: Path) -> str:
    return demo_split(data)[1].test[-1]


# --- main.py: feature files
@case("main: feature folder does not exist", "main", REFUSE, quick=True)
def _(ctx):
    return demo_case(ctx, lambda d: shutil.rmtree(d / "features"))


@case("main: 5x file of a training slide missing", "main", REFUSE, quick=True)
def _(ctx):
    return demo_case(ctx, lambda d: demo_layout(d).low_file(first_train(d)).unlink())


@case("main: hierarchical file of a test slide missing", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: demo_layout(d).hier_file(first_test(d)).unlink())


@case("main: --skip_missing with a missing test slide", "main", SUCCEED, quick=True)
def _(ctx):
    missing = {}

    def damage(d):
        missing["slide"] = first_test(d)
        demo_layout(d).hier_file(missing["slide"]).unlink()

    res = demo_case(ctx, damage, "--skip_missing")
    if res.code != 0:
        return res
    preds = (run_dir_of(ctx.dir / "results") / "fold_0" / "predictions_test.csv").read_text()
    return res, ("the skipped slide has a prediction" if missing["slide"] in preds else None)


@case("main: empty (0-byte) 5x file", "main", REFUSE, quick=True)
def _(ctx):
    return demo_case(ctx, lambda d: demo_layout(d).low_file(first_train(d)).write_bytes(b""))


@case("main: corrupt hierarchical file (random bytes)", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: demo_layout(d).hier_file(first_test(d)).write_bytes(os.urandom(4096)))


@case("main: truncated hierarchical file (half of it)", "main", REFUSE, quick=True)
def _(ctx):
    def damage(d):
        path = demo_layout(d).hier_file(first_train(d))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return demo_case(ctx, damage)


@case("main: NaN in a 5x file", "main", REFUSE, quick=True)
def _(ctx):
    def damage(d):
        def nan(f, c):
            f[0, 0] = float("nan")
            return f, c

        edit_patch_file(demo_layout(d).low_file(first_test(d)), nan)

    return demo_case(ctx, damage)


@case("main: Inf in a hierarchical file", "main", REFUSE)
def _(ctx):
    import h5py

    def damage(d):
        with h5py.File(demo_layout(d).hier_file(first_train(d)), "a") as f:
            f["features"][0, 0, 0] = float("inf")

    return demo_case(ctx, damage)


@case("main: --feature_dim that the features do not have", "main", REFUSE, quick=True)
def _(ctx):
    return demo_case(ctx, None, "--feature_dim", "32")


@case("main: one slide's 5x features of another dimension", "main", REFUSE)
def _(ctx):
    return demo_case(
        ctx, lambda d: edit_patch_file(demo_layout(d).low_file(first_test(d)), lambda f, c: (f[:, :32], c))
    )


@case("main: 5x features stored 1-D", "main", REFUSE)
def _(ctx):
    return demo_case(
        ctx,
        lambda d: write_raw_h5(demo_layout(d).low_file(first_train(d)), features=[1.0, 2.0], coords=[[0, 0]]),
    )


@case("main: empty bag (0 patches)", "main", REFUSE)
def _(ctx):
    import numpy as np

    return demo_case(
        ctx,
        lambda d: write_raw_h5(
            demo_layout(d).low_file(first_train(d)),
            features=np.zeros((0, 64), np.float32),
            coords=np.zeros((0, 2), np.int64),
        ),
    )


@case("main: 5x file without 'coords'", "main", REFUSE)
def _(ctx):
    import numpy as np

    return demo_case(
        ctx,
        lambda d: write_raw_h5(
            demo_layout(d).low_file(first_train(d)), features=np.ones((3, 64), np.float32)
        ),
    )


@case("main: 5x file changed after the hierarchy was built (stale)", "main", REFUSE, quick=True)
def _(ctx):
    def bump(f, c):
        f[0, 0] += 1.0
        return f, c

    return demo_case(ctx, lambda d: edit_patch_file(demo_layout(d).low_file(first_train(d)), bump))


@case("main: hierarchy built with level0_mag 20 for 40x data (forced)", "main", REFUSE, quick=True)
def _(ctx):
    from preprocess.hierarchy import build_slide_hierarchy

    def damage(d):
        import pandas as pd

        frame = pd.read_csv(_csv(d))
        at40 = set(frame.slide_id[frame.level0_mag == 40])
        slide = next(s for s in demo_split(d)[1].train if s in at40)
        build_slide_hierarchy(demo_layout(d), slide, 20, overwrite=True)  # the library call has no threshold

    return demo_case(ctx, damage)


# --- main.py: dataset CSV, splits, prompts
def _csv(d: Path) -> Path:
    return d / "dataset_csv" / "demo.csv"


def _edit_csv(d: Path, edit: Callable) -> None:
    import pandas as pd

    frame = pd.read_csv(_csv(d), dtype=str)
    edit(frame).to_csv(_csv(d), index=False)


def _write_split(d: Path, edit: Callable) -> None:
    from datasets.splits import Split, write_split

    path, split = demo_split(d)
    train, val, test = edit(list(split.train), list(split.val), list(split.test))
    write_split(path, Split(train, val, test))


@case("main: a slide in both train and test", "main", REFUSE, quick=True)
def _(ctx):
    return demo_case(ctx, lambda d: _write_split(d, lambda tr, va, te: (tr, va, te + [tr[0]])))


@case("main: two slides of one patient in train and test", "main", REFUSE)
def _(ctx):
    def damage(d):
        import pandas as pd

        frame = pd.read_csv(_csv(d), dtype=str)
        _, split = demo_split(d)
        a, b = split.train[0], split.test[0]
        case_of_a = frame.loc[frame.slide_id == a, "case_id"].iloc[0]
        _edit_csv(d, lambda f: f.assign(case_id=f.case_id.where(f.slide_id != b, case_of_a)))

    return demo_case(ctx, damage)


@case("main: split names a slide not in the dataset CSV", "main", REFUSE, quick=True)
def _(ctx):
    return demo_case(ctx, lambda d: _write_split(d, lambda tr, va, te: (tr, va, te + ["no_such_slide"])))


@case("main: split file missing", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: demo_split(d)[0].unlink())


@case("main: split file empty", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: demo_split(d)[0].write_text(""))


@case("main: split file with a wrong header", "main", REFUSE)
def _(ctx):
    def damage(d):
        path = demo_split(d)[0]
        lines = path.read_text().splitlines()
        path.write_text("\n".join([",training,validation,testing", *lines[1:]]) + "\n")

    return demo_case(ctx, damage)


@case("main: a class has no training slide", "main", REFUSE)
def _(ctx):
    import pandas as pd

    def damage(d):
        frame = pd.read_csv(_csv(d), dtype=str)
        solid = set(frame.slide_id[frame.label == "solid"])
        _write_split(d, lambda tr, va, te: ([s for s in tr if s not in solid], va, te))

    return demo_case(ctx, damage)


@case("main: dataset CSV without level0_mag column", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: _edit_csv(d, lambda f: f.drop(columns=["level0_mag"])))


@case("main: dataset CSV lists a slide twice", "main", REFUSE, quick=True)
def _(ctx):
    import pandas as pd

    return demo_case(ctx, lambda d: _edit_csv(d, lambda f: pd.concat([f, f.iloc[:1]])))


@case("main: dataset CSV with a label not in the task", "main", REFUSE)
def _(ctx):
    return demo_case(
        ctx, lambda d: _edit_csv(d, lambda f: f.assign(label=f.label.where(f.index != 0, "squamous")))
    )


@case("main: dataset CSV with an empty label cell", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: _edit_csv(d, lambda f: f.assign(label=f.label.where(f.index != 3, ""))))


@case("main: level0_mag 30 in the dataset CSV", "main", REFUSE)
def _(ctx):
    return demo_case(
        ctx, lambda d: _edit_csv(d, lambda f: f.assign(level0_mag=f.level0_mag.where(f.index != 0, "30")))
    )


def _prompt_file(d: Path) -> Path:
    return d / "text_prompt" / "HiVE_MIL" / "curated" / "demo.json"


def _edit_prompts(d: Path, edit: Callable) -> None:
    path = _prompt_file(d)
    path.write_text(json.dumps(edit(json.loads(path.read_text())), indent=1))


@case("main: prompt file lacks a class", "main", REFUSE, quick=True)
def _(ctx):
    return demo_case(
        ctx, lambda d: _edit_prompts(d, lambda p: {k: v for k, v in p.items() if k != "papillary"})
    )


@case("main: prompt file with an extra class", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: _edit_prompts(d, lambda p: {**p, "mucinous": p["solid"]}))


@case("main: prompt file is not valid JSON", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, lambda d: _prompt_file(d).write_text('{"solid": {'))


@case("main: prompt file with 3 coarse entries for a class", "main", REFUSE)
def _(ctx):
    def drop(p):
        entries = list(p["solid"].items())
        p["solid"] = dict(entries[1:])
        return p

    return demo_case(ctx, lambda d: _edit_prompts(d, drop))


@case("main: --text_tower folder does not exist", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, None, "--text_tower", ctx.dir / "no_tower")


@case("main: --text_tower folder with a corrupt config.json", "main", REFUSE)
def _(ctx):
    tower = shutil.copytree(ctx.assets.text_tower(), ctx.dir / "tower")
    (tower / "config.json").write_text("{ not json")
    return demo_case(ctx, None, "--text_tower", tower)


# --- main.py: flags and outputs
for _flag, _value in (
    ("--lr", "-1"),
    ("--max_epochs", "0"),
    ("--k", "0"),
    ("--few_shot_num", "0"),
    ("--max_orphan_frac", "2"),
    ("--label_frac", "0"),
    ("--device", "cuda:7"),
    ("--num_workers", "-1"),
    ("--lr", "abc"),
):

    def _bad_flag(ctx, flag=_flag, value=_value):
        return demo_case(ctx, None, flag, value)

    case(f"main: bad flag {_flag} {_value}", "main", REFUSE, quick=_flag == "--lr" and _value == "-1")(
        _bad_flag
    )


@case("main: --k_start after --k_end", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, None, "--k", "3", "--k_start", "2", "--k_end", "1")


@case("main: unknown --task", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, None, "--task", "tcga_unknown")


@case("main: unknown --model_type", "main", REFUSE)
def _(ctx):
    return demo_case(ctx, None, "--model_type", "HiVE_MILL")


@case("main: --results_dir under a file", "main", REFUSE, quick=True)
def _(ctx):
    (ctx.dir / "a_file").write_text("x")
    data = copy_demo(ctx.assets, ctx.dir)
    ctx.inputs(data)
    return run_inprocess("main", main_argv(ctx.assets, data, ctx.dir / "a_file" / "results"))


@case("main: second run into a folder a running run holds", "main", REFUSE)
def _(ctx):
    data = copy_demo(ctx.assets, ctx.dir)
    argv = main_argv(ctx.assets, data, ctx.dir / "results", "--max_epochs", "50")
    proc = start_subprocess("main", argv, ctx.dir / "first.log")
    try:
        started = wait_for(lambda: "epoch" in (ctx.dir / "first.log").read_text(), proc, 300)
        if not started:
            return Result(
                1, err=f"set-up: the first run did not start:\n{(ctx.dir / 'first.log').read_text()[-500:]}"
            )
        ctx.inputs(data)
        return run_inprocess("main", argv)
    finally:
        kill(proc)


@case("main: run killed (SIGKILL) after its first fold, then rerun", "main", SUCCEED)
def _(ctx):
    data = copy_demo(ctx.assets, ctx.dir)
    ctx.inputs(data)
    argv = main_argv(ctx.assets, data, ctx.dir / "results", "--k", "2", "--max_epochs", "2")
    proc = start_subprocess("main", argv, ctx.dir / "first.log")
    try:
        done = wait_for(lambda: any((ctx.dir / "results").rglob("fold_0/metrics.json")), proc, 600)
    finally:
        kill(proc)
    if not done:
        return Result(1, err=f"set-up: fold 0 never finished:\n{(ctx.dir / 'first.log').read_text()[-500:]}")
    res = run_inprocess("main", argv)
    if res.code != 0:
        return res
    run = run_dir_of(ctx.dir / "results")
    summary = (run / "summary.csv").read_text().strip().splitlines()
    problem = None
    if len(summary) != 3:
        problem = f"summary.csv has {len(summary) - 1} folds, expected 2"
    elif "fold 0: finished in an earlier run" not in res.out + (run / "log.txt").read_text():
        problem = "fold 0 was not reused"
    return res, problem


# --- main.py: resume chain (one workspace, inputs changed between runs)
class ResumeChain:
    """One trained run; the resume cases below change its inputs in turn."""

    def __init__(self, assets: Assets):
        self.assets = assets
        self.root = assets.work / "resume"
        self.data = copy_demo(assets, self.root)
        self.results = self.root / "results"
        first = run_inprocess("main", self.argv())
        if first.code != 0:
            raise RuntimeError(f"resume chain: first run failed:\n{first.err[-2000:]}")

    def argv(self, *extra) -> list:
        return main_argv(self.assets, self.data, self.results, *extra)

    @property
    def run_dir(self) -> Path:
        return run_dir_of(self.results)


def chain(ctx: Ctx) -> ResumeChain:
    return ctx.assets.once("resume_chain", lambda: ResumeChain(ctx.assets))


def _log_since(path: Path, offset: int) -> str:
    return path.read_text()[offset:]


@case("resume: same command, unchanged inputs", "main", SUCCEED, quick=True)
def _(ctx):
    ch = chain(ctx)
    ckpt = ch.run_dir / "s_0_checkpoint.pt"
    stamp, log_at = ckpt.stat().st_mtime_ns, len((ch.run_dir / "log.txt").read_text())
    ctx.inputs(ch.data)
    res = run_inprocess("main", ch.argv())
    reused = "finished in an earlier run with the same inputs" in _log_since(ch.run_dir / "log.txt", log_at)
    problem = None if reused and ckpt.stat().st_mtime_ns == stamp else "fold 0 was trained again"
    return res, problem


@case("resume: another --lr without --overwrite", "main", REFUSE)
def _(ctx):
    ch = chain(ctx)
    ctx.inputs(ch.data)
    return run_inprocess("main", ch.argv("--lr", "0.5"))


@case("resume: a split file changed", "main", SUCCEED)
def _(ctx):
    ch = chain(ctx)
    _write_split(ch.data, lambda tr, va, te: (tr, va, te[:-1]))
    log_at = len((ch.run_dir / "log.txt").read_text())
    ctx.inputs(ch.data)
    res = run_inprocess("main", ch.argv())
    redone = "inputs changed since it finished" in _log_since(ch.run_dir / "log.txt", log_at)
    return res, None if redone else "fold 0 was reused although its split changed"


@case("resume: a 5x file changed (hierarchy now stale)", "main", REFUSE)
def _(ctx):
    ch = chain(ctx)
    slide = demo_split(ch.data)[1].train[1]

    def bump(f, c):
        f[0, 0] += 1.0
        return f, c

    edit_patch_file(demo_layout(ch.data).low_file(slide), bump)
    ctx.inputs(ch.data)
    return run_inprocess("main", ch.argv())


@case("resume: stale hierarchy rebuilt, then resumed", "main", SUCCEED)
def _(ctx):
    ch = chain(ctx)
    from preprocess.demo import EXTRACTOR, TASK_NAME

    rebuild = run_inprocess(
        "hier",
        [
            "--dataset-root-path", ch.data / "features", "--dataset-name", TASK_NAME,
            "--feature-extractor-name", EXTRACTOR, "--csv", _csv(ch.data),
        ],
    )  # fmt: skip
    if rebuild.code != 0 or "1 rebuilt" not in rebuild.out:
        return rebuild, f"set-up: the rebuild did not rebuild exactly one slide ({rebuild.out[-200:]})"
    log_at = len((ch.run_dir / "log.txt").read_text())
    ctx.inputs(ch.data)
    res = run_inprocess("main", ch.argv())
    redone = "feature files of 1 slide(s)" in _log_since(ch.run_dir / "log.txt", log_at)
    return res, None if redone else "fold 0 was reused although a slide's features changed"


@case("resume: a fold's checkpoint deleted", "main", SUCCEED)
def _(ctx):
    ch = chain(ctx)
    (ch.run_dir / "s_0_checkpoint.pt").unlink()
    ctx.inputs(ch.data)
    res = run_inprocess("main", ch.argv())
    return res, None if (ch.run_dir / "s_0_checkpoint.pt").is_file() else "checkpoint not written again"


@case("resume: a fold's metrics.json corrupt", "main", SUCCEED)
def _(ctx):
    ch = chain(ctx)
    (ch.run_dir / "fold_0" / "metrics.json").write_text("{ truncated")
    ctx.inputs(ch.data)
    res = run_inprocess("main", ch.argv())
    try:
        json.loads((ch.run_dir / "fold_0" / "metrics.json").read_text())
        problem = None
    except ValueError:
        problem = "metrics.json still corrupt"
    return res, problem


# --- explain.py
def explain_case(ctx: Ctx, prepare: Callable[[Path, Path], list] | None = None) -> Result:
    data, run = ctx.assets.trained_run()
    slide = demo_split(data)[1].test[0]
    argv = ["--checkpoint", run, "--slide", slide, "--out", ctx.dir / "explained"]
    if prepare is not None:
        argv = prepare(run, data) or argv
    ctx.inputs(data, run)
    return run_inprocess("explain", argv)


@case("explain: valid run and slide", "explain", SUCCEED, quick=True)
def _(ctx):
    res = explain_case(ctx)
    made = (
        sorted(p.name for p in (ctx.dir / "explained").glob("*")) if (ctx.dir / "explained").is_dir() else []
    )
    return res, None if "explanation.json" in made and "heatmap_5x.png" in made else f"outputs: {made}"


@case("explain: run folder does not exist", "explain", REFUSE)
def _(ctx):
    return explain_case(ctx, lambda run, data: ["--checkpoint", ctx.dir / "nope", "--slide", "x"])


@case("explain: slide not in the run's task", "explain", REFUSE, quick=True)
def _(ctx):
    return explain_case(ctx, lambda run, data: ["--checkpoint", run, "--slide", "no_such_slide"])


@case("explain: corrupt checkpoint file", "explain", REFUSE)
def _(ctx):
    def prepare(run, data):
        copy = shutil.copytree(run, ctx.dir / "run")
        (copy / "s_0_checkpoint.pt").write_bytes(os.urandom(2048))
        return ["--checkpoint", copy, "--slide", demo_split(data)[1].test[0], "--out", ctx.dir / "o"]

    return explain_case(ctx, prepare)


@case("explain: checkpoint with a tensor of the wrong shape", "explain", REFUSE)
def _(ctx):
    import torch

    def prepare(run, data):
        copy = shutil.copytree(run, ctx.dir / "run")
        path = copy / "s_0_checkpoint.pt"
        obj = torch.load(path, map_location="cpu", weights_only=True)
        state = obj["state_dict"] if isinstance(obj, dict) and "state_dict" in obj else obj
        key = next(k for k in state if k.endswith("ctx"))
        state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
        torch.save(obj, path)
        return ["--checkpoint", copy, "--slide", demo_split(data)[1].test[0], "--out", ctx.dir / "o"]

    return explain_case(ctx, prepare)


@case("explain: --fold without a checkpoint", "explain", REFUSE)
def _(ctx):
    return explain_case(
        ctx, lambda run, data: ["--checkpoint", run, "--slide", demo_split(data)[1].test[0], "--fold", "3"]
    )


@case("explain: --top 0", "explain", REFUSE)
def _(ctx):
    return explain_case(
        ctx, lambda run, data: ["--checkpoint", run, "--slide", demo_split(data)[1].test[0], "--top", "0"]
    )


@case("explain: --out is a file", "explain", REFUSE)
def _(ctx):
    (ctx.dir / "a_file").write_text("x")
    return explain_case(
        ctx,
        lambda run, data: [
            "--checkpoint",
            run,
            "--slide",
            demo_split(data)[1].test[0],
            "--out",
            ctx.dir / "a_file",
        ],
    )


@case("explain: the slide's features changed since training (stale hierarchy)", "explain", REFUSE)
def _(ctx):
    def prepare(run, data):
        slide = demo_split(data)[1].test[0]
        path = demo_layout(data).low_file(slide)
        backup = shutil.copyfile(path, ctx.dir / "backup.h5")
        ctx.cleanup.append(lambda: shutil.copyfile(backup, path))  # the shared run's data stays pristine

        def bump(f, c):
            f[0, 0] += 1.0
            return f, c

        edit_patch_file(path, bump)
        return ["--checkpoint", run, "--slide", slide, "--out", ctx.dir / "o"]

    return explain_case(ctx, prepare)


# --- models/convert_checkpoint.py
def convert_case(ctx: Ctx, make_src: Callable[[], Path], dst: Path | None = None) -> Result:
    src = make_src()
    if src.exists():
        ctx.inputs(src)
    return run_inprocess("convert", [src, dst if dst is not None else ctx.dir / "out.pt"])


@case("convert: released-format checkpoint", "convert", SUCCEED, quick=True)
def _(ctx):
    import torch

    from models.checkpoint import ours_to_released, read_checkpoint

    def make():
        _, run = ctx.assets.trained_run()
        state, _ = read_checkpoint(run / "s_0_checkpoint.pt")
        path = ctx.dir / "released.pt"
        torch.save({**ours_to_released(state), "custom_vlm.logit_scale": torch.tensor(4.6)}, path)
        return path

    res = convert_case(ctx, make)
    if res.code != 0:
        return res
    state, _ = read_checkpoint(ctx.dir / "out.pt")
    original, _ = read_checkpoint(ctx.assets.trained_run()[1] / "s_0_checkpoint.pt")
    same = state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in state)
    return res, None if same else "converted tensors differ from the originals"


@case("convert: input file missing", "convert", REFUSE)
def _(ctx):
    return convert_case(ctx, lambda: ctx.dir / "missing.pt")


@case("convert: input is garbage", "convert", REFUSE, quick=True)
def _(ctx):
    def make():
        path = ctx.dir / "garbage.pt"
        path.write_bytes(os.urandom(1000))
        return path

    return convert_case(ctx, make)


@case("convert: input is a checkpoint of another model", "convert", REFUSE)
def _(ctx):
    import torch

    def make():
        path = ctx.dir / "abmil.pt"
        torch.save({"attention.weight": torch.zeros(4, 4), "classifier.bias": torch.zeros(2)}, path)
        return path

    return convert_case(ctx, make)


@case("convert: output is the input", "convert", REFUSE)
def _(ctx):
    src = shutil.copyfile(ctx.assets.trained_run()[1] / "s_0_checkpoint.pt", ctx.dir / "in.pt")
    return convert_case(ctx, lambda: Path(src), dst=Path(src))


@case("convert: output folder is a file", "convert", REFUSE)
def _(ctx):
    (ctx.dir / "a_file").write_text("x")
    src = shutil.copyfile(ctx.assets.trained_run()[1] / "s_0_checkpoint.pt", ctx.dir / "in.pt")
    return convert_case(ctx, lambda: Path(src), dst=ctx.dir / "a_file" / "out.pt")


# --- create_hierarchical_features.py
def hier_case(ctx: Ctx, damage: Callable | None = None, *extra, n_slides: int = 4) -> Result:
    layout = make_hier_root(ctx.dir, n_slides=n_slides)
    if damage is not None:
        damage(layout)
    ctx.inputs(*hier_inputs(layout))
    return run_inprocess("hier", hier_flags(ctx.dir, *extra))


@case("hierarchy: 5x folder missing", "hier", REFUSE)
def _(ctx):
    return hier_case(ctx, lambda lay: shutil.rmtree(lay.low_dir))


@case("hierarchy: 20x folder missing", "hier", REFUSE)
def _(ctx):
    return hier_case(ctx, lambda lay: shutil.rmtree(lay.high_dir))


@case("hierarchy: no .h5 files in the 5x folder", "hier", REFUSE)
def _(ctx):
    def damage(lay):
        for p in lay.low_dir.glob("*.h5"):
            p.unlink()

    return hier_case(ctx, damage)


@case("hierarchy: corrupt 20x file", "hier", REFUSE, quick=True)
def _(ctx):
    return hier_case(ctx, lambda lay: lay.high_file("h001").write_bytes(os.urandom(3000)))


@case("hierarchy: NaN in a 20x file", "hier", REFUSE)
def _(ctx):
    def nan(f, c):
        f[3, 1] = float("nan")
        return f, c

    return hier_case(ctx, lambda lay: edit_patch_file(lay.high_file("h002"), nan))


@case("hierarchy: 5x and 20x feature dims differ", "hier", REFUSE)
def _(ctx):
    return hier_case(ctx, lambda lay: edit_patch_file(lay.high_file("h000"), lambda f, c: (f[:, :8], c)))


@case("hierarchy: duplicate coordinate in a 20x file", "hier", REFUSE, quick=True)
def _(ctx):
    def dup(f, c):
        c[5] = c[4]
        return f, c

    return hier_case(ctx, lambda lay: edit_patch_file(lay.high_file("h003"), dup))


@case("hierarchy: CSV declares 40x slides as 20x", "hier", REFUSE, quick=True)
def _(ctx):
    import pandas as pd

    def damage(lay):
        frame = pd.read_csv(ctx.dir / "fc.csv")
        frame.loc[frame.slide_id == "h001", "level0_mag"] = 20
        frame.to_csv(ctx.dir / "fc.csv", index=False)

    return hier_case(ctx, damage)


for _flags in (
    ("--max-patches", "0"),
    ("--max-patches", "-2"),
    ("--workers", "0"),
    ("--level0-mag", "30"),
    ("--low-mag", "20", "--high-mag", "5"),
    ("--low-mag", "5y"),
    ("--max-orphan-frac", "1.5"),
    ("--link-rule", "closest"),
):

    def _bad_hier_flag(ctx, flags=_flags):
        return hier_case(ctx, None, *flags)

    case(f"hierarchy: bad flag {' '.join(_flags)}", "hier", REFUSE, quick=_flags[1] == "0")(_bad_hier_flag)


@case("hierarchy: --csv does not exist", "hier", REFUSE)
def _(ctx):
    return hier_case(ctx, lambda lay: (ctx.dir / "fc.csv").unlink())


@case("hierarchy: --csv with level0_mag 30", "hier", REFUSE)
def _(ctx):
    return hier_case(
        ctx, lambda lay: (ctx.dir / "fc.csv").write_text("case_id,slide_id,label,level0_mag\nc,h000,A,30\n")
    )


@case("hierarchy: output folder is a file", "hier", REFUSE)
def _(ctx):
    def damage(lay):
        lay.hier_dir.parent.mkdir(parents=True, exist_ok=True)
        lay.hier_dir.write_text("not a folder")

    return hier_case(ctx, damage)


@case("hierarchy: rerun with unchanged inputs", "hier", SUCCEED, quick=True)
def _(ctx):
    layout = make_hier_root(ctx.dir)
    run_inprocess("hier", hier_flags(ctx.dir))
    before = digest_tree([layout.hier_dir])
    ctx.inputs(*hier_inputs(layout))
    res = run_inprocess("hier", hier_flags(ctx.dir))
    same = digest_tree([layout.hier_dir]) == before and "0 done, 4 skipped" in res.out
    return res, None if same else "outputs rewritten"


@case("hierarchy: rerun after a 5x file changed (stale output)", "hier", SUCCEED, quick=True)
def _(ctx):
    from datasets.slide_check import hierarchy_staleness

    layout = make_hier_root(ctx.dir)
    run_inprocess("hier", hier_flags(ctx.dir))

    def bump(f, c):
        f[0, 0] += 1.0
        return f, c

    edit_patch_file(layout.low_file("h002"), bump)
    ctx.inputs(*hier_inputs(layout))
    res = run_inprocess("hier", hier_flags(ctx.dir))
    stale = [s for s in ("h000", "h001", "h002", "h003") if hierarchy_staleness(layout, s)]
    problem = None if not stale and "1 rebuilt (stale: 1)" in res.out else f"stale after the rerun: {stale}"
    return res, problem


@case("hierarchy: killed (SIGKILL) mid-run, then rerun", "hier", SUCCEED)
def _(ctx):
    layout = make_hier_root(ctx.dir, n_slides=150, n5=64, dim=32)
    ctx.inputs(*hier_inputs(layout))
    proc = start_subprocess("hier", hier_flags(ctx.dir), ctx.dir / "first.log")
    try:
        wait_for(lambda: len(list(layout.hier_dir.glob("*.h5"))) >= 20, proc, 300)
    finally:
        kill(proc)
    built = len(list(layout.hier_dir.glob("*.h5")))
    res = run_inprocess("hier", hier_flags(ctx.dir))
    if res.code != 0:
        return res
    check = run_inprocess("check", hier_flags(ctx.dir))
    note = f"killed after {built} of 150 slides"
    return res, None if check.code == 0 else f"{note}; checker: {check.out.splitlines()[-3:]}"


# --- check_hierarchical_consistency.py
def built_hier(ctx: Ctx):
    layout = make_hier_root(ctx.dir)
    res = run_inprocess("hier", hier_flags(ctx.dir))
    if res.code != 0:
        raise RuntimeError(res.err)
    return layout


@case("checker: consistent files", "check", SUCCEED)
def _(ctx):
    layout = built_hier(ctx)
    ctx.inputs(*hier_inputs(layout), layout.hier_dir)
    return run_inprocess("check", hier_flags(ctx.dir))


@case("checker: stale hierarchical file", "check", REFUSE, quick=True)
def _(ctx):
    layout = built_hier(ctx)

    def bump(f, c):
        f[0, 0] += 1.0
        return f, c

    edit_patch_file(layout.low_file("h000"), bump)
    ctx.inputs(*hier_inputs(layout), layout.hier_dir)
    return run_inprocess("check", hier_flags(ctx.dir))


@case("checker: a child moved outside its parent", "check", REFUSE)
def _(ctx):
    import h5py

    layout = built_hier(ctx)
    with h5py.File(layout.hier_file("h001"), "a") as f:
        f["coords"][0, 0] = [900000, 900000]
    ctx.inputs(*hier_inputs(layout), layout.hier_dir)
    return run_inprocess("check", hier_flags(ctx.dir))


@case("checker: CSV declares 40x slides as 20x", "check", REFUSE, quick=True)
def _(ctx):
    layout = built_hier(ctx)
    (ctx.dir / "fc.csv").write_text(
        "case_id,slide_id,label,level0_mag\n" + "".join(f"c{i},h{i:03d},A,20\n" for i in range(4))
    )
    ctx.inputs(*hier_inputs(layout), layout.hier_dir)
    return run_inprocess("check", hier_flags(ctx.dir))


@case("checker: --fix on a damaged file keeps the original", "check", SUCCEED)
def _(ctx):
    import h5py

    layout = built_hier(ctx)
    with h5py.File(layout.hier_file("h002"), "a") as f:
        f["features"][0, 0, 0] += 1.0
    ctx.inputs(*hier_inputs(layout), layout.hier_dir)
    res = run_inprocess("check", hier_flags(ctx.dir, "--fix"))
    fixed = layout.hier_dir.with_name(layout.hier_dir.name + "_fixed") / "h002.h5"
    return res, None if fixed.is_file() else "no fixed copy"


@case("checker: 5x folder missing", "check", REFUSE)
def _(ctx):
    layout = built_hier(ctx)
    shutil.rmtree(layout.low_dir)
    ctx.inputs(layout.high_dir, layout.hier_dir)
    return run_inprocess("check", hier_flags(ctx.dir))


# --- create_splits.py
def splits_case(
    ctx: Ctx, rows: list[tuple], *extra, task: str = "my_task", csv: Path | None = None
) -> Result:
    import pandas as pd

    path = csv or ctx.dir / "table.csv"
    if csv is None:
        pd.DataFrame(rows, columns=["case_id", "slide_id", "label", "level0_mag"]).to_csv(path, index=False)
    if path.exists():
        ctx.inputs(path)
    argv = ["--task", task, "--csv", path, "--splits_root", ctx.dir / "splits", *extra]
    return run_inprocess("splits", argv)


def _rows(n: int = 20, labels=("A", "B")) -> list[tuple]:
    return [(f"p{i}", f"s{i}", labels[i % len(labels)], 40) for i in range(n)]


@case("splits: task outside the project, --csv", "splits", SUCCEED, quick=True)
def _(ctx):
    res = splits_case(ctx, _rows(), "--few_shot_num", "2", "--k", "2")
    files = sorted((ctx.dir / "splits").rglob("splits_*.csv"))
    return res, None if len(files) == 2 else f"{len(files)} split files"


@case("splits: --few_shot_num larger than a class", "splits", REFUSE)
def _(ctx):
    return splits_case(ctx, _rows(), "--few_shot_num", "50")


@case("splits: --k 0", "splits", REFUSE)
def _(ctx):
    return splits_case(ctx, _rows(), "--few_shot_num", "2", "--k", "0")


@case("splits: --val_frac + --test_frac > 1", "splits", REFUSE)
def _(ctx):
    return splits_case(ctx, _rows(), "--few_shot_num", "2", "--val_frac", "0.8", "--test_frac", "0.5")


@case("splits: existing splits without --overwrite", "splits", REFUSE)
def _(ctx):
    splits_case(ctx, _rows(), "--few_shot_num", "2", "--k", "2")
    ctx.inputs(ctx.dir / "splits")
    return splits_case(ctx, _rows(), "--few_shot_num", "2", "--k", "2")


@case("splits: --csv missing", "splits", REFUSE)
def _(ctx):
    return splits_case(ctx, [], "--few_shot_num", "2", csv=ctx.dir / "missing.csv")


@case("splits: built-in task, CSV with a foreign label", "splits", REFUSE)
def _(ctx):
    return splits_case(ctx, _rows(labels=("IDC", "LUAD")), "--few_shot_num", "2", task="tcga_brca")


@case("splits: --splits_root is a file", "splits", REFUSE)
def _(ctx):
    (ctx.dir / "splits").write_text("x")
    return splits_case(ctx, _rows(), "--few_shot_num", "2")


# --- extract_features.py
def extract_argv(ctx: Ctx, slides, *extra, tower: str = "a", data_root: Path | None = None) -> list:
    return [
        "--slides", slides, "--data-root", data_root or ctx.dir / "R", "--task", "fx",
        "--feature-extractor", "plip", "--weights", ctx.assets.image_tower(tower), "--batch-size", "16",
        "--workers", "0", "--device", "cpu", *extra,
    ]  # fmt: skip


def slide_folder(ctx: Ctx, *names: str) -> Path:
    folder = ctx.dir / "slides"
    folder.mkdir(exist_ok=True)
    for name in names:
        src = ctx.assets.slides()[name]
        shutil.copyfile(src, folder / src.name)
    return folder


def extract_case(ctx: Ctx, names=("s40",), *extra, tower: str = "a") -> Result:
    folder = slide_folder(ctx, *names)
    ctx.inputs(folder)
    return run_inprocess("extract", extract_argv(ctx, folder, *extra, tower=tower))


@case("extract: --slides folder does not exist", "extract", REFUSE)
def _(ctx):
    return run_inprocess("extract", extract_argv(ctx, ctx.dir / "nope"))


@case("extract: a corrupt slide among good ones", "extract", REFUSE, quick=True)
def _(ctx):
    folder = slide_folder(ctx, "s40")
    (folder / "broken.svs").write_bytes(b"II*\x00" + os.urandom(2000))
    ctx.inputs(folder)
    return run_inprocess("extract", extract_argv(ctx, folder))


@case("extract: slide without magnification, no --level0-mag", "extract", REFUSE)
def _(ctx):
    return extract_case(ctx, ("s20",))


@case("extract: slide without tissue", "extract", REFUSE)
def _(ctx):
    return extract_case(ctx, ("blank",))


@case("extract: --weights folder does not exist", "extract", REFUSE)
def _(ctx):
    folder = slide_folder(ctx, "s40")
    ctx.inputs(folder)
    argv = extract_argv(ctx, folder)
    argv[argv.index("--weights") + 1] = ctx.dir / "no_tower"
    return run_inprocess("extract", argv)


for _flags in (("--batch-size", "0"), ("--min-tissue", "0"), ("--workers", "-1"), ("--limit", "0")):

    def _bad_extract_flag(ctx, flags=_flags):
        return extract_case(ctx, ("s40",), *flags)

    case(f"extract: bad flag {' '.join(_flags)}", "extract", REFUSE, quick=_flags[0] == "--batch-size")(
        _bad_extract_flag
    )


@case("extract: --data-root is a file", "extract", REFUSE)
def _(ctx):
    (ctx.dir / "a_file").write_text("x")
    folder = slide_folder(ctx, "s40")
    ctx.inputs(folder)
    return run_inprocess("extract", extract_argv(ctx, folder, data_root=ctx.dir / "a_file"))


@case("extract: CSV names a slide that is not there", "extract", REFUSE)
def _(ctx):
    folder = slide_folder(ctx, "s40")
    csv = ctx.dir / "slides.csv"
    csv.write_text("case_id,slide_id,label,level0_mag\np,s40,A,40\nq,ghost,A,40\n")
    ctx.inputs(folder, csv)
    return run_inprocess("extract", extract_argv(ctx, csv, "--slide-dir", folder))


@case("extract: rerun with the same encoder", "extract", SUCCEED, quick=True)
def _(ctx):
    folder = slide_folder(ctx, "s40")
    first = run_inprocess("extract", extract_argv(ctx, folder))
    if first.code != 0:
        return first, "set-up: first extraction failed"
    before = digest_tree([ctx.dir / "R"])
    ctx.inputs(folder)
    res = run_inprocess("extract", extract_argv(ctx, folder))
    return res, None if digest_tree([ctx.dir / "R"]) == before else "outputs rewritten"


@case("extract: rerun with another encoder over finished slides", "extract", REFUSE, quick=True)
def _(ctx):
    folder = slide_folder(ctx, "s40")
    first = run_inprocess("extract", extract_argv(ctx, folder))
    if first.code != 0:
        return first, "set-up: first extraction failed"
    ctx.inputs(folder)
    return run_inprocess("extract", extract_argv(ctx, folder, tower="b"))


@case("extract: another encoder adds a slide next to finished ones", "extract", REFUSE)
def _(ctx):
    folder = slide_folder(ctx, "s40")
    first = run_inprocess("extract", extract_argv(ctx, folder))
    if first.code != 0:
        return first, "set-up: first extraction failed"
    shutil.copyfile(ctx.assets.slides()["s40"], folder / "s40b.svs")
    ctx.inputs(folder)
    return run_inprocess("extract", extract_argv(ctx, folder, tower="b"))


@case("extract: killed (SIGKILL) mid-run, then rerun", "extract", SUCCEED)
def _(ctx):
    from preprocess.wsi.synthetic import synthetic_image, write_pyramid_tiff

    folder = ctx.dir / "slides"
    folder.mkdir()
    for i in range(8):
        write_pyramid_tiff(
            folder / f"k{i}.svs", synthetic_image(tile_px=512, repeat=2, seed=i), objective_power=40
        )
    ctx.inputs(folder)
    argv = extract_argv(ctx, folder)
    layout_root = ctx.dir / "R" / "fx_plip"
    proc = start_subprocess("extract", argv, ctx.dir / "first.log")
    try:
        wait_for(lambda: len(list((layout_root / "plip_5x").glob("*.h5"))) >= 2, proc, 300)
    finally:
        kill(proc)
    killed_after = len(list((layout_root / "plip_5x").glob("*.h5")))
    res = run_inprocess("extract", argv)
    if res.code != 0:
        return res
    import h5py

    counts = []
    for i in range(8):
        with (
            h5py.File(layout_root / "plip_5x" / f"k{i}.h5", "r") as f5,
            h5py.File(layout_root / "plip_20x" / f"k{i}.h5", "r") as f20,
        ):
            counts.append((f5["features"].shape[0], f20["features"].shape[0]))
    ok = len(set(counts)) == 1 and counts[0] == (12, 112)
    return res, None if ok else f"killed after {killed_after}; tile counts {sorted(set(counts))}"


# ------------------------------------------------------------------------------------------ harness
@dataclass
class Row:
    case: Case
    outcome: str
    line: str
    modified: list[str]
    seconds: float


def classify(case: Case, res: Result, problem: str | None) -> tuple[str, str]:
    """``(class, first error line or note)`` of one outcome."""
    errors = res.error_lines()
    first = errors[0] if errors else ""
    if res.exception or "Traceback (most recent call last)" in res.err + res.out:
        tail = [line for line in res.err.splitlines() if line.strip()]
        return TRACEBACK, res.exception or (tail[-1] if tail else "")
    if res.code != 0:
        if case.expect == SUCCEED:
            return FALSE_REFUSAL, first or f"exit {res.code}"
        if res.trained:
            return LATE, first
        return (CLEAR, first) if errors else (UNCLEAR, f"exit {res.code}: {res.err.strip()[-120:]}")
    if case.expect == REFUSE:
        warnings = [line.strip() for line in res.err.splitlines() if line.strip().startswith("warning:")]
        if warnings and not problem:
            return WARNED, warnings[0]
        return SILENT, "exit 0" + (f"; {problem}" if problem else "")
    return (SILENT, problem) if problem else (OK, "")


def run_case(case: Case, assets: Assets, work: Path) -> Row:
    folder = Path(tempfile.mkdtemp(prefix="case-", dir=work))
    ctx = Ctx(folder, assets)
    start = time.perf_counter()
    try:
        returned = case.run(ctx)
        res, problem = returned if isinstance(returned, tuple) else (returned, None)
        outcome, line = classify(case, res, problem)
    except Exception as exc:  # a broken set-up is reported, not hidden
        outcome, line = "harness error", f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200]
        traceback.print_exc()
    modified = ctx.modified() if ctx.watched else []
    for undo in ctx.cleanup:
        undo()
    return Row(case, outcome, line, modified, time.perf_counter() - start)


def print_table(rows: list[Row]) -> None:
    width = max(len(r.case.name) for r in rows)
    print(f"\n{'case':<{width}}  {'expected':<8}  {'outcome':<27}  {'inputs':<8}  first error line / note")
    print("-" * (width + 110))
    for r in rows:
        inputs = "MODIFIED" if r.modified else "same"
        line = r.line if len(r.line) <= 150 else r.line[:147] + "..."
        print(f"{r.case.name:<{width}}  {r.case.expect:<8}  {r.outcome:<27}  {inputs:<8}  {line}")
    counts = {c: sum(r.outcome == c for r in rows) for c in (*CLASSES, "harness error")}
    print(f"\n{len(rows)} cases tried in {sum(r.seconds for r in rows):.0f} s")
    for name, n in counts.items():
        if n or name in CLASSES:
            print(f"  {name:<28} {n}")
    print(f"  {'inputs modified':<28} {sum(bool(r.modified) for r in rows)}")
    odd = [r for r in rows if r.outcome not in (CLEAR, OK) or r.modified]
    if odd:
        print("\nnot clear / not ok:")
        for r in odd:
            print(
                f"  [{r.outcome}] {r.case.name}: {r.line}"
                + (f" (modified: {r.modified[:3]})" if r.modified else "")
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a representative subset of the cases")
    parser.add_argument("--only", default=None, help="run the cases whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--workdir", default=None, help="work folder (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cases = [c for c in CASES if (not args.quick or c.quick) and (args.only is None or args.only in c.name)]
    if args.list:
        for c in cases:
            print(f"{c.tool:<8} {c.expect:<8} {'quick' if c.quick else '':<5} {c.name}")
        print(f"{len(cases)} cases")
        return 0
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fault-catalogue-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["HIVEMIL_CACHE"] = str(work / "cache")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    assets = Assets(work)
    rows = []
    try:
        for i, c in enumerate(cases, 1):
            row = run_case(c, assets, work)
            rows.append(row)
            print(
                f"[{i}/{len(cases)}] {row.outcome:<27} {row.seconds:5.1f} s  {c.name}",
                file=sys.__stderr__,
                flush=True,
            )
    finally:
        if rows:
            print_table(rows)
        if args.json and rows:
            Path(args.json).write_text(
                json.dumps(
                    [
                        {"case": r.case.name, "tool": r.case.tool, "expected": r.case.expect, "outcome": r.outcome,
                         "line": r.line, "inputs_modified": r.modified, "seconds": round(r.seconds, 1)}
                        for r in rows
                    ],
                    indent=1,
                )
            )  # fmt: skip
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
