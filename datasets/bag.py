"""The in-memory form of one slide: what every model's ``forward`` receives."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SlideBag:
    """Features of one slide at two magnifications, aligned by 5x patch.

    Attributes:
        slide_id: slide identifier (file stem).
        x5: [N5, D] float32 features of the 5x patches.
        x20: [N5, M, D] float32 features of the 20x children of each 5x patch (row i belongs to x5[i]),
            zero-padded to M (16 for 5x->20x). A 5x patch without children has an all-padding row.
        child_mask: [N5, M] bool, True where x20 holds a real child.
        label: int class index (or -1 when unknown).
        coords5: [N5, 2] int64 level-0 top-left coordinates of the 5x patches (optional).
        coords20: [N5, M, 2] int64 coordinates of the children, zeros where padded (optional).
    """

    slide_id: str
    x5: torch.Tensor
    x20: torch.Tensor
    child_mask: torch.Tensor
    label: int = -1
    coords5: torch.Tensor | None = None
    coords20: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num_5x(self) -> int:
        return int(self.x5.shape[0])

    @property
    def num_20x(self) -> int:
        return int(self.child_mask.sum())

    @property
    def feature_dim(self) -> int:
        return int(self.x5.shape[1])

    def to(self, device: torch.device | str) -> SlideBag:
        """Return a copy with all tensors on ``device``."""

        def move(t):
            return None if t is None else t.to(device, non_blocking=True)

        return SlideBag(
            slide_id=self.slide_id,
            x5=move(self.x5),
            x20=move(self.x20),
            child_mask=move(self.child_mask),
            label=self.label,
            coords5=move(self.coords5),
            coords20=move(self.coords20),
            meta=dict(self.meta),
        )
