"""Learnable prompt context over the frozen text tower (docs/method.md §2, CoOp style).

Each description ``"<term> : <explanation>"`` is tokenized as ``"X X ... X <term> : <explanation>"``
(``n_ctx`` placeholder tokens). The embeddings of the placeholders are replaced by ``n_ctx`` learnable
context vectors (shared by all classes, or one set per class), initialised N(0, 0.02). The prompt
embeddings of every class are encoded by the text tower into text features; the first
``num_low_mag_texts`` rows of each class are the 5x (coarse) texts, the rest the 20x (fine) texts.

Positions of the context (``class_token_position``):
    ``end``    [SOT] ctx description [EOT] ...
    ``middle`` [SOT] ctx[:n/2] description ctx[n/2:] [EOT] ...
    ``front``  [SOT] description ctx [EOT] ...

For ``middle`` and ``front`` the released code measures the description as the token count of the
*whole* prompt string (placeholders included), so its "description" slice runs ``n_ctx`` tokens past
the real description into the end token and padding, while pooling still happens at the original
end-token position. ``released_name_lengths=True`` reproduces that; ``False`` uses the description's
own token count, so the end token stays where the tower pools.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from datasets.prompt_file import with_context_placeholders
from models.towers.base import TextTower

POSITIONS = ("end", "middle", "front")


class PromptLearner(nn.Module):
    """Holds the learnable context ``ctx`` and the frozen token embeddings around it.

    Args:
        tower: frozen text tower.
        class_prompts: per class (in class order), the description strings ``"<term> : <explanation>"``
            (coarse first, then fine).
        n_ctx: number of learnable context tokens.
        class_specific: one context per class (``ctx`` [C, n_ctx, W]) instead of a shared one ([n_ctx, W]).
        position: ``end`` | ``middle`` | ``front``.
        released_name_lengths: see the module docstring.
    """

    def __init__(
        self,
        tower: TextTower,
        class_prompts: Sequence[Sequence[str]],
        n_ctx: int = 16,
        class_specific: bool = False,
        position: str = "end",
        released_name_lengths: bool = True,
    ):
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"class_token_position must be one of {POSITIONS}, got {position!r}")
        if n_ctx < 0:
            raise ValueError("n_ctx must be >= 0")
        self.n_ctx = n_ctx
        self.position = position
        self.num_classes = len(class_prompts)
        width = tower.width
        ctx_shape = (self.num_classes, n_ctx, width) if class_specific else (n_ctx, width)
        ctx = torch.empty(ctx_shape)
        nn.init.normal_(ctx, std=0.02)
        self.ctx = nn.Parameter(ctx)

        token_ids, prefixes, suffixes, name_lens = [], [], [], []
        for descriptions in class_prompts:
            full = [with_context_placeholders(d, n_ctx) for d in descriptions]
            ids = tower.tokenize(full)
            with torch.no_grad():
                emb = tower.token_embedding(ids.to(tower.logit_scale.device)).float().cpu()
            token_ids.append(ids)
            prefixes.append(emb[:, :1])
            suffixes.append(emb[:, 1 + n_ctx :])
            # Tokens of the prompt without start/end tokens (see module docstring).
            if released_name_lengths:
                name_lens.append([tower.count_tokens(t) - 2 for t in full])
            else:
                name_lens.append([tower.count_tokens(d) - 2 for d in descriptions])
        # Frozen per-class tensors: buffers (follow .to(device)) kept out of the state_dict.
        for c in range(self.num_classes):
            self.register_buffer(f"token_ids_{c}", token_ids[c], persistent=False)
            self.register_buffer(f"token_prefix_{c}", prefixes[c], persistent=False)
            self.register_buffer(f"token_suffix_{c}", suffixes[c], persistent=False)
        self.name_lens = name_lens

    def token_ids(self, c: int) -> torch.Tensor:
        """[T, L] token ids of class ``c``'s prompts."""
        return getattr(self, f"token_ids_{c}")

    def class_context(self, c: int, num_prompts: int) -> torch.Tensor:
        """[T, n_ctx, W] context vectors for class ``c`` expanded over its prompts."""
        ctx = self.ctx if self.ctx.dim() == 2 else self.ctx[c]
        return ctx.unsqueeze(0).expand(num_prompts, -1, -1)

    def class_embeddings(self, c: int) -> torch.Tensor:
        """[T, L, W] prompt embeddings of class ``c`` with the context spliced in."""
        prefix = getattr(self, f"token_prefix_{c}")
        ctx = self.class_context(c, prefix.shape[0]).to(prefix.dtype)
        return self._splice(c, prefix, ctx, getattr(self, f"token_suffix_{c}"))

    def context_mask(self, c: int) -> torch.Tensor:
        """[T, L] True at the positions of class ``c``'s prompts that hold a context vector."""
        prefix = getattr(self, f"token_prefix_{c}")
        suffix = getattr(self, f"token_suffix_{c}")
        marks = [torch.zeros(t.shape[:2] + (1,), dtype=torch.bool, device=t.device) for t in (prefix, suffix)]
        ctx = torch.ones(prefix.shape[0], self.n_ctx, 1, dtype=torch.bool, device=prefix.device)
        return self._splice(c, marks[0], ctx, marks[1]).squeeze(-1)

    def _splice(self, c: int, prefix: torch.Tensor, ctx: torch.Tensor, suffix: torch.Tensor) -> torch.Tensor:
        """Prefix, context and suffix [T, *, W] of class ``c`` laid out at ``self.position``."""
        if self.position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        rows = []
        half = self.n_ctx // 2
        for i, name_len in enumerate(self.name_lens[c]):
            desc, rest = suffix[i : i + 1, :name_len], suffix[i : i + 1, name_len:]
            if self.position == "middle":
                parts = [prefix[i : i + 1], ctx[i : i + 1, :half], desc, ctx[i : i + 1, half:], rest]
            else:  # front
                parts = [prefix[i : i + 1], desc, ctx[i : i + 1], rest]
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0)

    def forward(self) -> list[torch.Tensor]:
        """Prompt embeddings, one [T, L, W] tensor per class."""
        return [self.class_embeddings(c) for c in range(self.num_classes)]
