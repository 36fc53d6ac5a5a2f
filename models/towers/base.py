"""One interface for the frozen vision-language towers (PLIP/QuiltNet, CONCH, open_clip).

HiVE-MIL uses only the text side of a tower at training time (image features are precomputed); the
feature-extraction CLI uses the image side. Each adapter wraps one library's model and exposes the
pieces the prompt learner needs (token embedding, positional embedding, encoder, final norm,
projection, logit scale, tokenizer, end-token pooling) through :class:`TextTower`, and the image
encoder through :class:`ImageTower`. Nothing else in the project touches library-specific model code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


class TextTower(nn.Module):
    """Frozen text side of a vision-language model.

    Attributes (set by adapters):
        width: transformer width (dimension of token embeddings and context vectors).
        embed_dim: dimension of the projected (joint) embedding space.
        context_length: number of token positions the tokenizer produces.
        logit_scale: the model's learned log temperature (a frozen ``nn.Parameter``, scalar).
        released_xavier_attention: whether the released HiVE-MIL for this tower re-initialises its
            attention's scale embedding and q/k projections with Xavier-normal values (its Hugging Face
            model file does; its CONCH file keeps PyTorch's default init): same seed, same weights.
    """

    width: int
    embed_dim: int
    context_length: int
    logit_scale: nn.Parameter
    released_xavier_attention: bool = True

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [N, context_length] (long), truncated and padded as the tower expects."""
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` needs (start/end tokens included, before truncation)."""
        raise NotImplementedError

    def token_embedding(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [N, L, width] (no positional embedding)."""
        raise NotImplementedError

    def pool_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """[N] index of the position whose output the tower pools (its end-of-text token)."""
        raise NotImplementedError

    def encode_embeddings(
        self, embeddings: torch.Tensor, token_ids: torch.Tensor, released_layout: bool = False
    ) -> torch.Tensor:
        """Projected text features [N, embed_dim] from token embeddings [N, L, width].

        ``embeddings`` are token embeddings with learned context vectors spliced in (no positional
        embedding yet). ``released_layout=False`` is the tower's own text path (causal mask, batch-first,
        pooled where the tower pools, its projection). ``released_layout=True`` reproduces how the
        released HiVE-MIL code calls the tower (docs/divergences.md §1); adapters document
        their exact deviations. Both compute only the token positions that reach the pooled output.
        """
        raise NotImplementedError

    def positions_read(self, token_ids: torch.Tensor, released_layout: bool = False) -> torch.Tensor | None:
        """Sequence positions whose input embeddings reach :meth:`encode_embeddings`' output for
        ``token_ids`` [N, L] (the same positions of every row), or None when that is not known or the
        output is not a deterministic function of them (e.g. active dropout). A caller whose learned
        inputs sit at none of these positions gets features that do not depend on them."""
        return None

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Plain (unprompted) text features [N, embed_dim] through the tower's own text path."""
        ids = self.tokenize(texts).to(self.logit_scale.device)
        return self.encode_embeddings(self.token_embedding(ids), ids, released_layout=False)


class ImageTower(nn.Module):
    """Frozen image side: ``encode_image`` maps a batch of preprocessed tiles to projected features."""

    embed_dim: int
    image_size: int
    preprocess: Callable  # PIL.Image -> tensor [3, H, W], the tower's own transform

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] preprocessed images -> [B, embed_dim] projected image features."""
        raise NotImplementedError


def check_joint_space(feature_dim: int, tower: TextTower, model_name: str) -> None:
    """Patch features must live in the tower's joint space for a model that compares them with texts."""
    from utils.errors import InputError

    if int(feature_dim) != tower.embed_dim:
        raise InputError(
            f"--feature_dim {feature_dim} does not match the text tower's embedding size {tower.embed_dim}; "
            f"{model_name} needs patch features from the same vision-language model"
        )


def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter and switch to eval mode; returns the module."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()
