"""Text towers, HiVE-MIL (one module per mechanism), baselines, one registry, checkpoints."""

import warnings

# torch_geometric compiles a few helpers with torch.jit.script at import time, which torch 2.14 reports
# as deprecated on every run; the warning is about the library, not about anything a user can change.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    import torch_geometric  # noqa: F401
