"""Find and load a frozen vision-language tower: ``load_towers(feature_extractor, source, sides, device)``.

Resolution (docs/method.md §1, ``--text_tower NAME_OR_PATH``):

* no ``source``: ``plip`` -> hub ``vinid/plip`` (HF CLIP), ``quiltnet`` -> hub
  ``wisdomik/QuiltNet-B-32`` (HF CLIP), ``conch`` -> ``conch/pytorch_model.bin`` in the project
  folder, anything else -> an open_clip spec (``hf-hub:org/name``, ``ARCH:/path/to/weights`` or a
  local open_clip folder).
* ``source`` (a hub name, a local folder, a checkpoint file or an open_clip spec) overrides where the
  weights come from; the kind is detected from what is there: a folder whose ``config.json`` says
  ``model_type: clip`` -> HF CLIP; a folder with ``open_clip_config.json`` -> open_clip; a folder
  with ``pytorch_model.bin`` or a checkpoint file -> CONCH.

Image-only backbones (``resnet50_trunc``, ``uni``, ``phikon_v2``; :mod:`models.towers.backbones`) have
no text side: ``source`` is their weights file or folder (``uni`` and ``phikon_v2`` without it: their
hub repository in the local cache), and their kind is their name.

Hub names are looked up in the local Hugging Face cache only (``local_files_only=True``); when they
are not there the user gets one :class:`InputError` saying how to fix it. All towers come back frozen
(``requires_grad=False``), float32, in eval mode, on ``device``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from models.towers.backbones import BACKBONES, backbone_location, is_backbone, load_backbone
from models.towers.base import ImageTower, TextTower, freeze
from models.towers.conch_tower import load_conch
from models.towers.hf_clip import is_hf_clip_folder, load_hf_clip
from models.towers.open_clip_tower import is_open_clip_folder, load_open_clip
from models.towers.source import TowerSource
from utils.errors import InputError, one_line
from utils.paths import PROJECT_ROOT

DEFAULT_CONCH_CHECKPOINT = PROJECT_ROOT / "conch" / "pytorch_model.bin"
HUB_DEFAULTS = {"plip": "vinid/plip", "quiltnet": "wisdomik/QuiltNet-B-32"}
KINDS = ("hf_clip", "conch", "open_clip", *BACKBONES)
SIDES = ("text", "image")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHECKPOINT_SUFFIXES = {".bin", ".pt", ".pth", ".safetensors"}


def load_text_tower(source: TowerSource, device: str | torch.device = "cpu") -> TextTower:
    """The frozen text tower of ``source`` (the one way every model loads its text side)."""
    return load_towers(source.extractor, source=source.weights, sides=("text",), device=device).text


def tower_identity(source: TowerSource) -> dict:
    """Which weights ``source`` resolves to, without loading them: kind, location and the size and
    modification time of every file there (a changed or replaced tower changes the identity)."""
    from datasets.fingerprint import stat_record

    kind, location = resolve_tower_source(source.extractor, source.weights)
    path = Path(location)
    if kind == "open_clip" and not path.exists():  # an ARCH:/path/to/weights spec
        path = Path(location.split(":", 1)[1])
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return {"kind": kind, "location": location, "files": {p.name: stat_record(p) for p in files}}


@dataclass
class Towers:
    """The loaded towers of one model: ``kind`` in :data:`KINDS`, ``source`` = where weights came from."""

    kind: str
    source: str
    text: TextTower | None = None
    image: ImageTower | None = None


def load_towers(
    feature_extractor: str,
    source: str | Path | None = None,
    sides: tuple[str, ...] | list[str] = ("text",),
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    source_flag: str = "--text_tower",
) -> Towers:
    """Load the frozen towers named by ``feature_extractor`` (or by ``source``, the ``--text_tower`` value).

    ``sides`` picks ``"text"`` and/or ``"image"``. ``allow_download=True`` lets a hub name that is not
    cached be downloaded (default: offline, a clear error instead). ``source_flag`` is the CLI flag
    that carried ``source``, named in error messages.
    """
    sides = tuple(sides)
    if not sides or any(s not in SIDES for s in sides):
        raise ValueError(f"sides must be a non-empty subset of {SIDES}, got {sides}")
    kind, location = resolve_tower_source(feature_extractor, source, allow_download, source_flag)
    if kind in BACKBONES:
        if "text" in sides:
            raise InputError(
                f"{kind} is an image-only backbone without a text tower: models that compare patches with "
                f"texts need plip, quiltnet, conch or an open_clip model"
            )
        image = freeze(load_backbone(kind, Path(location)).to(device=device, dtype=torch.float32))
        return Towers(kind=kind, source=str(location), image=image)
    loader = {"hf_clip": load_hf_clip, "conch": load_conch, "open_clip": load_open_clip}[kind]
    text, image = loader(location if kind == "open_clip" else Path(location), sides)
    for tower in (text, image):
        if tower is not None:
            freeze(tower.to(device=device, dtype=torch.float32))
    return Towers(kind=kind, source=str(location), text=text, image=image)


def resolve_tower_source(
    feature_extractor: str,
    source: str | Path | None,
    allow_download: bool = False,
    source_flag: str = "--text_tower",
) -> tuple[str, str]:
    """``(kind, location)``: location is a local folder or file, or an ``ARCH:/path`` open_clip spec."""
    extractor = str(feature_extractor).strip().lower()
    if is_backbone(extractor):
        backbone = BACKBONES[extractor]
        if source is not None:
            folder = Path(str(source).strip()).expanduser()
        elif backbone.hub_repo is not None:
            folder = _hub_snapshot(backbone.hub_repo, allow_download, source_flag)
        else:
            raise InputError(
                f"the {extractor} backbone needs {source_flag} PATH: {backbone.weights} (nothing is downloaded)"
            )
        return extractor, str(backbone_location(extractor, folder, source_flag))
    if source is None:
        if extractor in HUB_DEFAULTS:
            return _classify_folder(_hub_snapshot(HUB_DEFAULTS[extractor], allow_download, source_flag))
        if extractor == "conch":
            if not DEFAULT_CONCH_CHECKPOINT.is_file():
                raise InputError(
                    f"CONCH weights not found: put CONCH's pytorch_model.bin at {DEFAULT_CONCH_CHECKPOINT} "
                    f"(request access to MahmoodLab/CONCH on Hugging Face, download it; see conch/README.md) "
                    f"or pass {source_flag} /path/to/pytorch_model.bin"
                )
            return "conch", str(DEFAULT_CONCH_CHECKPOINT)
        return _classify_spec(
            str(feature_extractor).strip(), allow_download, "--feature_extractor", source_flag
        )
    return _classify_spec(str(source).strip(), allow_download, source_flag, source_flag)


def _classify_spec(spec: str, allow_download: bool, flag: str, source_flag: str) -> tuple[str, str]:
    """Kind and location of ``spec`` (named by ``flag`` in errors; ``source_flag`` is the override flag)."""
    if spec.startswith("hf-hub:"):
        return _classify_folder(_hub_snapshot(spec[len("hf-hub:") :], allow_download, source_flag))
    path = Path(spec).expanduser()
    if path.is_dir():
        return _classify_folder(path)
    if path.is_file():
        if path.suffix.lower() not in _CHECKPOINT_SUFFIXES:
            raise InputError(f"{flag} {spec}: not a checkpoint file (.bin/.pt/.pth/.safetensors)")
        return "conch", str(path)
    arch, sep, rest = spec.partition(":")
    if sep and rest and _is_open_clip_arch(arch):
        if not Path(rest).expanduser().is_file():
            raise InputError(f"{flag} {spec}: open_clip checkpoint {rest} not found")
        return "open_clip", f"{arch}:{Path(rest).expanduser()}"
    if _HUB_NAME.match(spec):
        return _classify_folder(_hub_snapshot(spec, allow_download, source_flag))
    if flag == "--feature_extractor":
        raise InputError(
            f"--feature_extractor {spec}: not plip, quiltnet or conch, nor an open_clip model (hf-hub:org/name, "
            f"ARCH:/path/to/weights or a local open_clip folder); pass {source_flag} NAME_OR_PATH"
        )
    raise InputError(
        f"{flag} {spec}: not an existing folder or checkpoint file, an open_clip ARCH:/path/to/weights, "
        f"or a Hugging Face hub name (org/name)"
    )


def _classify_folder(folder: Path) -> tuple[str, str]:
    if is_hf_clip_folder(folder):
        return "hf_clip", str(folder)
    if is_open_clip_folder(folder):
        return "open_clip", str(folder)
    if (folder / "pytorch_model.bin").is_file():
        return "conch", str(folder / "pytorch_model.bin")
    raise InputError(
        f"{folder}: no Hugging Face CLIP (config.json with model_type clip), open_clip "
        f"(open_clip_config.json) or CONCH (pytorch_model.bin) weights in this folder"
    )


def _hub_snapshot(repo_id: str, allow_download: bool, source_flag: str) -> Path:
    """The local folder of a cached hub repository; one clear error when it is not cached."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as err:
        if allow_download:
            try:
                return Path(snapshot_download(repo_id))
            except Exception as err2:
                raise InputError(f"could not download {repo_id} ({one_line(err2)})") from err2
        raise InputError(
            f"model '{repo_id}' is not in the local Hugging Face cache and downloads are off: download it "
            f"once (`hf download {repo_id}`, needs network and, for gated models, access) or pass "
            f"{source_flag} /path/to/local/folder"
        ) from err


def _is_open_clip_arch(name: str) -> bool:
    import open_clip

    return name in open_clip.list_models()
