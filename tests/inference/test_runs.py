"""A finished run folder back to its model, task, prompts and slides (inference.runs), and the demo run
(inference.demo_run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interpretability.attribution import explain_slide
from models.checkpoint import read_checkpoint
from models.hivemil.model import HiveMIL
from tests.mini_run import CHILD_COUNTS, P5, make_mini_run


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory, tiny_clip_dir):
    return make_mini_run(tmp_path_factory.mktemp("run"), tiny_clip_dir)


def test_load_run_and_slide(mini_run):
    from inference.runs import first_test_slide, load_prompts, load_run, load_slide

    model, task, config = load_run(mini_run, fold=0)
    assert isinstance(model, HiveMIL) and not model.training
    assert task.class_names == ("alpha", "beta", "gamma")
    state, _ = read_checkpoint(mini_run / "s_0_checkpoint.pt")
    assert torch.equal(model.prompt_learner.ctx, state["prompt_learner.ctx"])
    slide = first_test_slide(config, task, 0)
    assert slide == "slide_2"
    bag = load_slide(config, task, slide)
    assert bag.label == 2 and bag.meta["level0_mag"] == 40 and bag.num_20x == sum(CHILD_COUNTS)
    prompts = load_prompts(config, task)
    expl = explain_slide(model, bag, task.class_names, prompts)
    assert expl.drilldown.children and expl.patch_size_5x == P5


def test_run_files_from_folder_config_or_checkpoint(mini_run, tmp_path):
    from inference.runs import resolve_run_files

    expected = (mini_run / "config.json", mini_run / "s_0_checkpoint.pt")
    for path in (mini_run, mini_run / "config.json", mini_run / "s_0_checkpoint.pt"):
        files = resolve_run_files(path)
        assert (files.config, files.checkpoint) == expected
    elsewhere = tmp_path / "c.json"
    elsewhere.write_text("{}")
    assert resolve_run_files(mini_run, config=elsewhere).config == elsewhere


def test_ensure_demo_run_trains_once(tmp_path, monkeypatch):
    from inference import demo_run as loading

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loading, "PROJECT_ROOT", tmp_path / "project")  # no default run to find
    calls = []

    def fake_train(argv):
        calls.append(argv)
        results = Path(argv[argv.index("--results_dir") + 1])
        run = loading.demo_run_dir(results)
        run.mkdir(parents=True)
        (run / "config.json").write_text("{}")
        (run / "s_1_checkpoint.pt").write_bytes(b"x")
        return 0

    run = loading.ensure_demo_run(max_epochs=2, fold=1, results_dir=tmp_path / "quick", train=fake_train)
    assert run == loading.demo_run_dir(tmp_path / "quick") and (run / "s_1_checkpoint.pt").is_file()
    argv = calls[0]
    assert argv[argv.index("--task") + 1] == "demo" and argv[argv.index("--max_epochs") + 1] == "2"
    assert (argv[argv.index("--k_start") + 1], argv[argv.index("--k_end") + 1]) == ("1", "2")
    assert (
        loading.ensure_demo_run(max_epochs=2, fold=1, results_dir=tmp_path / "quick", train=fake_train) == run
    )
    assert len(calls) == 1  # reused, not retrained
    # a run made by `python main.py --task demo` in ./results is preferred
    default = loading.demo_run_dir(tmp_path / "results")
    default.mkdir(parents=True)
    (default / "config.json").write_text("{}")
    (default / "s_0_checkpoint.pt").write_bytes(b"x")
    assert loading.ensure_demo_run(fold=0, train=fake_train) == default
    assert len(calls) == 1


def test_a_stale_hierarchical_file_is_refused_when_explaining(tmp_path, tiny_clip_dir):
    """explain.py / load_slide check the slide's hierarchical file against its 5x file, as training does."""
    import h5py

    from inference.runs import load_run, load_slide
    from utils.errors import InputError

    run = make_mini_run(tmp_path / "stale", tiny_clip_dir)
    _, task, config = load_run(run, fold=0)
    assert load_slide(config, task, "slide_0").slide_id == "slide_0"
    low = tmp_path / "stale" / "features" / "minitask_tiny" / "tiny_5x" / "slide_0.h5"
    with h5py.File(low, "a") as f:
        f["features"][0, 0] += 1.0
    with pytest.raises(InputError, match="stale"):
        load_slide(config, task, "slide_0")
