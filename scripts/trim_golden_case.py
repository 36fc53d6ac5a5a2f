"""Regenerate the committed golden case ``tests/fixtures/golden_case_<name>.pt`` from ``../shared/golden``.

    python scripts/trim_golden_case.py [--golden ../shared/golden] [--case case_two_n30_s1.pt] [--out FILE]

A golden case (computed by the authors' released code, see ``../shared/golden/README.md``) needs the
tiny CLIP tower it was computed with, whose 49408 x 64 token embedding alone is 12.6 MB. The trimmed
fixture keeps:

* ``case``: the case as stored, except that the released ``state_dict`` loses its copy of the frozen
  text tower (``custom_vlm.text_encoder.*``; our loader drops it anyway);
* ``tower_config``: the tiny tower's ``config.json``;
* ``tower_weights``: its text-side weights (``CLIPModel`` key names), the token embedding reduced to
  the rows in ``token_rows`` (every token id of the case's prompts);
* ``prompts``: the case's classes from the golden prompt file;
* ``source``: file names and SHA-256 of what it was made from.

Before writing, it checks that the released checkpoint's tower copy equals the tiny tower's weights,
so the two sources agree. ``tests/models/hivemil/test_golden_fixture.py`` rebuilds the tower and
checks the released results to 1e-5. Output written atomically; inputs are only read.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.atomic_io import atomic_write_bytes  # noqa: E402
from utils.errors import InputError, run_cli  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_GOLDEN = PROJECT.parent / "shared" / "golden"
DEFAULT_CASE = "case_two_n30_s1.pt"
FORMAT = "hivemil-golden-trimmed/1"
RELEASED_TOWER = "custom_vlm.text_encoder."
TOKEN_EMBEDDING = "text_model.embeddings.token_embedding.weight"
SIZE_LIMIT = 2_000_000  # bytes


def released_tower_key(name: str) -> str:
    """``CLIPModel`` key of a released text-encoder key (the part after ``custom_vlm.text_encoder.``).

    The released text encoder holds CLIP's text transformer, positional embedding, final layer norm
    and the projection's weight matrix as stored.
    """
    if name == "positional_embedding":
        return "text_model.embeddings.position_embedding.weight"
    if name == "text_projection":
        return "text_projection.weight"
    if name.startswith("transformer."):
        return "text_model.encoder." + name[len("transformer.") :]
    if name.startswith("ln_final."):
        return "text_model.final_layer_norm." + name[len("ln_final.") :]
    raise InputError(f"unexpected released text-encoder key {name!r}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trim(golden: Path, case_name: str) -> dict:
    """The fixture dictionary for ``golden/case_name`` (see the module docstring)."""
    from safetensors.torch import load_file

    case_path, tower_dir = golden / case_name, golden / "tiny_clip"
    for path in (case_path, tower_dir / "config.json", tower_dir / "model.safetensors"):
        if not path.is_file():
            raise InputError(f"missing {path} (point --golden at the shared golden folder)")
    case = torch.load(case_path, weights_only=False)
    prompts_name = "prompts_2class.json" if len(case["classes"]) == 2 else "prompts_3class.json"
    all_prompts = json.loads((golden / prompts_name).read_text(encoding="utf-8"))
    tower = load_file(str(tower_dir / "model.safetensors"))

    state = dict(case["state_dict"])
    for key in [k for k in state if k.startswith(RELEASED_TOWER)]:
        name = released_tower_key(key[len(RELEASED_TOWER) :])
        if not torch.equal(state.pop(key), tower[name]):
            raise InputError(f"{case_path}: tower copy {key} differs from {tower_dir}/{name}")
    if not torch.equal(state["custom_vlm.logit_scale"], tower["logit_scale"]):
        raise InputError(f"{case_path}: logit_scale differs from the tiny tower's")

    token_rows = torch.cat([ids.flatten() for ids in case["tokenized_prompts"].values()]).unique().long()
    weights = {
        k: v.clone()
        for k, v in tower.items()
        if k.startswith(("text_model.", "text_projection.", "logit_scale")) and not k.endswith("position_ids")
    }
    weights[TOKEN_EMBEDDING] = tower[TOKEN_EMBEDDING][token_rows].clone()
    return {
        "format": FORMAT,
        "case": {**case, "state_dict": state},
        "tower_config": json.loads((tower_dir / "config.json").read_text(encoding="utf-8")),
        "tower_weights": weights,
        "token_rows": token_rows,
        "prompts": {c: all_prompts[c] for c in case["classes"]},
        "source": {
            "case": case_name,
            "case_sha256": sha256(case_path),
            "tower_sha256": sha256(tower_dir / "model.safetensors"),
            "prompts": prompts_name,
            "prompts_sha256": sha256(golden / prompts_name),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--golden", default=str(DEFAULT_GOLDEN), help="golden folder (default ../shared/golden)"
    )
    parser.add_argument("--case", default=DEFAULT_CASE, help=f"case file name (default {DEFAULT_CASE})")
    parser.add_argument("--out", default=None, help="output (default tests/fixtures/golden_<case>.pt)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else PROJECT / "tests" / "fixtures" / f"golden_{args.case}"
    fixture = trim(Path(args.golden), args.case)
    buffer = io.BytesIO()
    torch.save(fixture, buffer)
    data = buffer.getvalue()
    if len(data) > SIZE_LIMIT:
        raise InputError(
            f"trimmed case is {len(data)} bytes, above the {SIZE_LIMIT}-byte limit; pick a smaller case"
        )
    atomic_write_bytes(out, data)
    rows = int(fixture["token_rows"].numel())
    print(f"wrote {out} ({len(data)} bytes; {rows} token-embedding rows of the tiny tower kept)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
