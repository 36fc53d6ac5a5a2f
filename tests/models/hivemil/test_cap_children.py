"""Seeded cap on 20x children per parent (--max-children)."""

from __future__ import annotations

import torch


def test_cap_children_keeps_real_children_first_and_is_seeded():
    from models.hivemil.model import cap_children

    valid = torch.tensor([[True, False, True, True, False], [False, False, False, False, True]])
    rows = torch.arange(10.0).reshape(2, 5, 1)
    r1, v1 = cap_children(rows, valid, 2)
    r2, v2 = cap_children(rows, valid, 2)
    assert torch.equal(r1, r2) and torch.equal(v1, v2)
    assert v1[0].all()  # row 0 has 3 real children: two of them are kept
    assert set(r1[0, :, 0].tolist()) <= {0.0, 2.0, 3.0}
    assert v1[1].tolist().count(True) == 1 and 9.0 in r1[1, :, 0].tolist()  # the single real child survives
