"""Which tower a model uses (:class:`TowerSource`), as a run config names it; no torch, so configs and
the model registry can name a tower without loading anything (:mod:`models.towers.loading` loads it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TowerSource:
    """Which tower a model uses: the feature extractor's name and, optionally, where its weights are
    (``--text_tower``: a hub name, local folder, checkpoint file or open_clip spec)."""

    extractor: str
    weights: str | None = None
