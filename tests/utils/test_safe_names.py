"""utils.safe_names: the one rule for ids that name files, and outputs kept under their root."""

from __future__ import annotations

import os

import pytest

from utils.errors import InputError
from utils.safe_names import check_name, check_names, contained, distinct_outputs, name_problem

HOSTILE = ["../../x", "/tmp/x", "a/b", "a\\b", "..", ".", "", "x\x00y", "x\ny", "tab\there", "del\x7f"]
HARMLESS = [
    "ok..id",
    "a..b",
    "..a",
    "b..",
    "TCGA-A7-A0CE-01Z-00-DX1.0BB9B7B4-A7AB-4F5F-A0F6-2A6CBB53D4B1",
    "TCGA-05-4244-01Z-00-DX1.d4ff32cd-38cf-40ea-8213-45c2b100ac01",
    "slide with spaces",
    "naïve_ü",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_with_where_they_came_from(name):
    assert name_problem(name) is not None
    with pytest.raises(InputError) as err:
        check_name(name, "slide id", "dataset.csv: data row 7")
    message = str(err.value)
    assert message.startswith("dataset.csv: data row 7: slide id ")
    assert "\n" not in message and "\x00" not in message  # one printable line even for control characters


@pytest.mark.parametrize("name", HARMLESS)
def test_harmless_names_pass_unchanged(name):
    assert name_problem(name) is None
    assert check_name(name, "slide id", "here") == name


def test_check_names_names_the_file_and_the_first_bad_row():
    with pytest.raises(InputError, match=r"t\.csv: data row 3: case id '\.\.'"):
        check_names(["a", "b..c", "..", "/x"], "case id", "t.csv")


def test_contained_keeps_outputs_under_the_root(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert contained(root, "a", "b.h5") == (root / "a" / "b.h5").resolve()
    assert contained(root, "a/../b.h5") == (root / "b.h5").resolve()
    for parts in (("../x.h5",), ("a", "../../x.h5"), ("/tmp/x.h5",)):
        with pytest.raises(InputError, match="leaves the output folder"):
            contained(root, *parts)
    assert not (tmp_path / "x.h5").exists()


def test_contained_sees_through_a_symbolic_link_leaving_the_root(tmp_path):
    root, outside = tmp_path / "out", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(InputError, match="leaves the output folder"):
        contained(root, "link", "x.h5")


def test_distinct_outputs_refuses_two_names_of_one_file(tmp_path):
    (tmp_path / "plip_5x").mkdir()
    os.symlink(tmp_path / "plip_5x", tmp_path / "plip_20x")
    distinct_outputs({"5x": tmp_path / "plip_5x" / "s.h5", "20x": tmp_path / "other" / "s.h5"})
    with pytest.raises(InputError, match="the 20x output and the 5x output are the same file"):
        distinct_outputs({"5x": tmp_path / "plip_5x" / "s.h5", "20x": tmp_path / "plip_20x" / "s.h5"})
