"""Frozen vision-language towers behind one interface (HF CLIP, CONCH, open_clip); see ``base.py``.

Image-only pathology backbones (``resnet50_trunc``, ``uni``, ``phikon_v2``) share the image side of that
interface and the same loader; see ``backbones.py``.

The names below are imported on first use (PEP 562), so that naming a tower
(:class:`~models.towers.source.TowerSource`, e.g. in a run config) does not import torch.
"""

from __future__ import annotations

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


def __getattr__(name: str):
    if name in ("ImageTower", "TextTower", "freeze"):
        from models.towers import base as module
    elif name == "TowerSource":
        from models.towers import source as module
    elif name in ("Towers", "load_text_tower", "load_towers", "resolve_tower_source"):
        from models.towers import loading as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)
