"""Which slides predict.py predicts (inference.slide_inputs): ids, folders, files and CSV lists."""

from __future__ import annotations

import pytest
import torch

from tests.mini_run import make_mini_run
from utils.errors import InputError


def test_inputs_from_ids_folders_files_and_csv(tmp_path, tiny_clip_dir):
    from inference.runs import read_run_config
    from inference.slide_inputs import InputResolver

    run = make_mini_run(tmp_path / "project", tiny_clip_dir)
    config = read_run_config(run / "config.json")
    resolver = InputResolver(config, config.task_spec())
    features = tmp_path / "project" / "features" / "minitask_tiny"
    (tmp_path / "slides").mkdir()
    (tmp_path / "slides" / "scan.svs").write_bytes(b"x")
    torch.save(torch.zeros(2, 64), tmp_path / "slides" / "t.pt")
    csv = tmp_path / "list.csv"
    csv.write_text(
        "slide_id,path,label,level0_mag\nslide_1,,gamma,\nfromcsv,slides/t.pt,0,20\n"
        "slide_2,project/features/minitask_tiny,,\n"
    )
    inputs = resolver.resolve(["slide_0", str(tmp_path / "slides"), str(csv)])
    got = [(i.slide_id, i.kind, i.label, i.problem is None) for i in inputs]
    assert got == [
        ("slide_0", "task", 0, True), ("scan", "raw", None, True), ("t", "tensor", None, True),
        ("slide_1", "task", 2, True), ("fromcsv", "tensor", 0, True), ("slide_2", "features", None, True),
    ]  # fmt: skip
    assert inputs[4].level0_mag == 20 and inputs[1].slide_file == tmp_path / "slides" / "scan.svs"
    folder = resolver.resolve([str(features)])
    assert [i.slide_id for i in folder] == ["slide_0", "slide_1", "slide_2"]
    assert folder[0].input_files() == [
        features / "tiny_5x" / "slide_0.h5",
        features / "hierarchical_tiny_5x_20x" / "slide_0.h5",
    ]
    one = resolver.resolve([str(features / "tiny_5x" / "slide_1.h5")])
    assert one[0].kind == "features" and one[0].problem is None
    unknown = resolver.resolve(["slide_9", str(tmp_path / "gone.svs")])
    assert all(i.problem for i in unknown)
    for items, message in (
        (["slide_0", "slide_0"], "named twice"),
        ([str(tmp_path / "missing.csv")], "no such CSV"),
        ([str(tmp_path / "project" / "csv")], "no feature folder"),
    ):
        with pytest.raises(InputError, match=message):
            resolver.resolve(items)
    raw = tmp_path / "raw" / "case"
    raw.mkdir(parents=True)
    (raw / "slide_0.ndpi").write_bytes(b"x")
    with_slides = InputResolver(config, config.task_spec(), slide_dir=tmp_path / "raw").resolve(
        ["slide_0", "slide_1"]
    )
    assert [i.slide_file for i in with_slides] == [raw / "slide_0.ndpi", None]  # thumbnails for heatmaps
    wrong = tmp_path / "wrong"
    (wrong / "conch_5x").mkdir(parents=True)
    with pytest.raises(InputError, match="trained on tiny features"):
        resolver.resolve([str(wrong)])
