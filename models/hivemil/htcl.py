"""Hierarchical text contrastive loss, HTCL (docs/method.md §7, paper Eq. for L_HTCL).

For coarse text i (C*4 of them) with GNN embedding ``c_i`` and its three fine texts, the anchor is
``a_i = mean(fine_i1, fine_i2, fine_i3)``. With ``pos_i = cos(a_i, c_i)`` and ``neg_i`` the mean
similarity of ``a_i`` to the anchors of the *other* classes:

    L_HTCL = mean_i [ -log sigmoid(pos_i - neg_i) ]

The released code masks the anchor-anchor matrix to other-class pairs and then takes its *diagonal*,
which the mask has just zeroed, so ``neg_i = 0`` always (``negatives="zero"``). ``negatives="real"``
uses the row mean over other-class anchors, with cosine similarity like the positive term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_labels_of_texts(num_texts: int, num_classes: int, device=None) -> torch.Tensor:
    """Class index of each of ``num_texts`` texts stored class by class."""
    return torch.arange(num_texts, device=device) // (num_texts // num_classes)


def hierarchical_text_contrastive_loss(
    coarse: torch.Tensor, fine: torch.Tensor, num_classes: int, negatives: str = "zero"
) -> torch.Tensor:
    """HTCL value. ``coarse`` [C*T5, D], ``fine`` [C*T5*r, D] with fine row ``r*i + j`` refining coarse ``i``."""
    n = coarse.shape[0]
    anchor = fine.reshape(n, fine.shape[0] // n, -1).mean(dim=1)
    pos = F.cosine_similarity(anchor, coarse, dim=-1)
    if negatives == "zero":
        # released form, -log(sigmoid(pos - 0)): same value as logsigmoid, and the released rounding
        return -torch.log(torch.sigmoid(pos)).mean()
    elif negatives == "real":
        labels = class_labels_of_texts(n, num_classes, coarse.device)
        other = (labels[:, None] != labels[None, :]).to(anchor.dtype)
        unit = F.normalize(anchor, dim=-1)
        neg = ((unit @ unit.t()) * other).sum(1) / other.sum(1).clamp_min(1.0)
    else:
        raise ValueError(f"negatives must be 'zero' or 'real', got {negatives!r}")
    return -F.logsigmoid(pos - neg).mean()
