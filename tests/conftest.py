"""Shared fixtures: a tiny random Hugging Face CLIP saved to disk and loaded like real weights."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Generated files (demo data, demo tower, slide-check verdicts) go to a fresh folder, not the project's cache/.
os.environ.setdefault("HIVEMIL_CACHE", tempfile.mkdtemp(prefix="hivemil-test-cache-"))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random HF CLIP folder (width 64, projection 64), written once per test session."""
    from models.towers.tiny import save_tiny_hf_clip

    path = tmp_path_factory.mktemp("tiny_clip")
    save_tiny_hf_clip(path, width=64, projection=64, seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_text_tower(tiny_clip_dir):
    from models.towers import load_towers

    return load_towers("plip", source=tiny_clip_dir, sides=("text",)).text
