"""Hugging Face CLIP adapter (PLIP ``vinid/plip``, QuiltNet ``wisdomik/QuiltNet-B-32``, any local CLIP folder).

Text side (docs/method.md §1, docs/divergences.md §1):

* ``released_layout=False`` is ``CLIPModel.get_text_features`` computed from token embeddings:
  batch-first, causal mask, ``final_layer_norm``, pooled at the end-of-text token (first ``eos`` id,
  or the largest id for legacy configs with ``eos_token_id == 2``, as ``CLIPTextModel`` does), then
  the ``text_projection`` Linear (weight transposed). Only the first ``max(pool) + 1`` positions are
  computed (exact under the causal mask).
* ``released_layout=True`` is what the released HiVE-MIL code does for one class's prompts [N, L]:
  ``x = embeddings + position_embedding.weight``; ``x.permute(1, 0, 2)`` so ``text_model.encoder``
  sees the L token positions as its batch and the N prompts as its sequence, with no mask at all
  (attention mixes the prompts of one class at each position); permute back; ``final_layer_norm``;
  row i at ``token_ids[i].argmax()``; then ``x @ text_projection.weight`` - the [embed_dim, width]
  weight itself, not its transpose, which only type-checks when width == embed_dim (checked here).
  Each position is an independent encoder batch element, so only ``unique(argmax)`` positions are
  computed (exact). Consequence: the output depends only on the embeddings at the end-token
  positions, so learned context vectors (positions 1..n_ctx) never reach the text features and get
  exactly zero gradient (the golden cases' one Adam step on ``ctx`` is pure weight decay).

Image side: ``get_image_features`` (vision model pooled output, then ``visual_projection``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from models.towers.base import ImageTower, TextTower
from models.towers.layout import causal_additive_mask, causal_prefix_length, pooled_position_groups
from models.towers.preprocess import HFProcessorTransform, clip_style_transform
from models.towers.tokenizers import ClipBpeTokenizer
from utils.errors import InputError, one_line

LEGACY_EOS_ID = 2  # CLIP configs from before transformers PR #24773 pool at the largest token id


class HFClipTextTower(TextTower):
    """Frozen text side of a ``transformers.CLIPModel``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        text_model = model.text_model
        cfg = model.config.text_config
        self.embeddings = text_model.embeddings  # .token_embedding, .position_embedding
        self.encoder = text_model.encoder
        self.final_layer_norm = text_model.final_layer_norm
        self.text_projection = model.text_projection  # Linear(width -> embed_dim, bias=False)
        self.logit_scale = model.logit_scale
        self.width = int(cfg.hidden_size)
        self.embed_dim = int(model.config.projection_dim)
        self.context_length = int(cfg.max_position_embeddings)
        self.eos_token_id = int(cfg.eos_token_id) if cfg.eos_token_id is not None else None
        self.attention_dropout = float(getattr(cfg, "attention_dropout", 0.0) or 0.0)
        self.tokenizer = ClipBpeTokenizer(self.context_length)

    def tokenize(self, texts):
        return self.tokenizer(texts)

    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count_tokens(text)

    def token_embedding(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings.token_embedding(token_ids)

    def pool_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """End-of-text position as ``CLIPTextModel`` finds it (first eos id; argmax for legacy configs)."""
        if self.eos_token_id is None or self.eos_token_id == LEGACY_EOS_ID:
            return token_ids.argmax(dim=-1)
        return (token_ids == self.eos_token_id).int().argmax(dim=-1)

    def check_released_layout(self) -> None:
        """The released code multiplies by the [embed_dim, width] weight: only valid when they are equal."""
        if self.width != self.embed_dim:
            raise InputError(
                f"--variant reference (released text layout) needs a text tower whose width equals its "
                f"projection dim (the released code multiplies by text_projection.weight itself); this tower "
                f"has width {self.width} and projection {self.embed_dim}: use --variant corrected"
            )

    def encode_embeddings(
        self, embeddings: torch.Tensor, token_ids: torch.Tensor, released_layout: bool = False
    ) -> torch.Tensor:
        if released_layout:
            return self._encode_released(embeddings, token_ids)
        return self._encode_causal(embeddings, token_ids)

    def positions_read(self, token_ids: torch.Tensor, released_layout: bool = False) -> torch.Tensor | None:
        if self.training and self.attention_dropout > 0:
            return None
        if released_layout:  # each position is encoded on its own (attention runs across the prompts)
            return pooled_position_groups(token_ids.argmax(dim=-1))[0]
        return torch.arange(causal_prefix_length(self.pool_positions(token_ids)), device=token_ids.device)

    def _encode_causal(self, embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        pool = self.pool_positions(token_ids)
        keep = causal_prefix_length(pool)
        pos = self.embeddings.position_embedding.weight[:keep]
        x = embeddings[:, :keep] + pos
        mask = causal_additive_mask(keep, x.dtype, x.device)[None, None]  # [1, 1, T, T]
        x = self.encoder(inputs_embeds=x, attention_mask=mask).last_hidden_state
        rows = torch.arange(x.shape[0], device=x.device)
        x = self.final_layer_norm(x[rows, pool])
        return self.text_projection(x)

    def _encode_released(self, embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        self.check_released_layout()
        pool = token_ids.argmax(dim=-1)
        positions, slot = pooled_position_groups(pool)
        pos = self.embeddings.position_embedding.weight[positions]  # [P, W]
        x = embeddings[:, positions] + pos  # [N, P, W]
        x = x.permute(1, 0, 2)  # [P, N, W]: positions are the encoder's batch, prompts its sequence
        x = self.encoder(inputs_embeds=x).last_hidden_state  # no mask, as in the released code
        x = x[slot, torch.arange(x.shape[1], device=x.device)]  # row i at its pooled position
        x = self.final_layer_norm(x)
        return x @ self.text_projection.weight


class HFClipImageTower(ImageTower):
    """Frozen image side of a ``transformers.CLIPModel`` (``get_image_features``)."""

    def __init__(self, model: nn.Module, preprocess):
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection
        self.embed_dim = int(model.config.projection_dim)
        self.image_size = int(model.config.vision_config.image_size)
        self.preprocess = preprocess

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=images).pooler_output
        return self.visual_projection(pooled)


def is_hf_clip_folder(folder: Path) -> bool:
    """True when ``folder/config.json`` declares ``model_type: clip``."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == "clip"
    except (OSError, ValueError):
        return False


def load_hf_clip(folder: Path, sides: tuple[str, ...]) -> tuple[TextTower | None, ImageTower | None]:
    """Load a local Hugging Face CLIP folder (offline) and wrap the requested sides."""
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor loading bar is noise in every run's output

    try:
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    except Exception as err:  # missing/corrupt weights, wrong config ...
        raise InputError(f"{folder}: could not load a Hugging Face CLIP model ({one_line(err)})") from err
    model = model.float().eval()
    text = HFClipTextTower(model) if "text" in sides else None
    image = None
    if "image" in sides:
        size = int(model.config.vision_config.image_size)
        if (folder / "preprocessor_config.json").is_file():
            preprocess = HFProcessorTransform(folder)
        else:
            preprocess = clip_style_transform(size)
        image = HFClipImageTower(model, preprocess)
    return text, image
