"""Text side of the vision-language baselines: the frozen tower and the task's descriptions.

Both ``zero_shot`` and ``ViLa_MIL`` read the task's hierarchical prompt file
(``text_prompt/HiVE_MIL/<LLM>/<task>.json``): the coarse entries describe the 5x scale and the fine
entries the 20x scale. A description is rendered ``"<term> : <explanation>"`` (DESIGN.md section 2).
"""

from __future__ import annotations

from collections.abc import Sequence

from models.towers.base import TextTower
from utils.errors import InputError


def load_text_tower(config) -> TextTower:
    """The run's frozen text tower (``config.feature_extractor``, weights from ``config.text_tower``).

    The ``demo`` extractor without ``--text_tower`` uses the demo task's tiny tower, as HiVE-MIL does.
    """
    from models.towers import load_towers

    extractor = getattr(config, "feature_extractor", "plip")
    source = getattr(config, "text_tower", None)
    if extractor == "demo" and source is None:
        from models.towers.tiny import ensure_demo_text_tower

        source = ensure_demo_text_tower()
    return load_towers(extractor, source=source, sides=("text",)).text


def load_descriptions(config, task) -> tuple[list[list[str]], list[list[str]]]:
    """(coarse, fine) description texts per class, in the task's class order."""
    from datasets.tasks import DEFAULT_LLM
    from datasets.prompt_file import load_prompt_file

    prompts = load_prompt_file(
        task.prompt_file(getattr(config, "LLM", DEFAULT_LLM)),
        task.class_names,
        n_coarse=int(getattr(config, "num_low_mag_texts", 4)),
        n_fine_per_coarse=int(getattr(config, "num_high_mag_subtexts", 3)),
    )
    coarse = [describe(prompts.coarse[c]) for c in task.class_names]
    fine = [describe(prompts.fine[c]) for c in task.class_names]
    return coarse, fine


def describe(entries: Sequence[tuple[str, str]]) -> list[str]:
    """``"<term> : <explanation>"`` for each (term, explanation) entry."""
    return [f"{term} : {explanation}" for term, explanation in entries]


def check_feature_dim(config, tower: TextTower, model_name: str) -> None:
    """Patch features must live in the tower's joint space for a model that compares them directly."""
    dim = getattr(config, "feature_dim", None)
    if dim is not None and int(dim) != tower.embed_dim:
        raise InputError(
            f"--feature_dim {dim} does not match the text tower's embedding size {tower.embed_dim}; "
            f"{model_name} needs patch features from the same vision-language model"
        )
