"""Top-k slide logits (docs/method.md section 6) by hand."""

from __future__ import annotations

import torch

from models.hivemil.slide_logits import topk_class_logits


def test_topk_logits_by_hand_with_k_clipping():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])  # 2 classes x 2 texts
    sim = image @ text.t()
    # k_max = 2 -> k = 2
    per_text = torch.stack([sim[:, j].topk(2).values.mean() for j in range(4)]) * 3.0
    expected = per_text.reshape(2, 2).mean(1)
    got = topk_class_logits(image, text, 2, 2, torch.tensor(3.0))
    assert torch.allclose(got, expected)
    # k_max = 100 > N -> all images
    per_text = sim.mean(0) * 3.0
    assert torch.allclose(
        topk_class_logits(image, text, 2, 100, torch.tensor(3.0)), per_text.reshape(2, 2).mean(1)
    )


def test_topk_logits_without_images_are_zero():
    assert torch.equal(
        topk_class_logits(torch.zeros(0, 2), torch.randn(4, 2), 2, 5, torch.tensor(1.0)), torch.zeros(2)
    )
