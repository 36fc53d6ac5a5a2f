"""Flag groups shared by every CLI, each declared once with one spelling.

``main.py`` (:class:`training.config.RunConfig`, via :func:`utils.flags.flag_from`), ``predict.py``,
``explain.py`` and ``extract_features.py`` take the same flag for the same thing:

* ``--text_tower`` / ``--text-tower``: hub name, local folder or checkpoint of the tower weights;
* ``--data_root_dir``: the feature root (published spelling of ``main.py``);
* ``--device``: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``;
* ``--amp``: ``off``, ``bf16`` or ``fp16`` (:data:`utils.amp.AMP_CHOICES`);
* ``--threads``: CPU threads for torch (0: torch's default).

The tiling flags live with the tiler (:class:`preprocess.wsi.pipeline.TileFlags`). Parse with
:func:`utils.flags.add_flags` and read back with :func:`utils.flags.read_flags`.
"""

from __future__ import annotations

from dataclasses import dataclass

from utils.errors import InputError
from utils.flags import flag

AMP_MODES = ("off", "bf16", "fp16")  # also utils.amp.AMP_CHOICES (that module needs torch)


@dataclass(frozen=True)
class TowerFlags:
    """Where the tower's weights are (default: the extractor's hub name or cache)."""

    text_tower: str | None = flag(
        "--text_tower", "--text-tower", default=None, type=str,
        help="hub name, local folder or checkpoint of the tower (text and image sides)",
    )  # fmt: skip


@dataclass(frozen=True)
class DataRootFlags:
    """The feature root: ``DATA_ROOT/<task>_<extractor>/`` holds a task's feature files."""

    data_root_dir: str | None = flag(
        "--data_root_dir", default=None, type=str, help="feature root: DATA_ROOT/<task>_<extractor>/..."
    )

    def required(self) -> str:
        """The root, or one :class:`InputError` line when the flag was not given."""
        if self.data_root_dir is None:
            raise InputError(
                "--data_root_dir is required (the folder that holds <task>_<extractor>/ features)"
            )
        return self.data_root_dir


@dataclass(frozen=True)
class DeviceFlags:
    """Where models run."""

    device: str = flag("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")


@dataclass(frozen=True)
class AmpFlags:
    """Mixed precision of forward passes."""

    amp: str = flag(
        "--amp", default="off", choices=AMP_MODES,
        help="mixed precision for the forward pass: bf16 (CPU/GPU) or fp16 (CUDA, with gradient scaling)",
    )  # fmt: skip


@dataclass(frozen=True)
class ThreadFlags:
    """CPU threads of torch."""

    threads: int = flag(
        "--threads", default=0,
        help="CPU threads for torch (0: torch's default); small slides on CPU are often fastest with 1",
    )  # fmt: skip

    def check(self) -> None:
        if self.threads < 0:
            raise InputError(f"--threads must be >= 0, got {self.threads}")
