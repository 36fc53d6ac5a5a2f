"""An experiment grid: every combination of tasks, extractors, shots, models, variants and seeds, each
configuration one ``main.py`` command line (used by ``reproduce.py``).

A grid comes from the command line and/or a small TOML file; for each axis the command line wins::

    tasks = ["tcga_brca", "tcga_nsclc"]      # --task
    extractors = ["plip", "conch"]           # --feature_extractor
    shots = [4, 8, 16]                       # --few_shot_num
    models = ["HiVE_MIL", "ABMIL"]           # --model_type
    variants = ["reference", "corrected"]    # --variant
    seeds = [1]                              # --seed
    folds = [0, 1, 2, 3, 4]                  # contiguous fold indices: --k_start / --k_end

    [args]                                   # any other main.py flags, given to every configuration
    k = 5
    early_stopping = true
    results_dir = "RESULTS"

An axis that is not given adds no flag (main.py's default, or the task's defaults, apply). ``[args]``
may also be a list of strings (``args = ["--drop_out", "--lr", "1e-4"]``); command-line flags unknown
to the grid follow it, so they win over the file. Variants only matter to models whose results depend on
them (``ModelInfo.variants`` of :func:`models.registry.model_info`); every other model runs once, with the first variant.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from models.hivemil.options import VARIANTS
from models.registry import available_models, model_info
from training.config import RunConfig, build_parser
from utils.errors import InputError


@dataclass(frozen=True)
class Axis:
    key: str  # grid key (TOML key, and the CLI flag --<key>)
    flag: str  # main.py flag
    dest: str  # main.py argparse dest
    kind: type


AXES = (
    Axis("tasks", "--task", "task", str),
    Axis("extractors", "--feature_extractor", "feature_extractor", str),
    Axis("shots", "--few_shot_num", "few_shot_num", int),
    Axis("models", "--model_type", "model_type", str),
    Axis("variants", "--variant", "variant", str),
    Axis("seeds", "--seed", "seed", int),
)
AXIS_BY_KEY = {axis.key: axis for axis in AXES}
FOLDS_KEY = "folds"
FOLD_DESTS = ("k_start", "k_end")
ARGS_KEY = "args"
GRID_KEYS = (*AXIS_BY_KEY, FOLDS_KEY, ARGS_KEY)


@dataclass
class Grid:
    """Axis values (only the axes given), fold selection and the main.py flags of every configuration."""

    axes: dict[str, list] = field(default_factory=dict)
    folds: list[int] | None = None
    args: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GridPoint:
    """One configuration: its axis values and its main.py command line."""

    values: dict
    argv: list[str]

    def label(self) -> str:
        return (
            " ".join(f"{AXIS_BY_KEY[k].flag.lstrip('-')}={v}" for k, v in self.values.items()) or "(defaults)"
        )


def _as_list(key: str, value, where: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise InputError(f"{where}: {key} is an empty list")
    return values


def _check_value(key: str, value, kind: type, where: str):
    """One axis value of the right type and form (strings never start with '-'), else one error line."""
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            try:
                value = int(str(value), 10)
            except ValueError:
                raise InputError(f"{where}: {key} value {value!r} is not an integer") from None
        return value
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: {key} value {value!r} is not a non-empty string")
    if value.startswith("-"):
        raise InputError(f"{where}: {key} value {value!r} must not start with '-'")
    return value


def _unique(values: Iterable) -> list:
    return list(dict.fromkeys(values))


def _flag_args(table: dict, where: str) -> list[str]:
    """``[args]`` as a TOML table (``flag = value``; true adds a switch, false leaves it out) or a list."""
    if isinstance(table, list):
        if not all(isinstance(v, str) for v in table):
            raise InputError(f"{where}: {ARGS_KEY} must be a table of flags or a list of strings")
        return list(table)
    if not isinstance(table, dict):
        raise InputError(f"{where}: {ARGS_KEY} must be a table of flags or a list of strings")
    argv = []
    for name, value in table.items():
        option = name if name.startswith("-") else f"--{name}"
        if isinstance(value, bool):
            if value:
                argv.append(option)
        elif isinstance(value, (int, float, str)):
            argv += [option, str(value)]
        else:
            raise InputError(f"{where}: [{ARGS_KEY}] {name} = {value!r}: use a string, number or boolean")
    return argv


def _toml_module():
    """``tomllib`` (Python 3.11+), else ``tomli`` (same API) on Python 3.10."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise InputError("--grid needs Python 3.11 or newer (tomllib), or pip install tomli") from None
    return tomllib


def read_grid_file(path: str | Path) -> Grid:
    """A grid from a TOML file (module docstring); unknown keys and wrong types are one error line."""
    path = Path(path)
    toml = _toml_module()
    try:
        data = toml.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--grid {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"--grid {path}: cannot read ({err})") from None
    except toml.TOMLDecodeError as err:
        raise InputError(f"--grid {path}: not valid TOML ({err})") from None
    unknown = [k for k in data if k not in GRID_KEYS]
    if unknown:
        raise InputError(
            f"--grid {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(GRID_KEYS)})"
        )
    grid = Grid()
    for key in AXIS_BY_KEY:
        if key in data:
            grid.axes[key] = _as_list(key, data[key], str(path))
    if FOLDS_KEY in data:
        grid.folds = _as_list(FOLDS_KEY, data[FOLDS_KEY], str(path))
    if ARGS_KEY in data:
        grid.args = _flag_args(data[ARGS_KEY], str(path))
    return grid


def merge_grids(
    file_grid: Grid | None, cli_axes: dict[str, list | None], cli_folds, cli_args: list[str]
) -> Grid:
    """The file's grid with every axis given on the command line replaced, and the command-line flags
    appended to the file's ``[args]``."""
    grid = Grid(dict(file_grid.axes), file_grid.folds, list(file_grid.args)) if file_grid else Grid()
    for key, values in cli_axes.items():
        if values is not None:
            grid.axes[key] = list(values)
    if cli_folds is not None:
        grid.folds = list(cli_folds)
    grid.args += list(cli_args)
    return grid


def _raise_input_error(message: str):
    raise InputError(f"main.py flags: {message}")


def main_flags_given(args: list[str]) -> set[str]:
    """Parse ``args`` with main.py's parser: the dests they set; a flag main.py does not know or a bad
    value is one :class:`InputError` line."""
    parser = build_parser()
    parser.error = _raise_input_error  # argparse would print usage and exit
    parser.exit_on_error = False
    try:
        namespace, extra = parser.parse_known_args(args)
    except argparse.ArgumentError as err:
        raise InputError(f"main.py flags: {err}") from None
    if extra:
        raise InputError(f"main.py does not know {' '.join(extra)} (see python main.py --help)")
    return set(vars(namespace))


def validate_grid(grid: Grid) -> Grid:
    """Check every axis value and the flags; returns the grid with typed, de-duplicated values."""
    where = "grid"
    axes = {}
    for key, values in grid.axes.items():
        axis = AXIS_BY_KEY[key]
        axes[key] = _unique(_check_value(f"--{key}", v, axis.kind, where) for v in values)
    if "variants" in axes:
        bad = [v for v in axes["variants"] if v not in VARIANTS]
        if bad:
            raise InputError(f"{where}: --variants {', '.join(bad)}: choose from {', '.join(VARIANTS)}")
    if "models" in axes:
        known = available_models()
        bad = [m for m in axes["models"] if m not in known]
        if bad:
            raise InputError(f"{where}: --models {', '.join(bad)} not known; choose from: {', '.join(known)}")
    for key in ("shots", "seeds"):
        low = 1 if key == "shots" else 0
        bad = [str(v) for v in axes.get(key, []) if v < low]
        if bad:
            raise InputError(f"{where}: --{key} {', '.join(bad)}: must be >= {low}")
    folds = None
    if grid.folds is not None:
        folds = sorted(set(_check_value("--folds", v, int, where) for v in grid.folds))
        if folds[0] < 0:
            raise InputError(f"{where}: --folds must be fold indices >= 0, got {folds[0]}")
        if folds != list(range(folds[0], folds[-1] + 1)):
            raise InputError(
                f"{where}: --folds {' '.join(map(str, folds))} is not a contiguous range of folds "
                "(main.py runs folds k_start..k_end-1)"
            )
    given = main_flags_given(grid.args)
    for key in axes:
        axis = AXIS_BY_KEY[key]
        if axis.dest in given:
            raise InputError(
                f"{axis.flag} is set by the grid (--{key}) and by the main.py flags; give it once"
            )
    if folds is not None and given & set(FOLD_DESTS):
        raise InputError(
            "--k_start/--k_end are set by the grid (--folds) and by the main.py flags; give them once"
        )
    return Grid(axes, folds, list(grid.args))


def expand_grid(grid: Grid) -> list[GridPoint]:
    """Every configuration of a validated grid, in axis order (tasks outermost, seeds innermost)."""
    keys = [axis.key for axis in AXES if axis.key in grid.axes]
    fold_args = []
    if grid.folds is not None:
        fold_args = ["--k_start", str(grid.folds[0]), "--k_end", str(grid.folds[-1] + 1)]
    points, seen = [], set()
    for combo in itertools.product(*(grid.axes[k] for k in keys)):
        values = dict(zip(keys, combo))
        if (
            "variants" in values
            and not model_info(values.get("models", _passthrough_model(grid.args))).variants
        ):
            values["variants"] = grid.axes["variants"][0]  # the variant does not change this model
        key = tuple(values.items())
        if key in seen:
            continue
        seen.add(key)
        argv = [part for k, v in values.items() for part in (AXIS_BY_KEY[k].flag, str(v))]
        points.append(GridPoint(values, argv + fold_args + list(grid.args)))
    return points


def _passthrough_model(args: list[str]) -> str:
    """The ``--model_type`` among main.py flags, else main.py's default."""
    namespace, _ = build_parser().parse_known_args(args)
    return getattr(namespace, "model_type", RunConfig().model_type)
