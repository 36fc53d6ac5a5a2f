"""Image-only pathology backbones (no text tower) behind :class:`ImageTower`, loaded from local weights.

* ``resnet50_trunc``: torchvision ResNet50 up to ``layer3``, then adaptive average pooling: 1024-d
  features, as CLAM's truncated ResNet. Weights: a torchvision ResNet50 ``state_dict`` file (``.pth``,
  ``.pt``, ``.bin`` or ``.safetensors``); ``layer4.*`` and ``fc.*`` in a full checkpoint are ignored.
* ``uni``: timm ``vit_large_patch16_224`` built as UNI's model card specifies (``img_size=224,
  patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True``): the pooled CLS token,
  1024-d. Weights: UNI's ``pytorch_model.bin`` or a ``.safetensors`` state_dict (a file, or a folder
  holding ``pytorch_model.bin`` / ``model.safetensors``). An optional ``uni_config.json`` beside the
  weights overrides ``depth`` / ``embed_dim`` / ``num_heads`` / ``mlp_ratio`` (how tests load a tiny
  ViT through this same code; real UNI weights need no such file).
* ``phikon_v2``: ``transformers.AutoModel`` (Dinov2) from a local folder (``config.json`` with
  ``model_type: dinov2`` + weights), the CLS token of ``last_hidden_state``, 1024-d.

Each backbone has its own preprocessing (:data:`BACKBONES`): resize of the short side to 224 (bilinear
for ResNet50 and UNI as in torchvision's ``Resize``; bicubic for Phikon v2 as Dinov2's image processor),
center crop 224, ImageNet mean/std. State dicts are checked key by key and shape by shape before
loading, so a wrong or truncated file is one :class:`InputError` line naming what does not fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.towers.base import ImageTower
from models.towers.preprocess import imagenet_transform
from utils.errors import InputError, listed, one_line

WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")
UNI_ARCH = "vit_large_patch16_224"
UNI_KWARGS = {
    "img_size": 224,
    "patch_size": 16,
    "init_values": 1e-5,
    "num_classes": 0,
    "dynamic_img_size": True,
}
UNI_CONFIG_NAME = "uni_config.json"
UNI_OVERRIDES = ("depth", "embed_dim", "num_heads", "mlp_ratio")


@dataclass(frozen=True)
class Backbone:
    """One image-only backbone: what its weights are, where a cached copy may be, how tiles are prepared."""

    name: str
    weights: str  # what the weights flag must point at, for messages
    folder_files: tuple[str, ...]  # weight files looked for when given a folder (empty: the folder itself)
    interpolation: str
    image_size: int = 224
    hub_repo: str | None = None  # looked up in the local Hugging Face cache when no weights are given


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("resnet50_trunc", "a torchvision ResNet50 state_dict file (.pth)", (), "bilinear"),
        Backbone(
            "uni",
            "UNI's pytorch_model.bin (or a .safetensors state_dict), or its folder",
            ("pytorch_model.bin", "model.safetensors"),
            "bilinear",
            hub_repo="MahmoodLab/UNI",
        ),
        Backbone(
            "phikon_v2",
            "a local Phikon v2 folder (config.json with model_type dinov2 + weights)",
            (),
            "bicubic",
            hub_repo="owkin/phikon-v2",
        ),
    )
}


def is_backbone(name: str) -> bool:
    """Whether ``name`` is an image-only backbone (it has no text tower)."""
    return str(name).strip().lower() in BACKBONES


def backbone_location(name: str, source: Path, source_flag: str) -> Path:
    """The weights file (or, for ``phikon_v2``, folder) that ``source`` gives for backbone ``name``."""
    spec = BACKBONES[name]
    if not source.exists():
        raise InputError(f"{source_flag} {source}: not found (the {name} backbone needs {spec.weights})")
    if name == "phikon_v2":
        if not _is_dinov2_folder(source):
            raise InputError(f"{source_flag} {source}: the phikon_v2 backbone needs {spec.weights}")
        return source
    if source.is_dir():
        for file_name in spec.folder_files:
            if (source / file_name).is_file():
                return source / file_name
        raise InputError(
            f"{source_flag} {source}: a folder without weights; the {name} backbone needs {spec.weights}"
        )
    if source.suffix.lower() not in WEIGHT_SUFFIXES:
        raise InputError(f"{source_flag} {source}: not a weights file (.bin/.pt/.pth/.safetensors)")
    return source


def load_backbone(name: str, location: Path) -> ImageTower:
    """The image tower of backbone ``name`` with the weights at ``location`` (from :func:`backbone_location`)."""
    loader = {"resnet50_trunc": _load_resnet50_trunc, "uni": _load_uni, "phikon_v2": _load_phikon_v2}[name]
    tower = loader(Path(location))
    spec = BACKBONES[name]
    tower.image_size = spec.image_size
    tower.preprocess = imagenet_transform(spec.image_size, spec.interpolation)
    return tower


class ResNet50Trunc(ImageTower):
    """torchvision ResNet50 stem and ``layer1``-``layer3`` (same parameter names), then average pooling."""

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed_dim = 1024

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.pool(x), 1)


class TimmViTTower(ImageTower):
    """A timm ViT with ``num_classes=0``: its forward returns the pooled (CLS) feature."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.embed_dim = int(model.num_features)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


class Dinov2ClsTower(ImageTower):
    """A ``transformers`` Dinov2 model: the CLS token of ``last_hidden_state``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.embed_dim = int(model.config.hidden_size)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images).last_hidden_state[:, 0]


def build_uni(overrides: dict | None = None) -> nn.Module:
    """UNI's timm ViT-L/16 (random weights); ``overrides`` may change only :data:`UNI_OVERRIDES`."""
    import timm

    bad = sorted(set(overrides or {}) - set(UNI_OVERRIDES))
    if bad:
        raise InputError(f"{UNI_CONFIG_NAME}: only {listed(UNI_OVERRIDES)} may be set, not {listed(bad)}")
    return timm.create_model(UNI_ARCH, pretrained=False, **UNI_KWARGS, **(overrides or {}))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a ``.safetensors`` file or a torch pickle (tensors only; ``{"state_dict": ...}``
    and ``{"model": ...}`` wrappers are unwrapped)."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"{path}: could not read a state_dict ({one_line(err)})") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a state_dict (a mapping of parameter names to tensors)")
    return state


def load_checked(build, state: dict[str, torch.Tensor], path: Path, what: str) -> nn.Module:
    """``build()`` with the weights ``state``: every key and shape is checked first (one line when they do
    not fit). The module is built on the meta device and takes the file's tensors, so no random
    initialisation is spent on a large model."""
    with torch.device("meta"):
        module = build()
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label} {len(keys)} ({listed(keys, 3)})"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    ]
    if problems:
        raise InputError(f"{path}: not {what} weights: " + "; ".join(problems))
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    left = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:  # a tensor the state_dict does not carry (none in these architectures)
        raise InputError(f"{path}: {what} weights leave {listed(left, 3)} unset")
    return module


def _load_resnet50_trunc(path: Path) -> ImageTower:
    state = read_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith(("layer4.", "fc."))}
    return load_checked(ResNet50Trunc, state, path, "torchvision ResNet50")


def _load_uni(path: Path) -> ImageTower:
    overrides = None
    sidecar = path.parent / UNI_CONFIG_NAME
    if sidecar.is_file():
        try:
            overrides = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputError(f"{sidecar}: {one_line(err)}") from err
        if not isinstance(overrides, dict):
            raise InputError(f"{sidecar}: expected a JSON object")
    state = read_state_dict(path)
    return TimmViTTower(load_checked(lambda: build_uni(overrides), state, path, f"UNI ({UNI_ARCH})"))


def _is_dinov2_folder(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type") == "dinov2"
    except (OSError, ValueError, AttributeError):
        return False


def _load_phikon_v2(folder: Path) -> ImageTower:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModel.from_pretrained(
            str(folder), local_files_only=True, dtype=torch.float32, output_loading_info=True
        )
    except Exception as err:  # no weights file, corrupt weights ...
        raise InputError(f"{folder}: could not load a Dinov2 (Phikon v2) model ({one_line(err)})") from err
    missing = list(info.get("missing_keys", [])) + [str(k[0]) for k in info.get("mismatched_keys", [])]
    if missing:  # transformers would leave these randomly initialised with a warning only
        raise InputError(
            f"{folder}: weights missing or of the wrong shape for {len(missing)} ({listed(missing, 3)})"
        )
    return Dinov2ClsTower(model.float().eval())
