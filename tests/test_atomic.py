import os

import pytest

from utils.atomic import atomic_open, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "good")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "good"
    assert os.listdir(tmp_path) == ["out.txt"]
