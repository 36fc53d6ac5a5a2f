"""One survival case as one bag: all its slides' patches together (docs/survival.md §2).

A case's slides are loaded one by one (:func:`datasets.features.read_slide_bag`, with every check of a
classification slide) and concatenated along the 5x rows: ``x5`` rows of slide 1, then slide 2, ...;
the hierarchical rows follow the same order, so ``x20[i]`` still holds the children of ``x5[i]`` and
parent-child links stay within a slide. Child slots are zero-padded to the widest slide. Coordinates
keep each slide's own level-0 frame; ``slide_rows`` says where each slide's rows start.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from datasets.bag import SlideBag
from datasets.bag_dataset import BagDataset
from datasets.features import FeatureLayout, read_slide_bag
from datasets.survival import SurvivalCase


@dataclass
class CaseBag(SlideBag):
    """A :class:`SlideBag` over all slides of one case (``slide_id`` is the case id), plus its outcome.

    Attributes:
        case_id: the patient.
        months: survival or follow-up time in months.
        censorship: 1 censored, 0 event.
        slide_ids: the case's slides, in row order.
        slide_rows: first 5x row of each slide in ``x5``.
    """

    case_id: str = ""
    months: float = math.nan
    censorship: int = 0
    slide_ids: tuple[str, ...] = ()
    slide_rows: tuple[int, ...] = ()

    def to(self, device: torch.device | str) -> CaseBag:
        moved = super().to(device)
        return dataclasses.replace(
            self,
            x5=moved.x5,
            x20=moved.x20,
            child_mask=moved.child_mask,
            coords5=moved.coords5,
            coords20=moved.coords20,
            meta=dict(self.meta),
        )


def _pad_slots(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dimension 1 (child slots) of ``t`` with zeros / False up to ``width``."""
    if t.shape[1] == width:
        return t
    pad = t.new_zeros((t.shape[0], width - t.shape[1], *t.shape[2:]))
    return torch.cat([t, pad], dim=1)


def concat_case_bag(case: SurvivalCase, bags: Sequence[SlideBag], label: int) -> CaseBag:
    """The case bag of ``case`` from its slides' bags (in the case's slide order)."""
    if not bags:
        raise ValueError(f"case {case.case_id}: no slide bags to concatenate")
    width = max(int(b.x20.shape[1]) for b in bags)
    starts, total = [], 0
    for b in bags:
        starts.append(total)
        total += b.num_5x
    with_coords = all(b.coords5 is not None and b.coords20 is not None for b in bags)
    return CaseBag(
        slide_id=case.case_id,
        x5=torch.cat([b.x5 for b in bags]),
        x20=torch.cat([_pad_slots(b.x20, width) for b in bags]),
        child_mask=torch.cat([_pad_slots(b.child_mask, width) for b in bags]),
        label=int(label),
        coords5=torch.cat([b.coords5 for b in bags]) if with_coords else None,
        coords20=torch.cat([_pad_slots(b.coords20, width) for b in bags]) if with_coords else None,
        meta={"slides": [b.slide_id for b in bags]},
        case_id=case.case_id,
        months=float(case.months),
        censorship=int(case.censorship),
        slide_ids=tuple(b.slide_id for b in bags),
        slide_rows=tuple(starts),
    )


class CaseBagDataset(BagDataset):
    """``dataset[i]`` is the :class:`CaseBag` of ``cases[i]`` with label ``labels[i]`` (its survival bin),
    held in the same bounded LRU cache as slide bags (:class:`datasets.bag_dataset.BagDataset`)."""

    def __init__(
        self,
        layout: FeatureLayout,
        cases: Sequence[SurvivalCase],
        labels: Sequence[int],
        cache_mb: float = 2048,
        expected_dim: int | None = None,
    ):
        super().__init__(layout, [c.case_id for c in cases], list(labels), cache_mb, expected_dim)
        self.cases = list(cases)

    @property
    def case_ids(self) -> list[str]:
        return self.slide_ids

    def _read(self, index: int) -> CaseBag:
        case, label = self.cases[index], self.labels[index]
        bags = [read_slide_bag(self.layout, s, label, expected_dim=self.expected_dim) for s in case.slides]
        return concat_case_bag(case, bags, label)
