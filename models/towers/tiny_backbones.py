"""Random-weight image-only backbones, saved in the formats real weights come in, for tests and benchmarks.

Each writer builds the architecture locally (no download) and stores its weights the way the real
release does, so :func:`models.towers.loading.load_towers` reads them through the same code:

* :func:`save_random_resnet50` - a full torchvision ResNet50 ``state_dict`` (``.pth`` via ``torch.save``
  or ``.safetensors``), ``layer4``/``fc`` included as in torchvision's files.
* :func:`save_random_uni` - UNI's timm ViT-L/16 ``state_dict`` (``pytorch_model.bin`` or
  ``.safetensors``); a smaller ViT when overrides are given, written to ``uni_config.json`` beside it.
* :func:`save_random_phikon_v2` - a ``transformers`` Dinov2 folder (``save_pretrained``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.towers.backbones import UNI_CONFIG_NAME, build_uni
from models.towers.tiny import private_rng
from utils.atomic_io import atomic_path, atomic_write_text


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Write ``state`` atomically: safetensors for a ``.safetensors`` name, else ``torch.save``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        else:
            torch.save(state, tmp)
    return path


def save_random_resnet50(path: str | Path, seed: int = 0) -> Path:
    """A random torchvision ResNet50 state_dict at ``path`` (format from its suffix)."""
    from torchvision.models import resnet50

    with private_rng(seed):
        model = resnet50(weights=None)
    return save_state_dict(model.state_dict(), Path(path))


def save_random_uni(path: str | Path, seed: int = 0, **overrides) -> Path:
    """A random UNI ViT state_dict at ``path``; ``overrides`` (depth, embed_dim, num_heads, mlp_ratio)
    make a smaller ViT and are written to ``uni_config.json`` beside it (none: the real size)."""
    path = Path(path)
    with private_rng(seed):
        model = build_uni(overrides or None)
    save_state_dict(model.state_dict(), path)
    if overrides:
        atomic_write_text(path.parent / UNI_CONFIG_NAME, json.dumps(overrides, indent=2))
    return path


def save_random_phikon_v2(
    folder: str | Path,
    seed: int = 0,
    hidden_size: int = 1024,
    layers: int = 24,
    heads: int = 16,
    patch_size: int = 16,
    image_size: int = 224,
) -> Path:
    """A random Dinov2 model saved with ``save_pretrained`` in ``folder`` (defaults: ViT-L/16 at 224)."""
    from transformers import Dinov2Config, Dinov2Model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = Dinov2Config(
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        patch_size=patch_size,
        image_size=image_size,
    )
    with private_rng(seed):
        model = Dinov2Model(config).eval()
    model.save_pretrained(str(folder))
    return Path(folder)
