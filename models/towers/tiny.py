"""Tiny random towers, saved exactly the way real weights are stored, for tests and the demo task.

Each builder creates a small random model locally (no download) and writes it in its library's own
on-disk format, so :func:`models.towers.loading.load_towers` loads it through the same code as real
weights:

* :func:`save_tiny_hf_clip` - ``CLIPModel.save_pretrained`` folder (like ``shared/golden/tiny_clip``).
* :func:`save_tiny_conch` - conch-fork CoCa ``pytorch_model.bin`` state_dict plus a
  ``conch_config.json`` sidecar (the loader's way to learn a non-default config).
* :func:`save_tiny_open_clip` - ``open_clip_config.json`` + ``open_clip_pytorch_model.bin`` folder.
* :func:`ensure_demo_text_tower` - the demo task's HF CLIP (width 64, projection 64), built once, atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from models.towers.conch_tower import CONCH_CONFIG_NAME
from models.towers.preprocess import CLIP_MEAN, CLIP_STD
from utils.atomic_io import atomic_path, atomic_write_text
from utils.paths import cache_root

DEMO_TOWER_DIRNAME = "demo_text_tower"


@contextlib.contextmanager
def private_rng(seed: int):
    """Seed torch's CPU generator for a block and restore its state afterwards.

    Building a tiny tower must not change the random stream of the run that asked for it: the demo's
    first run (which builds its tower) and later runs (which load it) start from the same RNG state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def save_tiny_hf_clip(
    path: str | Path,
    width: int = 64,
    layers: int = 2,
    heads: int = 4,
    projection: int = 64,
    vision_width: int = 32,
    image_size: int = 32,
    seed: int = 0,
    with_processor: bool = True,
) -> Path:
    """Random ``transformers.CLIPModel`` (CLIP BPE vocab 49408, context 77, logit_scale 4.6052) in ``path``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    path = Path(path)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=77,
            vocab_size=49408,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=1,
            hidden_act="quick_gelu",
        ),
        vision_config=dict(
            hidden_size=vision_width,
            intermediate_size=2 * vision_width,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=16,
            hidden_act="quick_gelu",
        ),
        projection_dim=projection,
        logit_scale_init_value=4.6052,
    )
    with private_rng(seed):
        model = CLIPModel(config).float().eval()
    model.save_pretrained(str(path))
    if with_processor:
        CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD),
        ).save_pretrained(str(path))
    return path


def tiny_conch_config(
    width: int = 64,
    layers: int = 2,
    heads: int = 4,
    embed_dim: int = 64,
    vision_width: int = 32,
    image_size: int = 32,
    decoder_layers: int = 1,
) -> dict:
    """A small CoCa config in conch-fork's ``model_configs`` schema (CONCH tokenizer: vocab 32007, context 128)."""
    return {
        "embed_dim": embed_dim,
        "embed_dim_caption": width,
        "vision_cfg": {
            "image_size": image_size,
            "patch_size": 16,
            "width": vision_width,
            "layers": 1,
            "num_heads": 2,
            "attentional_pool_caption": True,
            "attentional_pool_contrast": True,
            "attn_pooler_heads": 4,
            "n_queries_contrast": 1,
            "n_queries_caption": 4,
            "output_tokens": True,
        },
        "text_cfg": {
            "context_length": 128,
            "vocab_size": 32007,
            "width": width,
            "heads": heads,
            "layers": layers,
            "embed_cls": True,
            "output_tokens": True,
        },
        "multimodal_cfg": {
            "context_length": 128,
            "vocab_size": 32007,
            "width": width,
            "heads": heads,
            "layers": decoder_layers,
        },
    }


def save_tiny_conch(path: str | Path, seed: int = 0, **config_kwargs) -> Path:
    """Random conch-fork CoCa saved as ``path/pytorch_model.bin`` + ``path/conch_config.json``; returns the .bin."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from conch.open_clip_custom import CoCa

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = tiny_conch_config(**config_kwargs)
    with private_rng(seed):
        model = CoCa(**json.loads(json.dumps(config))).float()
    with torch.no_grad():  # CoCa starts at log(1/0.07); trained CONCH sits near log(100)
        model.logit_scale.fill_(4.6052)
    checkpoint = path / "pytorch_model.bin"
    with atomic_path(checkpoint) as tmp:
        torch.save(model.state_dict(), tmp)
    atomic_write_text(path / CONCH_CONFIG_NAME, json.dumps(config, indent=2))
    return checkpoint


def save_tiny_open_clip(
    path: str | Path,
    width: int = 64,
    layers: int = 2,
    heads: int = 4,
    embed_dim: int = 64,
    vision_width: int = 32,
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Random open_clip ``CLIP`` as a local-dir folder (``open_clip_config.json`` + weights); returns the folder."""
    from open_clip.model import CLIP

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model_cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": image_size,
            "layers": 1,
            "width": vision_width,
            "head_width": 16,
            "patch_size": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": width,
            "heads": heads,
            "layers": layers,
        },
    }
    with private_rng(seed):
        model = CLIP(**json.loads(json.dumps(model_cfg)), init_logit_scale=4.6052).float()
    with atomic_path(path / "open_clip_pytorch_model.bin") as tmp:
        torch.save(model.state_dict(), tmp)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}}
    atomic_write_text(path / "open_clip_config.json", json.dumps(config, indent=2))
    return path


def ensure_demo_text_tower(cache_dir: str | Path | None = None) -> Path:
    """The demo task's tiny HF CLIP text tower (width 64, projection 64 = the demo's feature dim).

    Built once under ``cache_dir/demo_text_tower`` (default: :func:`utils.paths.cache_root`):
    written to a temporary folder, then renamed into place, so a reader never sees a half-written
    tower and concurrent callers agree on one copy.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    target = cache_dir / DEMO_TOWER_DIRNAME
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_TOWER_DIRNAME}.", dir=cache_dir))
    try:
        save_tiny_hf_clip(tmp, width=64, layers=2, heads=4, projection=64, seed=0)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first (target exists and is non-empty)
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
