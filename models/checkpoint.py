"""Model checkpoints that carry their identity, and the released HiVE-MIL naming (docs/formats.md §7).

A checkpoint written here is ``{"format": CHECKPOINT_FORMAT, "identity": {...}, "state_dict": {...}}``.
The identity names what the weights belong to -- model type, class names, feature dimension, the text
tower and, for vision-language models, the HiVE-MIL options with the variant switches -- so that a
loader refuses a checkpoint of another model or variant instead of silently giving other numbers.

Also read: bare state_dicts (older runs and the released ``s_<fold>_checkpoint.pt``); released HiVE-MIL
keys (``custom_vlm.prompt_learner.ctx``, ``custom_vlm.graph_prompt_learner.*``) are renamed to ours
(``prompt_learner.ctx``, ``gnn.*``) and the released copy of the frozen tower is dropped.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from models.registry import ModelSpec, model_info
from utils.atomic_io import atomic_write_bytes
from utils.errors import InputError, one_line

CHECKPOINT_FORMAT = "hivemil-repro/2"
READABLE_FORMATS = ("hivemil-repro/1", CHECKPOINT_FORMAT)

RELEASED_ROOT = "custom_vlm."
_RENAMES = (
    ("custom_vlm.prompt_learner.ctx", "prompt_learner.ctx"),
    ("custom_vlm.graph_prompt_learner.", "gnn."),
)
# Frozen text-tower copies in released checkpoints: not part of our state.
_RELEASED_TOWER_KEYS = ("custom_vlm.text_encoder.", "custom_vlm.logit_scale")


# ---------------------------------------------------------------------------------- released naming
def is_released_state_dict(state: dict) -> bool:
    return any(k.startswith(RELEASED_ROOT) for k in state)


def released_to_ours(state: dict) -> dict:
    """Rename released keys to ours and drop the frozen tower copy."""
    out = {}
    for key, value in state.items():
        if key.startswith(_RELEASED_TOWER_KEYS):
            continue
        for old, new in _RENAMES:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            raise InputError(f"unexpected key {key!r} in a released HiVE-MIL checkpoint")
    return out


def ours_to_released(state: dict) -> dict:
    """Inverse of :func:`released_to_ours` (without the tower copy)."""
    out = {}
    for key, value in state.items():
        for released, ours in _RENAMES:
            if key.startswith(ours):
                out[released + key[len(ours) :]] = value
                break
        else:
            raise InputError(f"key {key!r} has no released counterpart")
    return out


def is_hivemil_state(state: dict) -> bool:
    """Our key names of a HiVE-MIL model: the learned context and the GNN."""
    return "prompt_learner.ctx" in state and any(k.startswith("gnn.") for k in state)


# ---------------------------------------------------------------------------------- identity
def model_identity(model_type: str, spec: ModelSpec) -> dict:
    """What a checkpoint of ``model_type`` built from ``spec`` belongs to."""
    identity = {
        "model_type": model_type,
        "class_names": list(spec.task.class_names),
        "feature_dim": int(spec.feature_dim),
    }
    if model_info(model_type).text_tower:
        identity["tower"] = {"extractor": spec.tower.extractor, "weights": spec.tower.weights}
        identity["hivemil_options"] = spec.hivemil.to_dict()
    return identity


def identity_mismatches(expected: dict, found: dict) -> list[str]:
    """``"name: found -> expected"`` for each identity entry both name and disagree on (nested dicts flat)."""

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in d.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
        return out

    exp, got = flat(expected), flat(found)
    return [
        f"{k}: {got[k]!r} (checkpoint) vs {exp[k]!r} (expected)"
        for k in sorted(exp)
        if k in got and got[k] != exp[k]
    ]


# ---------------------------------------------------------------------------------- files
def save_checkpoint(
    path: str | Path, state_dict: dict, identity: dict | None = None, source: str | None = None
) -> None:
    """Atomically write a checkpoint with its identity."""
    payload = {"format": CHECKPOINT_FORMAT, "identity": identity or {}, "state_dict": state_dict}
    if source is not None:
        payload["source"] = source
    buffer = io.BytesIO()  # torch.save reports a full disk as a bare RuntimeError; a plain write says ENOSPC
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(path: str | Path) -> tuple[dict, dict | None]:
    """``(state_dict with our key names, identity or None)`` from a checkpoint file of any kind we know."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"{path}: cannot read checkpoint ({one_line(err)})") from None
    identity = None
    if isinstance(obj, dict) and obj.get("format") in READABLE_FORMATS:
        identity = obj.get("identity") or None
        obj = obj.get("state_dict")
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: not a model checkpoint (expected a state_dict of tensors)")
    return (released_to_ours(obj) if is_released_state_dict(obj) else obj), identity


def load_checkpoint(
    model: torch.nn.Module, path: str | Path, expected_identity: dict | None = None
) -> dict | None:
    """Load ``path`` into ``model`` (strict on the learned parameters); returns the stored identity.

    With ``expected_identity`` a checkpoint whose stored identity disagrees is refused with one line.
    Checkpoints without an identity (released, older) are checked by their parameter names and shapes only.
    """
    state, identity = read_checkpoint(path)
    if expected_identity is not None and identity is not None:
        differing = identity_mismatches(expected_identity, identity)
        if differing:
            raise InputError(f"{path}: belongs to another model ({'; '.join(differing[:3])})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(f"{path}: does not fit this model ({str(err).splitlines()[0]})") from None
    return identity
