"""main.py refuses text-tower models on an image-only backbone, in one line, before any work."""

from __future__ import annotations

import pytest

from training.config import parse_config, validate_config
from utils.errors import InputError


def _config(model_type: str, extractor: str, tmp_path):
    return parse_config(
        ["--task", "tcga_brca", "--data_root_dir", str(tmp_path), "--feature_extractor", extractor,
         "--model_type", model_type]
    )  # fmt: skip


@pytest.mark.parametrize("model_type", ["HiVE_MIL", "ViLa_MIL", "HiLa"])
@pytest.mark.parametrize("extractor", ["resnet50_trunc", "uni", "phikon_v2"])
def test_text_tower_models_refuse_image_only_backbones(model_type, extractor, tmp_path):
    with pytest.raises(InputError) as err:
        validate_config(_config(model_type, extractor, tmp_path))
    message = str(err.value)
    assert "\n" not in message and f"--model_type {model_type}" in message and extractor in message


@pytest.mark.parametrize(
    "model_type, extractor", [("ABMIL", "uni"), ("LiteMIL", "resnet50_trunc"), ("HiVE_MIL", "plip")]
)
def test_other_pairs_pass(model_type, extractor, tmp_path):
    validate_config(_config(model_type, extractor, tmp_path))
