"""Survival-attribute prompts of the HiLa-style model: ``text_prompt/HiLa/<task>.json`` (docs/survival.md §8.1).

A file lists K survival-related attributes, each described at both levels::

    {
      "tumour architecture": {
        "region": "<what the attribute looks like in a 5x region>",
        "patch": "<what it looks like in a 20x patch>"
      },
      ...
    }

Attribute k's region description and patch description are the k-th prompt of the region (5x) and the
patch (20x) level; the mutual contrastive loss treats them as the same attribute. A prompt is rendered
``"<attribute> : <description>"`` (:func:`datasets.prompt_file.render_description`, as HiVE-MIL's).
Validation follows the HiVE-MIL prompt files (reading and the top-level JSON object through
:mod:`datasets.prompt_file`'s helpers): one InputError line naming the file for invalid JSON, a wrong
shape, duplicate or empty names, or empty descriptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasets.prompt_file import JsonPairs, parse_json_object, read_prompt_text, render_description
from utils.errors import InputError

LEVELS = ("region", "patch")  # 5x, 20x
MIN_ATTRIBUTES = 2  # the contrastive loss needs another attribute as a negative


@dataclass(frozen=True)
class SurvivalPrompts:
    """Validated attribute prompts: ``attributes`` in file order and their description per level."""

    attributes: tuple[str, ...]
    region: tuple[str, ...]
    patch: tuple[str, ...]
    path: Path | str

    def descriptions(self, level: str) -> list[str]:
        """Rendered prompts of ``level`` (``region`` or ``patch``), one per attribute."""
        if level not in LEVELS:
            raise KeyError(f"level must be one of {LEVELS}, got {level!r}")
        texts = self.region if level == "region" else self.patch
        return [render_description(a, t) for a, t in zip(self.attributes, texts)]


def parse_survival_prompts(text: str, source: Path | str) -> SurvivalPrompts:
    """Parse and validate prompt JSON ``text``; ``source`` names it in error messages."""
    shape = 'expected {"<attribute>": {"region": "<5x description>", "patch": "<20x description>"}, ...}'
    data = parse_json_object(text, source, shape)
    names, region, patch = [], [], []
    for name, body in data:
        if not name.strip():
            raise InputError(f"{source}: empty attribute name")
        if name.strip() in names:
            raise InputError(f"{source}: attribute {name!r} appears twice")
        if not isinstance(body, JsonPairs):
            raise InputError(
                f"{source}: attribute {name!r} is not an object with 'region' and 'patch' ({shape})"
            )
        keys = [k for k, _ in body]
        if sorted(keys) != sorted(LEVELS):
            raise InputError(
                f"{source}: attribute {name!r} has keys {keys}; expected exactly 'region' (5x) and 'patch' (20x)"
            )
        values = dict(body)
        for level in LEVELS:
            value = values[level]
            if not isinstance(value, str) or not value.strip():
                raise InputError(
                    f"{source}: attribute {name!r}: the {level} description must be a non-empty string"
                )
        names.append(name.strip())
        region.append(values["region"].strip())
        patch.append(values["patch"].strip())
    if len(names) < MIN_ATTRIBUTES:
        raise InputError(
            f"{source}: {len(names)} attribute(s); at least {MIN_ATTRIBUTES} are needed (the cross-level "
            "contrastive loss contrasts each attribute with the others)"
        )
    return SurvivalPrompts(tuple(names), tuple(region), tuple(patch), source)


def load_survival_prompts(path: str | Path) -> SurvivalPrompts:
    """Read and validate a survival prompt file (the file is only read)."""
    path = Path(path)
    text = read_prompt_text(
        path, "prompt file not found (HiLa-style survival prompts, docs/survival.md §8.1)"
    )
    return parse_survival_prompts(text, path)
