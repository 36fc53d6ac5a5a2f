"""Mixed precision (``--amp``): autocast contexts and a gradient scaler for float16.

``--amp bf16`` runs the forward pass under ``torch.autocast`` in bfloat16 (CPU or GPU, no scaling
needed); ``--amp fp16`` uses float16 on CUDA with a ``GradScaler``; ``off`` (default) is full float32.
Losses and probabilities are always computed from float32 logits.
"""

from __future__ import annotations

import contextlib

import torch

from utils.cli_flags import AMP_MODES

AMP_CHOICES = AMP_MODES  # declared with the --amp flag (utils.cli_flags)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(mode: str, device: torch.device):
    """Context manager for the forward pass under ``mode``."""
    if mode == "off":
        return contextlib.nullcontext()
    if mode not in _DTYPES:
        raise ValueError(f"--amp must be one of {AMP_CHOICES}, got {mode!r}")
    return torch.autocast(device_type=device.type, dtype=_DTYPES[mode])


def grad_scaler(mode: str, device: torch.device) -> torch.amp.GradScaler:
    """A scaler that is active only for float16 on CUDA (a no-op otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=mode == "fp16" and device.type == "cuda")
