"""Seeding and deterministic execution (reset at the start of every fold, as the published code does)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

# cuBLAS needs a fixed workspace for deterministic matrix products on CUDA.
CUBLAS_WORKSPACE = ":4096:8"


def configure_determinism(enabled: bool = True) -> None:
    """Switch PyTorch to deterministic algorithms (errors on ops that have no deterministic version)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = enabled
    torch.use_deterministic_algorithms(enabled)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA), set PYTHONHASHSEED, and configure determinism."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    configure_determinism(deterministic)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
