"""One fold end to end, this project against the authors' released HiVE-MIL model, side by side.

Both sides run as fresh processes on the same synthetic slides (one ``.pt`` file per slide), the same
random PLIP-sized text tower and prompt file, fp32 and default flags, in alternation, and the parent
times each process from start to exit (imports, tower load, training, validation, test):

* ``ours``: ``benchmarks/bench_fold_profile.py synthetic`` -- :func:`training.fold.run_fold` with the
  published defaults (``--variant reference``), which also reports where its time went;
* ``released``: the released model file ``models/hivemil.py`` of a checkout of the authors' repository
  (``--released-repo``; it is not part of this project and is never copied into it) driven by the loop
  of :func:`released_fold` below.

What the released side is, exactly. The released ``main.py`` needs ``utils/core_utils.py`` and
``dataset_model/``, which the public checkout used here did not hold, so the fold loop is written here
after the CLAM ``core_utils.train`` that the released ``main.py`` calls (same signature and settings):
Adam (lr 1e-4, weight decay 1e-5) over the parameters that require gradients, per epoch one optimiser
step per training slide in a seeded random order and one validation pass, then the final model saved
and evaluated on validation and test (``summary``), AUC with scikit-learn. Slides are read with
``torch.load`` in the loop (the released DataLoader has no workers on CPU). The model is the released
file itself: its prompt learner, text encoder (run on every forward, as released), PyG graph and
``nn.MultiheadAttention``; ``clip`` (OpenAI's tokenizer) is stood in for by the same BPE from
``open_clip`` when it is not installed, and ``dataset_model.get_class_names`` by the task's classes.
Anything the real ``core_utils`` does beyond this loop (logging, checkpoints each epoch) only adds to the
released time, so the ratio printed is a lower bound.

    python benchmarks/bench_vs_released.py --released-repo /path/to/HiVE-MIL --threads 2
    python benchmarks/bench_vs_released.py --released-repo /path/to/HiVE-MIL --shape padded
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"full": 0.0, "padded": 0.3}  # share of 5x patches with 4-12 children (bench_padded.py)


def fold_args(args, share: float) -> list[str]:
    """The shared fold shape as ``bench_fold_profile.py`` flags."""
    return [
        "--n5", str(args.n5), "--dim", str(args.dim), "--train", str(args.train), "--val", str(args.val),
        "--test", str(args.test), "--epochs", str(args.epochs), "--threads", str(args.threads),
        "--work", str(args.work), "--padded-share", str(share),
    ]  # fmt: skip


# ------------------------------------------------------------------------------- the released side
def install_stand_ins(class_names: list[str]) -> None:
    """``clip`` and ``dataset_model`` for the released model file when they are not importable."""
    import importlib.util

    if importlib.util.find_spec("clip") is None:
        from open_clip.tokenizer import SimpleTokenizer

        bpe = SimpleTokenizer(context_length=77)
        clip = types.ModuleType("clip")
        clip.tokenize = lambda text, context_length=77: bpe([text], context_length=context_length).long()
        simple = types.ModuleType("clip.simple_tokenizer")
        simple.SimpleTokenizer = lambda: bpe
        clip.simple_tokenizer = simple
        sys.modules["clip"], sys.modules["clip.simple_tokenizer"] = clip, simple
    try:
        import dataset_model  # noqa: F401  (the released repository's own, when present)
    except ImportError:
        stand_in = types.ModuleType("dataset_model")
        stand_in.get_class_names = lambda name: list(class_names)
        sys.modules["dataset_model"] = stand_in


def released_fold(args) -> dict:
    """One fold of the released model (module docstring), on the slides ``bench_fold_profile`` wrote."""
    import importlib.util
    import random

    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    meta = json.loads((work / "released_inputs.json").read_text(encoding="utf-8"))
    install_stand_ins(meta["classes"])
    spec = importlib.util.spec_from_file_location(
        "released_hivemil", Path(args.released_repo) / "models" / "hivemil.py"
    )
    released = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(released)

    def load_tower(_name):
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(meta["tower"])

    released.load_pretrained_model = load_tower

    def seed_torch(seed: int) -> None:  # as the released main.py
        random.seed(seed)
        os.environ["PYTHONHASHSEED"] = str(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=False)

    seed_torch(1)
    model = released.HiVE_MIL(
        argparse.Namespace(contrastive_lambda=0.5), "bench", "plip", meta["prompt_dir"], LLM="curated"
    )
    optimizer = torch.optim.Adam(
        filter(lambda p: p.requires_grad, model.parameters()), lr=1e-4, weight_decay=1e-5
    )
    bags, labels = Path(meta["bags"]), meta["labels"]
    split = {"train": meta["train"], "val": meta["val"], "test": meta["test"]}

    def slide(i: int):
        x5, x20, _mask = torch.load(bags / f"{meta['slides'][i]}.pt", weights_only=True)
        return x5, x20.reshape(-1, x20.shape[-1]), torch.tensor([labels[i]])

    def evaluate(indices) -> float:
        model.eval()
        probs, ys, total = [], [], 0.0
        with torch.no_grad():
            for i in indices:
                x5, x20, y = slide(i)
                y_prob, _y_hat, loss = model(x5, None, x20, None, y)
                total += loss.item()
                probs.append(y_prob.cpu().numpy()[0, 1])
                ys.append(int(y))
        return roc_auc_score(ys, probs)

    for _epoch in range(args.epochs):
        model.train()
        for i in torch.randperm(len(split["train"])).tolist():
            x5, x20, y = slide(split["train"][i])
            _y_prob, _y_hat, loss = model(x5, None, x20, None, y)
            loss.item()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        evaluate(split["val"])
    torch.save(model.state_dict(), work / "released_checkpoint.pt")
    return {"val_auc": evaluate(split["val"]), "test_auc": evaluate(split["test"])}


# --------------------------------------------------------------------------------------- the driver
def prepare(args, share: float) -> None:
    """Write the slides, tower and prompts once (outside the timing) and what the released side reads."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_fold_profile import synthetic_run

    ns = argparse.Namespace(
        n5=args.n5, children=16, dim=args.dim, train=args.train, val=args.val, test=args.test,
        epochs=args.epochs, threads=args.threads, padded_share=share,
    )  # fmt: skip
    run = synthetic_run(ns, Path(args.work))
    dataset, fold = run.data.dataset, run.data.folds[0]
    prompts = json.loads(run.spec.prompt_file.read_text(encoding="utf-8"))
    prompt_dir = Path(args.work) / "released_prompts"
    (prompt_dir / "HiVE_MIL" / "curated").mkdir(parents=True, exist_ok=True)
    (prompt_dir / "HiVE_MIL" / "curated" / "bench.json").write_text(json.dumps(prompts), encoding="utf-8")
    meta = {
        "classes": list(run.data.task.class_names), "tower": str(run.spec.tower.weights), "bags": str(dataset.folder),
        "slides": dataset.slide_ids, "labels": dataset.labels, "prompt_dir": str(prompt_dir),
        "train": list(fold.train), "val": list(fold.val), "test": list(fold.test),
    }  # fmt: skip
    (Path(args.work) / "released_inputs.json").write_text(json.dumps(meta), encoding="utf-8")


def timed_process(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds from start to exit, CPU seconds of the child, and its standard output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:3])} failed:\n{done.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--released-repo", required=True, help="a checkout of the authors' HiVE-MIL repository"
    )
    parser.add_argument("--shape", choices=(*SHAPES, "both"), default="both")
    parser.add_argument("--n5", type=int, default=500)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--val", type=int, default=24)
    parser.add_argument("--test", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of each side per shape")
    parser.add_argument("--work", default=str(ROOT / "cache" / "bench_vs_released"))
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    parser.add_argument("--side", choices=("released",), help=argparse.SUPPRESS)  # internal: one child
    args = parser.parse_args(argv)
    if not (Path(args.released_repo) / "models" / "hivemil.py").is_file():
        raise SystemExit(
            f"error: {args.released_repo}: no models/hivemil.py (a checkout of the released repository)"
        )
    if args.side == "released":
        print(json.dumps(released_fold(args)))
        return 0

    shapes = list(SHAPES) if args.shape == "both" else [args.shape]
    rows = []
    for shape in shapes:
        share = SHAPES[shape]
        work = Path(args.work) / shape
        work.mkdir(parents=True, exist_ok=True)
        args_shape = argparse.Namespace(**{**vars(args), "work": str(work)})
        prepare(args_shape, share)
        ours_cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_fold_profile.py"), "synthetic",
                    *fold_args(args_shape, share), "--no-floor", "--json", str(work / "ours.json")]  # fmt: skip
        released_cmd = [sys.executable, str(Path(__file__).resolve()), "--side", "released",
                        "--released-repo", args.released_repo, *fold_args(args_shape, share)[:-2]]  # fmt: skip
        for repeat in range(args.repeats):
            released_wall, released_cpu, _ = timed_process(released_cmd)
            ours_wall, ours_cpu, _ = timed_process(ours_cmd)
            split = json.loads((work / "ours.json").read_text(encoding="utf-8"))
            rows.append({
                "shape": shape, "repeat": repeat, "released_s": released_wall, "released_cpu_s": released_cpu,
                "ours_s": ours_wall, "ours_cpu_s": ours_cpu, "ratio": released_wall / ours_wall,
                "ours_split_s": {"start-up": split["startup_s"], **split["split_s"]},
                "load_average": os.getloadavg()[0],
            })  # fmt: skip
            r = rows[-1]
            print(f"{shape:7s} run {repeat}: released {r['released_s']:6.1f} s  ours {r['ours_s']:6.1f} s  "
                  f"ratio {r['ratio']:4.1f}x   (CPU s {r['released_cpu_s']:.0f} / {r['ours_cpu_s']:.0f}, "
                  f"load {r['load_average']:.1f})", flush=True)  # fmt: skip
            print(
                "         ours: " + ", ".join(f"{k} {v:.1f}" for k, v in r["ours_split_s"].items()),
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
