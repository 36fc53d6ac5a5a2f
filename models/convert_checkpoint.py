"""Convert a released HiVE-MIL checkpoint into this project's format (``python -m models.convert_checkpoint``).

The released ``HiVE_MIL`` module keeps everything under ``custom_vlm.``: the learned context
(``custom_vlm.prompt_learner.ctx``), the GNN (``custom_vlm.graph_prompt_learner.layer{1,2}...``) and
a copy of the frozen text tower. The output keeps the context and GNN under our names
(:mod:`models.checkpoint`; the tower copy is dropped). Anything that is not a HiVE-MIL checkpoint is
refused. Usage::

    python -m models.convert_checkpoint RELEASED.pt OURS.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.checkpoint import (
    is_hivemil_state,
    is_released_state_dict,
    load_checkpoint,
    ours_to_released,
    read_checkpoint,
    released_to_ours,
    save_checkpoint,
)
from utils.errors import InputError, run_cli

__all__ = ["convert", "load_model_state", "ours_to_released", "released_to_ours", "is_released_state_dict"]


def load_model_state(model, path: str | Path, expected_identity: dict | None = None) -> None:
    """Load a released or our checkpoint into ``model`` (see :func:`models.checkpoint.load_checkpoint`)."""
    load_checkpoint(model, path, expected_identity)


def convert(src: str | Path, dst: str | Path) -> int:
    """Convert ``src`` (released or ours) into our format at ``dst``; returns the number of tensors."""
    state, identity = read_checkpoint(src)
    if (identity or {}).get("model_type", "HiVE_MIL") != "HiVE_MIL" or not is_hivemil_state(state):
        kind = (identity or {}).get("model_type") or "not HiVE-MIL (no prompt_learner.ctx / gnn.* weights)"
        raise InputError(
            f"{src}: not a HiVE-MIL checkpoint ({kind}); only HiVE-MIL checkpoints are converted"
        )
    save_checkpoint(dst, state, identity, source=str(src))
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
