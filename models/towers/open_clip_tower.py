"""open_clip adapter: any open_clip model whose text side is a standard text transformer.

Sources: ``hf-hub:org/name`` (resolved offline to its cached folder by the loader), a local folder
with ``open_clip_config.json`` + weights (``local-dir:``), or ``ARCH:/path/to/checkpoint.pt`` (a
built-in architecture name plus a weights file). Text towers with an appended cls embedding (CoCa),
a padding mask, or a Hugging Face text model are not supported here.

Text side (``token_embedding``, ``positional_embedding``, ``transformer`` - batch-first at its call
boundary in open_clip 3.x, ``ln_final``, ``text_projection``, causal ``attn_mask``, pool type):

* ``released_layout=False`` is ``model.encode_text(ids)`` from token embeddings: causal mask,
  ``ln_final``, pooled as the model pools (argmax / eos / first / last), projected. With a causal
  mask only the first ``max(pool) + 1`` positions are computed (exact).
* ``released_layout=True`` mirrors the released CONCH path: positional embeddings added, the
  transformer called with the axes it expects and NO mask, ``ln_final``, row i at
  ``token_ids[i].argmax()``, projected. Bidirectional attention: every position is computed.

Image side: ``model.encode_image`` (its ``visual`` tower), with the model's validation transform.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from models.towers.base import ImageTower, TextTower
from models.towers.common import project
from models.towers.layout import causal_prefix_length
from models.towers.tokenizers import OpenClipTokenizer
from utils.errors import InputError, one_line


class OpenClipTextTower(TextTower):
    """Frozen open_clip text transformer (from ``CLIP`` or ``CustomTextCLIP.text``)."""

    def __init__(self, text_parts: nn.Module, logit_scale: torch.Tensor, model_name: str, is_clip: bool):
        super().__init__()
        self.token_table = text_parts.token_embedding
        self.positional_embedding = text_parts.positional_embedding
        self.transformer = text_parts.transformer
        self.ln_final = text_parts.ln_final
        self.text_projection = text_parts.text_projection
        mask = text_parts.attn_mask
        self.register_buffer("attn_mask", None if mask is None else mask.clone(), persistent=False)
        self.pool_type = text_parts.text_pool_type if is_clip else text_parts.pool_type
        self.eos_id = text_parts.text_eos_id if is_clip else text_parts.eos_id
        self.logit_scale = nn.Parameter(logit_scale.detach().float().reshape(()).clone())
        self.width = int(self.token_table.weight.shape[1])
        self.embed_dim = int(project(torch.zeros(1, self.width), self.text_projection).shape[-1])
        self.context_length = int(self.positional_embedding.shape[0])
        self.tokenizer = OpenClipTokenizer(model_name, self.context_length)

    def tokenize(self, texts):
        return self.tokenizer(texts)

    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count_tokens(text)

    def token_embedding(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.token_table(token_ids)

    def pool_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        n, length = token_ids.shape
        if self.pool_type == "eos":
            return (token_ids == self.eos_id).int().argmax(dim=-1)
        if self.pool_type in ("first", "last"):
            pos = 0 if self.pool_type == "first" else length - 1
            return torch.full((n,), pos, dtype=torch.long, device=token_ids.device)
        return token_ids.argmax(dim=-1)

    def encode_embeddings(
        self, embeddings: torch.Tensor, token_ids: torch.Tensor, released_layout: bool = False
    ) -> torch.Tensor:
        rows = torch.arange(embeddings.shape[0], device=embeddings.device)
        if released_layout:
            x = embeddings + self.positional_embedding[: embeddings.shape[1]]
            x = self.transformer(x)  # no mask
            return project(self.ln_final(x[rows, token_ids.argmax(dim=-1)]), self.text_projection)
        pool = self.pool_positions(token_ids)
        keep = embeddings.shape[1] if self.attn_mask is None else causal_prefix_length(pool)
        x = embeddings[:, :keep] + self.positional_embedding[:keep]
        mask = None if self.attn_mask is None else self.attn_mask[:keep, :keep]
        x = self.transformer(x, attn_mask=mask)
        return project(self.ln_final(x[rows, pool]), self.text_projection)


class OpenClipImageTower(ImageTower):
    """Frozen open_clip image tower (``model.encode_image``: ``visual(images)``, unnormalised)."""

    def __init__(self, visual: nn.Module, preprocess, embed_dim: int):
        super().__init__()
        self.visual = visual
        self.preprocess = preprocess
        self.embed_dim = int(embed_dim)
        size = getattr(visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


def is_open_clip_folder(folder: Path) -> bool:
    return (folder / "open_clip_config.json").is_file()


def _folder_has_weights(folder: Path) -> bool:
    return any(any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.pth", "*.pt"))


def load_open_clip(spec: str, sides: tuple[str, ...]) -> tuple[TextTower | None, ImageTower | None]:
    """Load ``spec`` = a local folder (open_clip_config.json + weights) or ``ARCH:/path/to/weights``."""
    import open_clip

    folder = Path(spec)
    if folder.is_dir():
        if not is_open_clip_folder(folder) or not _folder_has_weights(folder):
            raise InputError(f"{folder}: an open_clip folder needs open_clip_config.json and a weights file")
        try:
            cfg = json.loads((folder / "open_clip_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputError(f"{folder / 'open_clip_config.json'}: {one_line(err)}") from err
        model_name, pretrained, shown = f"local-dir:{folder}", None, str(folder)
        text_cfg = cfg.get("model_cfg", {}).get("text_cfg", {})
    else:
        arch, _, weights = spec.partition(":")
        if not Path(weights).is_file():
            raise InputError(f"--text_tower {spec}: checkpoint file {weights} not found")
        model_name, pretrained, shown = arch, weights, weights
        text_cfg = (open_clip.get_model_config(arch) or {}).get("text_cfg", {})
    if text_cfg.get("hf_model_name") or text_cfg.get("embed_cls") or text_cfg.get("no_causal_mask"):
        raise InputError(
            f"{shown}: unsupported open_clip text tower (HF text model, CoCa cls token or no causal mask)"
        )
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    except Exception as err:
        raise InputError(f"{shown}: could not load the open_clip model ({one_line(err)})") from err
    model = model.float().eval()
    is_clip = hasattr(model, "token_embedding")
    text_tower = image_tower = None
    if "text" in sides:
        parts = model if is_clip else model.text
        text_tower = OpenClipTextTower(parts, model.logit_scale, model_name, is_clip)
    if "image" in sides:
        embed_dim = (
            getattr(model.visual, "output_dim", None)
            or model.visual(torch.zeros(1, 3, *_as_pair(model.visual.image_size))).shape[-1]
        )
        image_tower = OpenClipImageTower(model.visual, preprocess, embed_dim)
    return text_tower, image_tower


def _as_pair(size) -> tuple[int, int]:
    return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))
