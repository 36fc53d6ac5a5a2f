"""Which prompt file a run used is in its log and its config.json (released default: gpt4o if present).

``--LLM`` left unset resolves at run start (``datasets.tasks.TaskSpec.default_llm``): the released
``gpt4o`` folder when it holds the task's file, else this project's ``curated`` prompts. The run
writes the resolved file to ``log.txt`` (``prompts: <path>``) and ``config.json`` (``prompt_file``,
with ``config.LLM`` resolved).
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets.features import FeatureLayout, write_patch_file
from datasets.splits import Split, split_csv_path, write_split
from preprocess.hierarchy import build_slide_hierarchy
from tests.mini_run import make_bag, prompt_dict
from training.config import RunConfig, with_values
from training.experiment import run_experiment

TASK, CLASSES = "prov", ("alpha", "beta")


def _inputs(root: Path) -> None:
    layout = FeatureLayout(root / "features", TASK, "tiny")
    rows = []
    for i in range(4):
        bag = make_bag(seed=i, slide_id=f"slide_{i}")
        write_patch_file(layout.low_file(bag.slide_id), bag.x5.numpy(), bag.coords5.numpy())
        write_patch_file(
            layout.high_file(bag.slide_id),
            bag.x20[bag.child_mask].numpy(),
            bag.coords20[bag.child_mask].numpy(),
        )
        build_slide_hierarchy(layout, bag.slide_id, 40)
        rows.append(f"case_{i},{bag.slide_id},{CLASSES[i % 2]},40")
    (root / "csv").mkdir(parents=True)
    (root / "csv" / f"{TASK}.csv").write_text("case_id,slide_id,label,level0_mag\n" + "\n".join(rows) + "\n")
    write_split(
        split_csv_path(root / "splits", TASK, 1, 0), Split(["slide_0", "slide_1"], ["slide_2"], ["slide_3"])
    )
    _prompts(root, "curated", "curated")


def _prompts(root: Path, llm: str, flavour: str) -> Path:
    path = root / "prompts" / "HiVE_MIL" / llm / f"{TASK}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    prompts = prompt_dict(CLASSES, 2, 2)
    prompts = {c: {f"{flavour} {t}": e for t, e in entries.items()} for c, entries in prompts.items()}
    path.write_text(json.dumps(prompts))
    return path


def _run(root: Path, clip_dir: Path, results: str, **kw) -> tuple[list[str], dict]:
    config = with_values(
        RunConfig(),
        task=TASK, data_root_dir=str(root / "features"), feature_extractor="tiny", feature_dim=64,
        few_shot_num=1, k=1, max_epochs=1, text_tower=str(clip_dir), csv_dir=str(root / "csv"),
        prompt_dir=str(root / "prompts"), splits_root=str(root / "splits"), num_context_tokens=4,
        num_low_mag_texts=2, num_high_mag_subtexts=2, model_type="HiVE_MIL", results_dir=str(root / results),
        quiet=True, threads=1, **kw,
    )  # fmt: skip
    run_experiment(config)
    run_dir = next((root / results).rglob("config.json")).parent
    lines = (run_dir / "log.txt").read_text().splitlines()
    return [line for line in lines if line.startswith("prompts: ")], json.loads(
        (run_dir / "config.json").read_text()
    )


def test_run_records_the_prompt_file_it_used(tmp_path, tiny_clip_dir):
    _inputs(tmp_path)
    curated = tmp_path / "prompts" / "HiVE_MIL" / "curated" / f"{TASK}.json"

    logged, stored = _run(tmp_path, tiny_clip_dir, "r_default")  # no gpt4o file: curated
    assert logged == [f"prompts: {curated}"]
    assert stored["prompt_file"] == str(curated) and stored["config"]["LLM"] == "curated"

    gpt4o = _prompts(tmp_path, "gpt4o", "released")  # the paper's prompts in place: used by default
    logged, stored = _run(tmp_path, tiny_clip_dir, "r_released")
    assert logged == [f"prompts: {gpt4o}"]
    assert stored["prompt_file"] == str(gpt4o) and stored["config"]["LLM"] == "gpt4o"

    logged, stored = _run(tmp_path, tiny_clip_dir, "r_explicit", LLM="curated")  # --LLM wins
    assert logged == [f"prompts: {curated}"] and stored["prompt_file"] == str(curated)
