"""Released HiVE-MIL checkpoints <-> ours.

The released ``HiVE_MIL`` module keeps everything under ``custom_vlm.``: the learned context
(``custom_vlm.prompt_learner.ctx``), the GNN (``custom_vlm.graph_prompt_learner.layer{1,2}...``) and
a copy of the frozen text tower (``custom_vlm.text_encoder.*``, ``custom_vlm.logit_scale``). Our
:class:`models.hivemil.model.HiveMIL` keeps the same GNN parameter names under ``gnn.`` and the context
under ``prompt_learner.ctx``; the frozen tower is not stored.

Usage::

    python -m models.convert_checkpoint RELEASED.pt OURS.pt

The output is ``{"format": CHECKPOINT_FORMAT, "state_dict": ..., "source": ...}``; :func:`load_model_state`
accepts either kind (and a bare state_dict of either naming) directly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from utils.atomic_io import atomic_path
from utils.errors import InputError, one_line, run_cli

CHECKPOINT_FORMAT = "hivemil-repro/1"
RELEASED_ROOT = "custom_vlm."
_RENAMES = (
    ("custom_vlm.prompt_learner.ctx", "prompt_learner.ctx"),
    ("custom_vlm.graph_prompt_learner.", "gnn."),
)
# Frozen text-tower copies in released checkpoints: not part of our state.
_RELEASED_TOWER_KEYS = ("custom_vlm.text_encoder.", "custom_vlm.logit_scale")


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
        for old, new in _RENAMES:
            if key.startswith(new):
                out[old + key[len(new) :]] = value
                break
        else:
            raise InputError(f"key {key!r} has no released counterpart")
    return out


def read_state_dict(path: str | Path) -> dict:
    """Our state_dict from a checkpoint file of either format."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(
            f"{path}: cannot read checkpoint ({one_line(err)})"
        ) from None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: not a HiVE-MIL state_dict")
    return released_to_ours(obj) if is_released_state_dict(obj) else obj


def load_model_state(model: torch.nn.Module, path: str | Path) -> None:
    """Load a released or our checkpoint into ``model`` (strict on the learned parameters)."""
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(f"{path}: does not fit this model ({str(err).splitlines()[0]})") from None


def convert(src: str | Path, dst: str | Path) -> int:
    """Convert ``src`` (released or ours) into our format at ``dst``; returns the number of tensors."""
    state = read_state_dict(src)
    with atomic_path(dst, suffix=".pt") as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "state_dict": state, "source": str(src)}, tmp)
    return len(state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert a released HiVE-MIL checkpoint into this project's format."
    )
    parser.add_argument("src", help="released checkpoint (e.g. s_0_checkpoint.pt)")
    parser.add_argument("dst", help="output file")
    args = parser.parse_args(argv)
    if Path(args.dst).resolve() == Path(args.src).resolve():
        raise InputError(f"{args.dst}: output must differ from the input")
    n = convert(args.src, args.dst)
    print(f"wrote {args.dst} ({n} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
