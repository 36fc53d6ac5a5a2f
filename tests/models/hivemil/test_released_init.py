"""Same seed, same initial weights as the released model (docs/method.md §8.3).

After seeding, the released code loads the text tower, builds the GNN, then draws the learnable
context; inside each hierarchical attention module the scale embedding is created, then the multi-head
attention, then the scale embedding is initialised, then the q/k projections are created and
initialised. The golden cases store the released model's state_dict right after construction with the
case's seed (``..._s<seed>.pt``): every tensor must be bit-identical to ours.
"""

from __future__ import annotations

import json

import pytest
import torch

from models.convert_checkpoint import released_to_ours
from models.hivemil.model import HiveMIL
from models.hivemil.options import HiveMILOptions
from tests.paths import GOLDEN, GOLDEN_TOWER, golden_cases

CASES = golden_cases()
pytestmark = pytest.mark.skipif(
    not CASES, reason=f"golden cases (with tiny_clip/ and both prompt files) not found in {GOLDEN}"
)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_seeded_model_has_the_released_initial_weights(path):
    from models.towers import load_towers

    case = torch.load(path, weights_only=False)
    seed = int(path.stem.rsplit("_s", 1)[1])
    prompts = json.loads(
        (GOLDEN / f"prompts_{len(case['classes']) == 2 and '2class' or '3class'}.json").read_text()
    )
    descriptions = [[f"{t} : {e}" for t, e in prompts[c].items()] for c in case["classes"]]
    o = case["options"]
    options = HiveMILOptions(
        n_ctx=o.get("n_ctx", 16), class_specific_context=o.get("csc", False),
        class_token_position=o.get("pos", "end"), filter_alpha=o.get("alpha", 0.5),
        contrastive_lambda=o.get("lam", 0.5),
    )  # fmt: skip
    torch.manual_seed(seed)
    tower = load_towers("plip", source=GOLDEN_TOWER, sides=("text",)).text  # loading draws nothing
    model = HiveMIL(tower, descriptions, options)
    released = released_to_ours(case["state_dict"])
    ours = model.state_dict()
    assert set(ours) == set(released)
    differing = [k for k in released if not torch.equal(ours[k], released[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"
