"""``interpretability_analysis.ipynb`` runs top to bottom, headless, on a tiny run made in tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.paths import PROJECT as PROJECT_ROOT

NOTEBOOK = PROJECT_ROOT / "interpretability_analysis.ipynb"
KERNEL_NAME = "hivemil-test-python"


def _kernelspec_for_this_interpreter(folder: Path) -> Path:
    """A Jupyter data folder with a kernelspec that starts ``sys.executable`` (the interpreter under test)."""
    spec_dir = folder / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "HiVE-MIL test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return folder


def test_notebook_runs_top_to_bottom(tmp_path, tiny_clip_dir, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from tests.mini_run import make_mini_run

    run_dir = make_mini_run(tmp_path / "project", tiny_clip_dir, variant="reference")
    work = tmp_path / "work"
    work.mkdir()
    copy = work / NOTEBOOK.name
    original = NOTEBOOK.read_bytes()
    shutil.copyfile(NOTEBOOK, copy)
    monkeypatch.setenv("JUPYTER_PATH", str(_kernelspec_for_this_interpreter(tmp_path / "jupyter")))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("HIVEMIL_NOTEBOOK_RUN_DIR", str(run_dir))
    monkeypatch.setenv("HIVEMIL_NOTEBOOK_DEMO_EPOCHS", "1")
    monkeypatch.setenv("HIVEMIL_CACHE", str(tmp_path / "cache"))

    nb = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(work)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "slide slide_2" in text and str(run_dir) in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # two contribution charts, two heatmaps
    assert NOTEBOOK.read_bytes() == original  # the notebook in the project is not touched
    assert not (work / "results").exists()
