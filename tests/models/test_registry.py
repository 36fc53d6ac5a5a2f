"""The model registry: facts per model type (ModelInfo), the name -> module index, lazy and loud loading."""

from __future__ import annotations

import subprocess
import sys

import pytest

from models import registry
from models.registry import MODEL_MODULES, ModelInfo, model_info
from tests.paths import PROJECT
from utils.errors import InputError


def test_index_and_registered_names_agree():
    registry._load_all()
    registered = {name for name, info in registry._INFOS.items() if name in MODEL_MODULES}
    runtime_only = set(registry._INFOS) - set(MODEL_MODULES)
    assert registered == set(MODEL_MODULES)
    # names registered outside the index can only come from tests (their modules live under tests/)
    for name in runtime_only:
        assert registry._BUILDERS[name].__module__.startswith("tests."), name
    for name, module in MODEL_MODULES.items():
        assert registry._BUILDERS[name].__module__.startswith(module.rsplit(".", 1)[0]), (name, module)


def test_model_facts():
    hive = model_info("HiVE_MIL")
    assert hive == ModelInfo(
        "HiVE_MIL", text_tower=True, variants=True, patch_scores="class evidence", hierarchy=True,
        reference_loss="ce",
    )  # fmt: skip
    assert hive.bag_loss("focal", "reference") == "ce" and hive.bag_loss("focal", "corrected") == "focal"
    assert model_info("ABMIL").bag_loss("svm", "reference") == "svm"
    hila = model_info("HiLa")
    assert hila.survival and hila.text_tower and hila.hierarchy and not hila.variants
    assert hila.patch_scores == "transport plan"
    assert model_info("ABMIL_surv").patch_scores == model_info("TransMIL_surv").patch_scores == "attention"
    for name in ("ABMIL", "TransMIL", "LiteMIL", "abmil", "TransMIL_5x"):
        assert model_info(name).patch_scores == "attention", name
    for name in ("mean_pool", "max_pool", "MIL_fc", "mil_fc", "ViLa_MIL", "zero_shot"):
        assert model_info(name).patch_scores is None, name
    assert model_info("ABMIL_5x").magnification == "5x" and model_info("ABMIL").magnification == "20x"
    assert model_info("ViLa_MIL").hierarchy and model_info("zero_shot").text_tower
    assert not model_info("ABMIL").hierarchy and not model_info("ABMIL").text_tower
    assert set(registry.survival_models()) >= {"HiLa", "mean_pool_surv", "ABMIL_surv", "TransMIL_surv"}
    assert not (set(registry.survival_models()) & {"HiVE_MIL", "ABMIL", "ViLa_MIL"})
    # MIL_fc: its released initial weights under --variant reference (docs/divergences.md §16)
    assert sorted(n for n in MODEL_MODULES if model_info(n).variants) == [
        "HiVE_MIL",
        "MIL_fc",
        "MIL_fc_5x",
        "mil_fc",
    ]


def test_unknown_name_is_one_line_listing_the_known():
    with pytest.raises(InputError) as err:
        model_info("NoSuchModel")
    message = str(err.value)
    assert "\n" not in message and "'NoSuchModel'" in message and "ABMIL" in message and "HiVE_MIL" in message


def _fresh(code: str) -> str:
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_one_model_imports_only_its_module():
    out = _fresh(
        "import sys\nfrom models.registry import model_info\nmodel_info('ABMIL')\n"
        "print(sorted(m for m in sys.modules if m.startswith('models.') and m.count('.') >= 2))"
    )
    loaded = eval(out)  # noqa: S307 - our own printed list
    assert "models.baselines.abmil" in loaded
    assert not {"models.hivemil.model", "models.hila.model", "models.baselines.vila_mil"} & set(loaded)


def test_load_all_fails_loudly_on_a_missing_module(monkeypatch):
    monkeypatch.setitem(MODEL_MODULES, "Ghost", "models.baselines.no_such_module")
    with pytest.raises(ModuleNotFoundError):
        registry._load_all()
