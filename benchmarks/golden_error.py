"""How far ``--variant reference`` is from the released code on every golden case (max abs errors).

For each case of ``../shared/golden`` (when present) and the committed ``tests/fixtures`` case, the
released model's state_dict is loaded into our HiVE-MIL and the released computation is repeated:
a train-mode forward (logits, HTCL, loss), one Adam step (lr 1e-4, weight decay 1e-5), an eval-mode
forward. Prints, per case, the max abs error against what the released code computed, and the
forward's time (median of ``--repeats``), for the default op order and for ``--exact-order`` (the
released op order). The check itself (tolerance 1e-5) is ``tests/models/hivemil/test_golden*.py``;
this script shows how much room is left. ``--timing N5`` also times one forward+backward of the
GNN alone at D=512 with N5 5x and 16*N5 20x nodes (half kept), both orders.

    python benchmarks/golden_error.py [--repeats 5] [--timing 500 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dataclasses  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.hivemil.gnn import HierHeteroGNN  # noqa: E402
from models.hivemil.graph import X5_IMAGE, X5_TEXT, X20_IMAGE, X20_TEXT, build_hier_graph  # noqa: E402
from tests.golden_case import (  # noqa: E402
    build_for_case,
    case_bag,
    case_descriptions,
    max_abs_diff,
    prompts_file_name,
    tower_from_weights,
)
from tests.paths import GOLDEN, PROJECT  # noqa: E402

FIXTURE = PROJECT / "tests" / "fixtures" / "golden_case_two_n30_s1.pt"


def cases():
    """(name, tower, case, descriptions) for every available case."""
    if GOLDEN.is_dir():
        from models.towers import load_towers

        tower = load_towers("plip", source=GOLDEN / "tiny_clip", sides=("text",)).text
        for path in sorted(GOLDEN.glob("case_*.pt")):
            case = torch.load(path, weights_only=False)
            prompts = json.loads((GOLDEN / prompts_file_name(case["classes"])).read_text())
            yield path.stem, tower, case, case_descriptions(prompts, case["classes"])
    fixture = torch.load(FIXTURE, weights_only=False)
    tower = tower_from_weights(fixture["tower_config"], fixture["tower_weights"], fixture["token_rows"])
    case = fixture["case"]
    yield "fixture_" + FIXTURE.stem, tower, case, case_descriptions(fixture["prompts"], case["classes"])


def errors(tower, case, descriptions, repeats: int, exact: bool) -> dict[str, float]:
    model = build_for_case(tower, case, descriptions).train()
    model.options = dataclasses.replace(model.options, exact_order=exact)
    for layer in (model.gnn.layer1, model.gnn.layer2):
        layer.exact_order = exact
    bag = case_bag(case)
    with torch.no_grad():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(bag)
            times.append(time.perf_counter() - start)
    out = model(bag)
    loss = F.cross_entropy(out.logits, case["label"]) + out.aux_loss
    result = {
        "logits": max_abs_diff(out.logits[0].detach(), case["logits"]),
        "htcl": max_abs_diff(out.htcl, case["htcl"]),
        "loss": max_abs_diff(loss.detach(), case["loss"]),
    }
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-4, weight_decay=1e-5)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model(bag)
        loss_after = F.cross_entropy(after.logits, case["label"]) + after.aux_loss
    result["ctx_after_step"] = max_abs_diff(model.prompt_learner.ctx.detach(), case["ctx_after_step"])
    result["prob_after_step"] = max_abs_diff(after.logits.softmax(1), case["prob_after_step"])
    result["loss_after_step"] = max_abs_diff(loss_after, case["loss_after_step"])
    result["forward_ms"] = 1000 * statistics.median(times)
    return result


def gnn_seconds(n5: int, exact: bool, classes: int = 3, dim: int = 512, repeats: int = 3) -> float:
    """Median seconds of one GNN forward+backward on a random slide graph (half the patches kept)."""
    gen = torch.Generator().manual_seed(0)
    n20 = 16 * n5 // 2
    feats = {
        X5_IMAGE: torch.randn(n5, dim, generator=gen),
        X5_TEXT: torch.randn(4 * classes, dim, generator=gen),
        X20_IMAGE: torch.randn(n20, dim, generator=gen),
        X20_TEXT: torch.randn(12 * classes, dim, generator=gen),
    }
    kept5 = torch.rand(n5, 4 * classes, generator=gen) * (torch.rand(n5, 4 * classes, generator=gen) > 0.6)
    kept20 = torch.rand(n20, 12 * classes, generator=gen) * (
        torch.rand(n20, 12 * classes, generator=gen) > 0.6
    )
    graph = build_hier_graph(kept5, kept20, torch.arange(n20) // 16, 3, 16, true_parents=False)
    torch.manual_seed(0)
    gnn = HierHeteroGNN(dim, exact_order=exact)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = gnn(graph, feats)
        sum(v.sum() for v in out.values()).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per case (median)")
    parser.add_argument("--timing", type=int, nargs="*", default=[], help="N5 sizes for the GNN timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for exact in (False, True):
        print(f"--exact-order {'on' if exact else 'off'}: max abs error against the released code")
        worst: dict[str, float] = {}
        header = None
        for name, tower, case, descriptions in cases():
            row = errors(tower, case, descriptions, args.repeats, exact)
            if header is None:
                header = list(row)
                print(f"{'case':30s} " + " ".join(f"{h:>15s}" for h in header))
            print(f"{name:30s} " + " ".join(f"{row[h]:15.3e}" for h in header))
            for key, value in row.items():
                worst[key] = max(worst.get(key, 0.0), value)
        print(f"{'max':30s} " + " ".join(f"{worst[h]:15.3e}" for h in header))
    for n5 in args.timing:
        fast, exact = gnn_seconds(n5, False), gnn_seconds(n5, True)
        print(f"GNN forward+backward, D=512, N5={n5}, N20={8 * n5}: fast {fast:.3f} s, exact {exact:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
