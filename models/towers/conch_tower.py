"""CONCH adapter: the CoCa model of ``conch-fork`` (``conch.open_clip_custom``), from a ``pytorch_model.bin``.

Config: ``conch_config.json`` next to the checkpoint when present (same schema as conch-fork's
``model_configs/*.json``; tiny test models use it), else conch-fork's ``conch_ViT-B-16`` (the real CONCH).
Only the requested sides are built, with conch-fork's own tower builders (the ones ``CoCa.__init__``
calls); the captioning decoder is never built.

Text side (conch-fork ``TextTransformer``: sequence-first ``transformer`` taking [L, N, W], appended
``cls_emb``, ``positional_embedding`` [context_length, W], ``ln_final``, ``text_projection`` [W, D]):

* ``released_layout=False`` is ``CoCa.encode_text(ids, normalize=False)`` computed from token
  embeddings: drop the last position (the placeholder the tokenizer added), append ``cls_emb``, add
  positional embeddings, causal mask plus conch-fork's cls-row padding mask, ``ln_final`` on the cls
  output, ``@ text_projection``. conch-fork's cls mask is shifted by one column (the cls row always
  sees column 0 and sees column j >= 1 iff token j-1 is not padding, so it also sees the first pad
  and, unless the text fills every slot, not itself); we reproduce it exactly. Exact short-cut: token
  positions the cls row cannot see only feed later (masked) positions, so the sequence is cut after
  the last column any cls row can see, and the cls embedding keeps its own position (index L-1).
* ``released_layout=True`` is the released HiVE-MIL ``TextEncoder`` for CONCH:
  ``x = embeddings + positional_embedding``, permuted to [L, N, W] (the right axes for this
  transformer), ``transformer(x)`` with NO mask (no causal mask, no pad mask, no cls embedding),
  permuted back, ``ln_final``, row i at ``token_ids[i].argmax()`` (the largest token id, i.e. some
  word, not the end token: CONCH's end id is 2), ``@ text_projection``. Bidirectional attention
  means every position reaches the output, so nothing can be skipped.

Image side: ``CoCa.encode_image(x, proj_contrast=True, normalize=False)`` (attentional pooler,
``ln_contrast``, ``@ proj_contrast``) without computing the captioning pooler.
"""

from __future__ import annotations

import copy
import json
import types
import warnings
from pathlib import Path

import torch
from torch import nn

from models.towers.base import ImageTower, TextTower
from models.towers.tokenizers import ConchTokenizer
from utils.errors import InputError, one_line

CONCH_CONFIG_NAME = "conch_config.json"  # optional sidecar next to pytorch_model.bin
DEFAULT_CONCH_ARCH = "conch_ViT-B-16"


def _conch_modules():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm deprecation warning on import
        from conch.open_clip_custom import coca_model, constants, transform
        from conch.open_clip_custom.factory import CFG_DIR
    return coca_model, constants, transform, CFG_DIR


class ConchTextTower(TextTower):
    """Frozen CONCH (CoCa) text tower."""

    released_xavier_attention = False  # the released CONCH model file keeps the default init

    def __init__(self, text: nn.Module, logit_scale: nn.Parameter):
        super().__init__()
        self.text = text
        self.logit_scale = logit_scale
        self.width = int(text.width)
        self.embed_dim = int(text.text_projection.shape[1])
        self.context_length = int(text.context_length)
        self.heads = int(text.heads)
        self.pad_id = int(text.pad_id)
        self.tokenizer = ConchTokenizer(self.context_length)

    def tokenize(self, texts):
        return self.tokenizer(texts)

    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count_tokens(text)

    def token_embedding(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.text.token_embedding(token_ids)

    def pool_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """CoCa pools its appended cls embedding, which takes the place (and position) of the last slot."""
        n, length = token_ids.shape
        return torch.full((n,), length - 1, dtype=torch.long, device=token_ids.device)

    def encode_embeddings(
        self, embeddings: torch.Tensor, token_ids: torch.Tensor, released_layout: bool = False
    ) -> torch.Tensor:
        if released_layout:
            return self._encode_released(embeddings, token_ids)
        return self._encode_own(embeddings, token_ids)

    def _encode_released(self, embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        text = self.text
        x = embeddings + text.positional_embedding[: embeddings.shape[1]]
        x = text.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # [L, N, W] in and out; no mask
        rows = torch.arange(x.shape[0], device=x.device)
        x = text.ln_final(x[rows, token_ids.argmax(dim=-1)])
        return x @ text.text_projection

    def _encode_own(self, embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        text = self.text
        tokens, x = token_ids[:, :-1], embeddings[:, :-1]  # CoCa.encode_text drops the placeholder slot
        n, s = tokens.shape
        # Columns the cls row may attend to (conch-fork's build_cls_mask, shifted by one): [N, S + 1].
        cls_sees = torch.cat([tokens.new_ones(n, 1, dtype=torch.bool), tokens != self.pad_id], dim=1)
        col_rank = torch.arange(1, s + 1, device=tokens.device)
        keep = int((cls_sees[:, :s].long() * col_rank).max().item())  # last visible token column + 1
        kept = torch.cat([torch.arange(keep, device=tokens.device), torch.tensor([s], device=tokens.device)])
        cls = text.cls_emb.reshape(1, 1, -1).expand(n, 1, -1)
        x = torch.cat([x[:, :keep], cls], dim=1) + text.positional_embedding[kept]
        allowed = (kept[None, :] <= kept[:, None]).expand(n, -1, -1).clone()  # causal, original positions
        allowed[:, -1, :] &= cls_sees[:, kept]
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill_(
            ~allowed, float("-inf")
        )
        mask = mask.repeat_interleave(self.heads, dim=0)  # [N * heads, T, T], batch-major like conch-fork
        x = text.transformer(x.permute(1, 0, 2), attn_mask=mask).permute(1, 0, 2)
        pooled = text.ln_final(x[:, -1])
        return pooled @ text.text_projection


class ConchImageTower(ImageTower):
    """Frozen CONCH image tower: projected contrastive embedding (``proj_contrast=True``, unnormalised)."""

    def __init__(self, visual: nn.Module, preprocess, embed_dim: int):
        super().__init__()
        self.visual = visual
        self.preprocess = preprocess
        self.embed_dim = int(embed_dim)
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        if visual.use_attentional_pool_contrast:  # CONCH: skip the 256-query captioning pooler
            return visual.forward_project(visual.forward_no_head(images, normalize=False))
        out = visual(images)
        return out[0] if isinstance(out, tuple) else out


def read_conch_config(checkpoint: Path) -> dict:
    """The CoCa config for ``checkpoint``: the ``conch_config.json`` sidecar, else conch_ViT-B-16."""
    sidecar = checkpoint.parent / CONCH_CONFIG_NAME
    if sidecar.is_file():
        path = sidecar
    else:
        path = _conch_modules()[3] / f"{DEFAULT_CONCH_ARCH}.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable CONCH config ({one_line(err)})") from err
    cfg.pop("custom_text", None)
    missing = {"embed_dim", "text_cfg", "vision_cfg"} - set(cfg)
    if missing:
        raise InputError(f"{path}: CONCH config lacks {sorted(missing)}")
    return cfg


def read_conch_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Tensors of a CONCH ``pytorch_model.bin`` (plain or ``{"state_dict": ...}``, ``module.`` stripped)."""
    try:
        obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"{checkpoint}: not a readable PyTorch checkpoint ({one_line(err)})") from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"{checkpoint}: expected a state_dict of CONCH weights")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _load_part(module: nn.Module, state: dict, prefix: str, checkpoint: Path) -> None:
    part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    part.pop("attn_mask", None)  # a non-persistent buffer in conch-fork
    try:
        result = module.load_state_dict(part, strict=False)
    except RuntimeError as err:  # shape mismatch
        raise InputError(f"{checkpoint}: weights do not fit the CONCH config ({one_line(err)})") from err
    if result.missing_keys:
        shown = ", ".join(prefix + k for k in result.missing_keys[:3])
        raise InputError(
            f"{checkpoint}: not a CONCH checkpoint for this config, missing {len(result.missing_keys)} "
            f"weights ({shown}, ...); an open_clip checkpoint needs ARCH:/path/to/file"
        )


def load_conch(checkpoint: Path, sides: tuple[str, ...]) -> tuple[TextTower | None, ImageTower | None]:
    """Build the requested CONCH towers from ``checkpoint`` (and its optional config sidecar)."""
    coca_model, constants, transform, _ = _conch_modules()
    cfg = read_conch_config(checkpoint)
    state = read_conch_state_dict(checkpoint)
    text_tower = image_tower = None
    if not dict(cfg["text_cfg"]).get("embed_cls", False):
        raise InputError(f"{checkpoint}: CONCH config must have text_cfg.embed_cls = true (CoCa text tower)")
    # The whole CoCa model is built, as conch-fork's create_model does (text, vision, decoder): the
    # released run loads CONCH that way after seeding, so its default initialisations consume the same
    # global-RNG draws before HiVE-MIL's own layers are created (same seed, same initial weights).
    whole = coca_model.CoCa(**copy.deepcopy(cfg))
    if "text" in sides:
        text = whole.text
        _load_part(text, state, "text.", checkpoint)
        if "logit_scale" not in state:
            raise InputError(f"{checkpoint}: no logit_scale in the CONCH checkpoint")
        logit_scale = nn.Parameter(state["logit_scale"].detach().float().reshape(()).clone())
        text_tower = ConchTextTower(text.float(), logit_scale)
    if "image" in sides:
        visual = whole.visual
        if "visual.trunk.pos_embed" in state:  # conch-fork's own resize for other image sizes
            coca_model.resize_pos_embed(state, types.SimpleNamespace(visual=visual))
        _load_part(visual, state, "visual.", checkpoint)
        preprocess = transform.image_transform(
            visual.image_size, mean=constants.OPENAI_DATASET_MEAN, std=constants.OPENAI_DATASET_STD
        )
        image_tower = ConchImageTower(visual.float(), preprocess, cfg["embed_dim"])
    del whole
    return text_tower, image_tower
