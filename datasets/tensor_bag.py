"""A slide bag from a ``.pt`` / ``.pth`` tensor file (docs/formats.md §8), the tensor counterpart of
:func:`datasets.features.read_slide_bag` (which reads the 5x and hierarchical ``.h5`` files).

Used by ``predict.py`` (:mod:`inference.slide_inputs`) for tensor inputs; torch is imported when a file
is read, not when this module is.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from datasets.bag import SlideBag
from datasets.hierarchy import (
    build_hierarchical_arrays,
    children_per_parent,
    link_children,
    patch_px,
    slide_salt,
)
from utils.errors import InputError, one_line


def _tensor(obj, key: str, path: Path, ndim: tuple[int, ...], dtype=None):
    """``obj[key]`` checked (a tensor of ``ndim`` dimensions) and converted to ``dtype``; None when absent.

    Features (``dtype`` float32) must be real floating point: complex (its imaginary part would be
    dropped), integer and bool tensors are refused. Coordinates (``dtype`` int64) must be integers or
    whole real numbers; a mask (no ``dtype``) real.
    """
    import torch

    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{path}: '{key}' is not a tensor")
    if value.ndim not in ndim:
        raise InputError(
            f"{path}: '{key}' should have {' or '.join(map(str, ndim))} dimensions, has shape {list(value.shape)}"
        )
    if value.is_complex() or (dtype == torch.float32 and not value.is_floating_point()):
        need = "real floating point (float16/32/64)" if dtype == torch.float32 else "real"
        raise InputError(f"{path}: '{key}' is {str(value.dtype).replace('torch.', '')}; it must be {need}")
    if dtype == torch.int64:
        if value.dtype == torch.bool:
            raise InputError(f"{path}: '{key}' is bool; coordinates must be integers")
        if value.is_floating_point() and not bool((torch.isfinite(value) & (value == value.round())).all()):
            raise InputError(
                f"{path}: '{key}' holds values that are not whole numbers; coordinates are pixels"
            )
    return value if dtype is None else value.to(dtype)


def _refuse_repeated(path: Path, key: str, coords) -> None:
    """Each patch listed once (as training's hierarchy builder requires): a repeated coordinate in
    ``coords`` [K, 2] is one line naming its first two rows."""
    if coords is None or coords.shape[0] < 2:
        return
    rows = coords.numpy()
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    repeats = np.flatnonzero(first[inverse.reshape(-1)] != np.arange(len(rows)))  # rows seen earlier
    if repeats.size:
        later = int(repeats[0])
        earlier = int(first[inverse.reshape(-1)[later]])
        x, y = (int(v) for v in rows[later])
        raise InputError(
            f"{path}: duplicate '{key}' coordinate ({x}, {y}) at rows {earlier} and {later} "
            f"({repeats.size} repeated row(s)); each patch must be listed once"
        )


def _level0_mag(value, path: Path) -> float:
    """The file's own ``level0_mag``: one positive whole number (a number, a one-element tensor or a
    numeric string)."""
    import torch

    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    try:
        mag = float(value) if not isinstance(value, bool | torch.Tensor) else -1.0
    except (TypeError, ValueError):
        mag = -1.0
    if not (mag > 0 and mag == int(mag)):
        raise InputError(f"{path}: 'level0_mag' must be a positive whole number, got {str(value)[:40]!r}")
    return mag


def read_tensor_bag(
    path: Path,
    slide_id: str,
    feature_dim: int,
    low_mag: float = 5,
    high_mag: float = 20,
    level0_mag: float | None = None,
    label: int | None = None,
) -> SlideBag:
    """A slide from a ``.pt``/``.pth`` file (``torch.load(weights_only=True)``; docs/formats.md §8).

    Accepted forms:

    * a dict with ``x5`` [N5, D] and ``x20`` [N5, M, D] (row i: the children of 5x patch i, zero-padded),
      optional ``child_mask`` [N5, M] bool (default: the non-zero slots), ``coords5`` [N5, 2] and
      ``coords20`` [N5, M, 2] (level-0 top-left corners) and ``level0_mag``;
    * a dict with ``x5``, ``coords5``, a flat ``x20`` [N20, D] with ``coords20`` [N20, 2] and
      ``level0_mag``: the 20x patches are linked to their 5x parents as ``create_hierarchical_features.py``
      links them (a 20x patch under every 5x patch containing its corner, at most (high/low)^2 per parent);
    * a dict with ``features`` [N, D] and optional ``coords`` [N, 2], or a plain [N, D] tensor: a flat
      bag of instances, usable only by the instance baselines (ABMIL, TransMIL, ...).
    """
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            f"{path}: cannot read as a torch file (not written by torch.save, or it holds objects other "
            "than tensors, numbers, strings, lists and dicts)"
        ) from None
    except Exception as err:
        raise InputError(f"{path}: cannot read as a torch file ({one_line(err)})") from None
    if isinstance(obj, torch.Tensor):
        obj = {"features": obj}
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict of tensors or an [N, D] tensor, got {type(obj).__name__}")
    if level0_mag is None and obj.get("level0_mag") is not None:
        level0_mag = _level0_mag(obj["level0_mag"], path)
    meta: dict = {"format": "tensor", "file": str(path)}
    if "x5" in obj:
        x5 = _tensor(obj, "x5", path, (2,), torch.float32)
        x20 = _tensor(obj, "x20", path, (2, 3), torch.float32)
        if x20 is None:
            raise InputError(f"{path}: has 'x5' but no 'x20' (20x features)")
        coords5 = _tensor(obj, "coords5", path, (2,), torch.int64)
        coords20 = _tensor(obj, "coords20", path, (2, 3), torch.int64)
        n5 = x5.shape[0]
        if coords5 is not None and tuple(coords5.shape) != (n5, 2):
            raise InputError(f"{path}: 'coords5' has shape {list(coords5.shape)}, expected [{n5}, 2]")
        _refuse_repeated(path, "coords5", coords5)
        if x20.ndim == 2:
            if coords20 is not None and coords20.ndim == 2:
                _refuse_repeated(path, "coords20", coords20)
            x20, child_mask, coords20 = _link_flat_20x(
                path, slide_id, x5, coords5, x20, coords20, level0_mag, low_mag, high_mag
            )
        else:
            if x20.shape[0] != n5:
                raise InputError(
                    f"{path}: 'x20' has {x20.shape[0]} rows, 'x5' {n5}; row i must hold 5x patch i's children"
                )
            child_mask = _tensor(obj, "child_mask", path, (2,))
            if child_mask is None:
                child_mask = (x20 != 0).any(dim=-1)
            elif tuple(child_mask.shape) != tuple(x20.shape[:2]):
                raise InputError(
                    f"{path}: 'child_mask' has shape {list(child_mask.shape)}, expected {list(x20.shape[:2])}"
                )
            child_mask = child_mask.to(torch.bool)
            if coords20 is not None and tuple(coords20.shape) != (*x20.shape[:2], 2):
                raise InputError(
                    f"{path}: 'coords20' has shape {list(coords20.shape)}, expected {[*x20.shape[:2], 2]}"
                )
            if coords20 is not None:
                _refuse_repeated(path, "coords20", coords20[child_mask])
            x20 = x20 * child_mask.unsqueeze(-1)
        if not bool(child_mask.any()):
            raise InputError(f"{path}: no 20x children")
        if x20.shape[-1] != x5.shape[1]:
            raise InputError(f"{path}: 'x20' has dimension {x20.shape[-1]}, 'x5' {x5.shape[1]}")
    elif "features" in obj:
        feats = _tensor(obj, "features", path, (2,), torch.float32)
        coords = _tensor(obj, "coords", path, (2,), torch.int64)
        if coords is not None and tuple(coords.shape) != (feats.shape[0], 2):
            raise InputError(
                f"{path}: 'coords' has shape {list(coords.shape)}, expected [{feats.shape[0]}, 2]"
            )
        _refuse_repeated(path, "coords", coords)
        x5, x20 = feats, feats.unsqueeze(1)
        child_mask = torch.ones(feats.shape[0], 1, dtype=torch.bool)
        coords5, coords20 = coords, None if coords is None else coords.unsqueeze(1)
        meta["flat"] = True
    else:
        raise InputError(
            f"{path}: a dict needs 'x5' and 'x20' (5x/20x bag) or 'features' (flat bag); found "
            f"{', '.join(map(str, obj)) or 'no keys'}"
        )
    if x5.shape[0] == 0:
        raise InputError(f"{path}: empty bag (0 patches)")
    if x5.shape[1] != feature_dim:
        raise InputError(f"{path}: feature dim mismatch: expected {feature_dim}, found {x5.shape[1]}")
    if not (torch.isfinite(x5).all() and torch.isfinite(x20).all()):
        raise InputError(f"{path}: features contain NaN or Inf")
    if level0_mag:
        meta["level0_mag"] = int(level0_mag)
    return SlideBag(
        slide_id, x5.contiguous(), x20.contiguous(), child_mask.contiguous(),
        -1 if label is None else int(label), coords5, coords20, meta,
    )  # fmt: skip


def _link_flat_20x(path, slide_id, x5, coords5, x20, coords20, level0_mag, low_mag, high_mag):
    """Scatter flat 20x patches onto their 5x parents (the hierarchy builder's linking)."""
    import torch

    if coords5 is None or coords20 is None or not level0_mag:
        raise InputError(
            f"{path}: a flat 'x20' [N20, D] needs 'coords5', 'coords20' [N20, 2] and 'level0_mag' to be linked "
            "to its 5x parents (or give 'x20' as [N5, M, D])"
        )
    if tuple(coords20.shape) != (x20.shape[0], 2):
        raise InputError(f"{path}: 'coords20' has shape {list(coords20.shape)}, expected [{x20.shape[0]}, 2]")
    width = children_per_parent(low_mag, high_mag)
    link = link_children(
        coords5.numpy(), coords20.numpy(), patch_px(level0_mag, low_mag), max_children=width,
        salt=slide_salt(slide_id),
    )  # fmt: skip
    arrays = build_hierarchical_arrays(x20.numpy(), coords20.numpy(), link)
    n5 = x5.shape[0]
    feats = np.zeros((n5, width, x20.shape[1]), dtype=np.float32)
    coords = np.zeros((n5, width, 2), dtype=np.int64)
    mask = np.zeros((n5, width), dtype=bool)
    feats[arrays.parent_index] = arrays.features
    coords[arrays.parent_index] = arrays.coords
    mask[arrays.parent_index] = arrays.child_mask
    return torch.from_numpy(feats), torch.from_numpy(mask), torch.from_numpy(coords)
