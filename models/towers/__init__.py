"""Frozen vision-language towers behind one interface (HF CLIP, CONCH, open_clip); see ``base.py``.

Image-only pathology backbones (``resnet50_trunc``, ``uni``, ``phikon_v2``) share the image side of that
interface and the same loader; see ``backbones.py``."""

from models.towers.base import ImageTower, TextTower, freeze
from models.towers.loading import Towers, TowerSource, load_text_tower, load_towers, resolve_tower_source

__all__ = [
    "ImageTower",
    "TextTower",
    "TowerSource",
    "Towers",
    "freeze",
    "load_text_tower",
    "load_towers",
    "resolve_tower_source",
]
