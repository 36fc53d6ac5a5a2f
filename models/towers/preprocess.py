"""Image preprocessing callables (PIL image -> float tensor [3, H, W]) for the image towers.

Module-level classes and functions only, so the transforms pickle into DataLoader worker processes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (RGBA, L, ...) to RGB."""
    return image.convert("RGB")


def clip_style_transform(image_size: int, mean=CLIP_MEAN, std=CLIP_STD):
    """CLIP's default transform: bicubic resize of the short side, center crop, RGB, [0, 1], normalise."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            to_rgb,
            T.ToTensor(),
            T.Normalize(mean=mean, std=std),
        ]
    )


def imagenet_transform(image_size: int, interpolation: str = "bilinear"):
    """Resize of the short side (``bilinear`` or ``bicubic``), center crop, RGB, [0, 1], ImageNet mean/std."""
    from torchvision import transforms as T

    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[interpolation]
    return T.Compose(
        [
            T.Resize(image_size, interpolation=mode),
            T.CenterCrop(image_size),
            to_rgb,
            T.ToTensor(),
            T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


class HFProcessorTransform:
    """The folder's own ``CLIPImageProcessor`` (``preprocessor_config.json``) as a PIL -> tensor callable."""

    def __init__(self, folder: str | Path):
        from transformers import CLIPImageProcessor

        self.processor = CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=to_rgb(image), return_tensors="pt")["pixel_values"][0]
