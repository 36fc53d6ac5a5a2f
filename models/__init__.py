"""Slide models and what they are built from.

* ``towers/``: the frozen vision-language towers (HF CLIP, CONCH, open_clip) behind one interface,
  and tiny random ones for tests and the demo;
* ``hivemil/``: HiVE-MIL, one module per mechanism; ``hila/``: the HiLa-style survival model;
* ``baselines/``: conventional MIL, vision-language MIL and survival baselines;
* :mod:`models.registry` (one registry keyed by ``--model_type``), :mod:`models.base` (the contract every
  model follows), :mod:`models.survival` (discrete-time survival outputs), :mod:`models.checkpoint`
  (checkpoints that carry their identity) and :mod:`models.convert_checkpoint` (released -> ours).
"""

import warnings

# torch_geometric compiles a few helpers with torch.jit.script when it is imported, which torch 2.14
# reports as deprecated on every run; the warning concerns the library, not anything a user can change.
# (A filter, not an import: importing torch_geometric here would slow every CLI that reads a config.)
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*is deprecated", category=FutureWarning)
