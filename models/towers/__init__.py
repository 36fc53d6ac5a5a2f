"""Frozen vision-language towers behind one interface (HF CLIP, CONCH, open_clip); see ``base.py``."""

from models.towers.base import ImageTower, TextTower, freeze
from models.towers.loading import Towers, load_towers, resolve_tower_source

__all__ = ["ImageTower", "TextTower", "Towers", "freeze", "load_towers", "resolve_tower_source"]
