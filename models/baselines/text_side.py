"""Text side of the vision-language baselines: the task's descriptions per scale.

Both ``zero_shot`` and ``ViLa_MIL`` read the task's hierarchical prompt file
(``text_prompt/HiVE_MIL/<LLM>/<task>.json``): the coarse entries describe the 5x scale and the fine
entries the 20x scale, rendered by :func:`datasets.prompt_file.render_description` (docs/formats.md).
"""

from __future__ import annotations

from datasets.prompt_file import load_prompt_file
from models.registry import ModelSpec


def load_descriptions(spec: ModelSpec) -> tuple[list[list[str]], list[list[str]]]:
    """(coarse, fine) description texts per class, in the task's class order."""
    classes = spec.task.class_names
    prompts = load_prompt_file(
        spec.prompt_file,
        classes,
        n_coarse=spec.hivemil.num_low_mag_texts,
        n_fine_per_coarse=spec.hivemil.num_high_mag_subtexts,
    )
    return [prompts.descriptions(c, "coarse") for c in classes], [
        prompts.descriptions(c, "fine") for c in classes
    ]
