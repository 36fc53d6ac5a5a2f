"""Slide bags from .pt / .pth tensor files (datasets.tensor_bag.read_tensor_bag, docs/formats.md §8)."""

from __future__ import annotations

import pytest
import torch

from datasets.tensor_bag import read_tensor_bag
from tests.mini_run import P5, make_bag
from utils.errors import InputError


def test_tensor_bag_forms(tmp_path):
    from datasets.hierarchy import patch_px

    bag = make_bag(seed=4)
    path = tmp_path / "rows.pt"
    torch.save({"x5": bag.x5, "x20": bag.x20, "coords5": bag.coords5, "coords20": bag.coords20}, path)
    loaded = read_tensor_bag(path, "s", 64)
    assert torch.equal(loaded.child_mask, bag.child_mask) and torch.equal(loaded.x20, bag.x20)
    assert "level0_mag" not in loaded.meta and not loaded.meta.get("flat")

    flat20 = bag.x20[bag.child_mask]
    torch.save(
        {"x5": bag.x5, "coords5": bag.coords5, "x20": flat20, "coords20": bag.coords20[bag.child_mask],
         "level0_mag": 40},
        tmp_path / "linked.pt",
    )  # fmt: skip
    linked = read_tensor_bag(tmp_path / "linked.pt", "s", 64)
    assert torch.equal(linked.child_mask, bag.child_mask) and torch.equal(linked.x20, bag.x20)
    assert torch.equal(linked.coords20, bag.coords20) and linked.meta["level0_mag"] == 40
    assert patch_px(40, 5) == P5

    torch.save(torch.randn(7, 64), tmp_path / "plain.pt")
    plain = read_tensor_bag(tmp_path / "plain.pt", "p", 64, label=2)
    assert plain.meta["flat"] and plain.num_5x == 7 and plain.num_20x == 7 and plain.label == 2

    bad = {
        "no_x20.pt": {"x5": bag.x5},
        "dims.pt": {"features": torch.randn(3, 8)},
        "nan.pt": {"features": torch.full((3, 64), float("nan"))},
        "keys.pt": {"other": torch.zeros(1)},
        "unlinkable.pt": {"x5": bag.x5, "x20": flat20},
        "list.pt": [torch.zeros(2, 64)],
    }
    for name, obj in bad.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(InputError) as err:
            read_tensor_bag(tmp_path / name, "b", 64)
        assert "\n" not in str(err.value) and name in str(err.value)
