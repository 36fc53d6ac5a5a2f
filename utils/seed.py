"""Seeding and deterministic execution (reset at the start of every fold, as the published code does)."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch

from utils.errors import InputError

# numpy.random.seed (and PYTHONHASHSEED) take 0 .. 2**32 - 1; other seeds are refused, not mapped, so a
# run's recorded --seed is exactly the seed used.
SEED_MAX = 2**32 - 1

# cuBLAS needs a fixed workspace for deterministic matrix products on CUDA.
CUBLAS_WORKSPACE = ":4096:8"


def configure_determinism(enabled: bool = True) -> None:
    """Switch PyTorch to deterministic algorithms (errors on ops that have no deterministic version)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = enabled
    deterministic_algorithms(enabled)


def deterministic_algorithms(enabled: bool) -> None:
    """``torch.use_deterministic_algorithms(enabled)`` without its import of ``torch._inductor`` (1.5-2 s
    of start-up, only to set inductor's own flag): the same switch in PyTorch's core, and inductor's
    flag too when inductor is loaded. Nothing in this project compiles with inductor."""
    torch._C._set_deterministic_algorithms(enabled, warn_only=False)
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = enabled


def check_seed(seed: int, flag: str = "--seed") -> int:
    """``seed`` when it is in numpy's range ``0 .. 2**32 - 1``, else one :class:`InputError` line."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise InputError(f"{flag} {seed}: must be an integer from 0 to {SEED_MAX} (numpy's seed range)")
    return seed


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA), set PYTHONHASHSEED, and configure determinism."""
    check_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    configure_determinism(deterministic)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
