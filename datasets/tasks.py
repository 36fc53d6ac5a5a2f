"""Task registry: a task is a dataset CSV + label dict + class names + prompt file.

Built-in tasks are the three TCGA subtyping tasks of the paper. Any other task (the generated demo
task included) works without code changes: put ``dataset_csv/<task>.csv`` (columns
``case_id,slide_id,label,level0_mag``) and ``text_prompt/HiVE_MIL/<LLM>/<task>.json`` in place;
the classes are the prompt file's keys, in file order (or the sorted CSV labels without a prompt file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import InputError
from utils.paths import PROJECT_ROOT
from utils.safe_names import check_name

DEFAULT_CSV_DIR = PROJECT_ROOT / "dataset_csv"
DEFAULT_PROMPT_DIR = PROJECT_ROOT / "text_prompt"
RELEASED_LLM = "gpt4o"  # the released code's --LLM default
DEFAULT_LLM = "curated"  # our own prompts, used when the released folder has no file for the task
CSV_COLUMNS = ("case_id", "slide_id", "label", "level0_mag")


@dataclass(frozen=True)
class TaskSpec:
    """Everything task-specific: where its slides are listed, its classes and its prompts."""

    name: str
    class_names: tuple[str, ...]
    csv_path: Path
    prompt_dir: Path = DEFAULT_PROMPT_DIR
    label_dict: dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def prompt_file(self, llm: str | None = None) -> Path:
        """``text_prompt/HiVE_MIL/<llm>/<task>.json`` (``llm`` None: :meth:`default_llm`)."""
        return Path(self.prompt_dir) / "HiVE_MIL" / (llm or self.default_llm()) / f"{self.name}.json"

    def default_llm(self) -> str:
        """The released default ``gpt4o`` when its prompt file for this task exists, else ``curated``."""
        released = Path(self.prompt_dir) / "HiVE_MIL" / RELEASED_LLM / f"{self.name}.json"
        return RELEASED_LLM if released.is_file() else DEFAULT_LLM


_BUILTIN_CLASSES: dict[str, tuple[str, ...]] = {
    "tcga_brca": ("IDC", "ILC"),
    "tcga_nsclc": ("LUAD", "LUSC"),
    "tcga_rcc": ("CCRCC", "CHRCC", "PRCC"),
}


def builtin_task_names() -> list[str]:
    return sorted(_BUILTIN_CLASSES)


def _classes_from_prompt_file(path: Path) -> tuple[str, ...] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path}: expected a JSON object {{class: {{term: explanation}}}}")
    return tuple(data)


def _classes_from_csv(path: Path) -> tuple[str, ...]:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str)
    except Exception as err:  # pandas raises many types for unreadable CSVs
        raise InputError(f"{path}: cannot read CSV ({err})") from None
    if "label" not in frame.columns:
        raise InputError(f"{path}: missing column 'label' (expected columns {', '.join(CSV_COLUMNS)})")
    return tuple(sorted(frame["label"].dropna().unique()))


def get_task(
    name: str,
    csv_dir: str | Path | None = None,
    prompt_dir: str | Path | None = None,
    llm: str | None = None,
    csv_path: str | Path | None = None,
) -> TaskSpec:
    """Resolve a task by name.

    Built-in TCGA tasks have fixed classes; other names take their classes from the prompt file
    ``<prompt_dir>/HiVE_MIL/<llm>/<name>.json`` (``llm`` None: gpt4o if present, else curated), else
    from the labels of the task's dataset CSV: ``csv_path`` when given (a CSV anywhere, e.g.
    ``create_splits.py --csv``), else ``<csv_dir>/<name>.csv``.
    """
    check_name(name, "task name", "--task")  # it names files and folders (<task>.csv, splits/<task>/)
    prompt_root = Path(prompt_dir) if prompt_dir is not None else DEFAULT_PROMPT_DIR
    csv_root = Path(csv_dir) if csv_dir is not None else DEFAULT_CSV_DIR
    csv_path = Path(csv_path) if csv_path is not None else csv_root / f"{name}.csv"
    if name in _BUILTIN_CLASSES:
        classes = _BUILTIN_CLASSES[name]
    else:
        probe = TaskSpec(name, (), csv_path, prompt_root)
        prompt_path = probe.prompt_file(llm)
        classes = _classes_from_prompt_file(prompt_path)
        if classes is None:
            if not csv_path.is_file():
                raise InputError(
                    f"unknown task {name!r}: neither {csv_path} nor {prompt_path} exists "
                    f"(built-in tasks: {', '.join(builtin_task_names())})"
                )
            classes = _classes_from_csv(csv_path)
    return TaskSpec(
        name=name,
        class_names=tuple(classes),
        csv_path=csv_path,
        prompt_dir=prompt_root,
        label_dict={c: i for i, c in enumerate(classes)},
    )
