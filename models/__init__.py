"""Text towers, HiVE-MIL (one module per mechanism), baselines, one registry, checkpoints."""

import warnings

# torch_geometric compiles a few helpers with torch.jit.script when it is imported, which torch 2.14
# reports as deprecated on every run; the warning concerns the library, not anything a user can change.
# (A filter, not an import: importing torch_geometric here would slow every CLI that reads a config.)
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*is deprecated", category=FutureWarning)
