"""HDF5 datasets whose declared size the file cannot hold are refused before any data is read, named
after the file that has the problem; genuine (also compressed) files are read as before."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import datasets.features as features
from datasets.features import FeatureLayout, check_declared_size, read_patch_file, read_slide_bag
from datasets.slide_check import check_slide
from tests.toy_task import write_slide
from utils.errors import InputError

HUGE = 10**8


@pytest.fixture
def layout(tmp_path):
    lay = FeatureLayout(tmp_path, "t", "fe")
    write_slide(lay, "s", 0, np.random.default_rng(0), dim=8)
    return lay


@pytest.fixture
def no_reads(monkeypatch):
    """Fail the test when any dataset row is read."""

    def forbidden(*args, **kwargs):
        raise AssertionError("data was read")

    monkeypatch.setattr(features, "read_array", forbidden)


def _forge(path, shape, dtype="f4", key="features", **kwargs):
    """Replace dataset ``key`` of ``path`` by an unwritten one declaring ``shape`` (no data stored)."""
    with h5py.File(path, "a") as f:
        del f[key]
        f.create_dataset(key, shape=shape, dtype=dtype, **kwargs)


def test_a_tiny_5x_file_declaring_huge_rows_is_refused_unread(layout, no_reads):
    _forge(layout.low_file("s"), (HUGE, 8))
    _forge(layout.low_file("s"), (HUGE, 2), "i8", key="coords")
    assert layout.low_file("s").stat().st_size < 4096
    verdict = check_slide(layout, "s", None)
    assert verdict.problem.startswith(f"{layout.low_file('s')}: 'features' declares shape [100000000x8]")
    assert str(layout.hier_file("s")) not in verdict.problem


def test_a_huge_hierarchical_declaration_names_the_hierarchical_file(layout):
    _forge(layout.hier_file("s"), (HUGE, 16, 8))
    verdict = check_slide(layout, "s", None)
    assert verdict.problem.startswith(f"{layout.hier_file('s')}: 'features' declares shape [100000000x16x8]")


def test_chunked_declarations_need_every_chunk_stored(layout, no_reads):
    _forge(layout.low_file("s"), (HUGE, 8), chunks=(1024, 8))
    with pytest.raises(InputError, match=r"only 0 of its 97,657 chunks are stored"):
        read_patch_file(layout.low_file("s"), "5x feature")


def test_a_truncated_file_is_refused(tmp_path):
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.ones((4096, 64), np.float32))
        f.create_dataset("coords", data=np.zeros((4096, 2), np.int64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"a\.h5: "):
        read_patch_file(path, "5x feature")


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "gzip", "compression_opts": 9, "shuffle": True},
        {"compression": "lzf"},
        {"scaleoffset": 3},  # not deflate: held to the stored-chunk rule only
        {"chunks": (7, 3)},
        {"compression": "gzip", "fletcher32": True, "chunks": (5, 64)},
    ],
)
def test_genuine_chunked_and_highly_compressed_files_pass(tmp_path, options):
    """All-zero features compress about 900:1 with gzip; they are genuine and must be read."""
    path = tmp_path / "z.h5"
    feats = np.zeros((5000, 64), np.float32)
    feats[::97, 0] = 1.0
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats, **options)
        f.create_dataset("coords", data=np.arange(10000).reshape(5000, 2))
        check_declared_size(f["features"], path)
    got, coords = read_patch_file(path, "5x feature")
    np.testing.assert_array_equal(got, feats)
    assert coords.shape == (5000, 2)


def test_gzip_beyond_what_deflate_can_expand_is_refused(tmp_path):
    """Every chunk stored, but each as a few bytes claiming 4 MiB: deflate cannot expand 1100-fold."""
    import zlib

    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("features", shape=(4, 2**20), dtype="f4", chunks=(1, 2**20), compression="gzip")
        for row in range(4):
            ds.id.write_direct_chunk((row, 0), zlib.compress(b"\0" * 64))
    with h5py.File(path, "r") as f:
        with pytest.raises(InputError, match="bomb.h5: 'features' declares .* more than deflate can expand"):
            check_declared_size(f["features"], path)


def test_more_hierarchical_rows_than_5x_patches_is_refused_before_reading_rows(layout, monkeypatch):
    hier = layout.hier_file("s")
    with h5py.File(hier, "r") as f:
        rows, width, dim = f["features"].shape
    with h5py.File(hier, "w") as f:
        f.create_dataset("features", data=np.ones((rows + 3, width, dim), np.float32))
        f.create_dataset("coords", data=np.zeros((rows + 3, width, 2), np.int64))
        f.create_dataset("parent_index", data=np.arange(rows + 3))
        f.create_dataset("child_mask", data=np.ones((rows + 3, width), bool))
    with pytest.raises(InputError, match=rf"{rows + 3} hierarchical rows but .*fe_5x/s\.h5 has only {rows}"):
        read_slide_bag(layout, "s")


def test_nan_rows_are_counted_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(features, "_BLOCK_ROWS", 3)
    path = tmp_path / "n.h5"
    feats = np.ones((10, 4), np.float32)
    feats[[1, 5, 9], 2] = np.nan
    feats[7, 0] = np.inf
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
        f.create_dataset("coords", data=np.zeros((10, 2), np.int64))
    with pytest.raises(InputError, match=r"n\.h5: 4 feature rows contain NaN or Inf"):
        read_patch_file(path, "5x feature")
    got, _ = read_patch_file(path, "5x feature", check_finite=False)
    np.testing.assert_array_equal(got, feats)


def test_a_corrupt_chunk_is_named_after_its_file(layout, tmp_path):
    path = layout.low_file("s")
    with h5py.File(path, "r") as f:
        feats, coords = f["features"][()], f["coords"][()]
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.repeat(feats, 200, axis=0), compression="gzip", chunks=(64, 8))
        f.create_dataset("coords", data=np.repeat(coords, 200, axis=0))
        offset = f["features"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 40] = b"\xff" * 40
    path.write_bytes(bytes(data))
    verdict = check_slide(layout, "s", None)
    assert verdict.problem.startswith(f"{path}: cannot read 5x feature file")
