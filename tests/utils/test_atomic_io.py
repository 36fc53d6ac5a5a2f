"""A write that fails half-way (a full disk) is one line naming the file; the partial file is removed."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from models.checkpoint import read_checkpoint, save_checkpoint
from utils.atomic_io import WriteError, atomic_path, atomic_write_text
from utils.errors import InputError, run_cli


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _full_disk_after(nbytes: int):
    """A writer that writes ``nbytes`` to the file it is given, then fails as a full disk does."""

    def write(path):
        with open(path, "wb") as handle:
            handle.write(b"x" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def test_enospc_mid_write_removes_the_partial_file_and_names_the_target(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("old\n")
    with pytest.raises(WriteError) as err:
        with atomic_path(target, suffix=".csv") as tmp:
            _full_disk_after(4096)(tmp)
    message = str(err.value)
    assert message.startswith(f"{target}: writing failed (no space left on the device)")
    assert isinstance(err.value, InputError) and isinstance(err.value, OSError)
    assert target.read_text() == "old\n"  # the previous version is intact
    assert _leftovers(tmp_path) == []


def test_other_io_errors_keep_their_reason(tmp_path):
    with pytest.raises(WriteError, match=r"x\.txt: writing failed \(.*Input/output error\)"):
        with atomic_path(tmp_path / "x.txt"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
    assert _leftovers(tmp_path) == []


def test_a_cli_prints_one_line_and_exits_2(tmp_path, capsys, monkeypatch):
    def failing_write_text(self, text, encoding=None):
        _full_disk_after(10)(self)

    monkeypatch.setattr(Path, "write_text", failing_write_text)

    def main(argv):
        atomic_write_text(tmp_path / "splits_0.csv", "a,b\n")

    assert run_cli(main, []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "splits_0.csv: writing failed (no space left on the device)" in err
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_on_a_full_disk_names_the_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "s_0_checkpoint.pt"

    def failing_write_bytes(self, data):
        _full_disk_after(len(data) // 2)(self)

    monkeypatch.setattr(Path, "write_bytes", failing_write_bytes)
    with pytest.raises(WriteError, match=r"s_0_checkpoint\.pt: writing failed \(no space left"):
        save_checkpoint(target, {"w": torch.ones(3)})
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_round_trip_unchanged(tmp_path):
    target = tmp_path / "c.pt"
    save_checkpoint(target, {"w": torch.arange(4.0)}, identity={"model_type": "x"})
    state, identity = read_checkpoint(target)
    assert torch.equal(state["w"], torch.arange(4.0)) and identity == {"model_type": "x"}


def test_input_errors_inside_the_block_pass_unchanged(tmp_path):
    with pytest.raises(InputError) as err:
        with atomic_path(tmp_path / "x"):
            raise InputError("bad input")
    assert not isinstance(err.value, WriteError) and str(err.value) == "bad input"
