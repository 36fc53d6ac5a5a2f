"""The two task kinds are symmetric: each supplies every hook of training.tasks.Task, and nothing else."""

from __future__ import annotations

from training.tasks import SURVIVAL, Task, task_for
from training.tasks.classification import ClassificationTask
from training.tasks.survival import SurvivalTask


def _hooks(cls) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_")}


def test_both_task_kinds_supply_exactly_the_task_hooks():
    wanted = {name for name in vars(Task) if not name.startswith("_")} | set(Task.__annotations__)
    wanted -= {"config", "data"}  # set per instance
    assert _hooks(ClassificationTask) == wanted
    assert _hooks(SurvivalTask) == wanted


def test_task_kind_flag_chooses_the_task(tmp_path):
    from tests.toy_task import make_toy_data, toy_config

    config = toy_config(make_toy_data(tmp_path / "in"), tmp_path / "out")
    assert task_for(config) is ClassificationTask
    config.task_kind = SURVIVAL
    assert task_for(config) is SurvivalTask
