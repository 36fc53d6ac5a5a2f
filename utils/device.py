"""Which torch device a ``--device`` value names (one home for the rule, used by every CLI)."""

from __future__ import annotations

from utils.errors import InputError


def resolve_device(name: str, flag: str = "--device"):
    """``auto`` -> CUDA when available, else CPU; an explicit CUDA device must exist (one-line error)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"{flag} {name!r} is not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{flag} {name}: CUDA is not available on this machine (use {flag} cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device
