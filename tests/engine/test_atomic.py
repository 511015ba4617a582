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


def test_group_write_is_all_or_nothing_when_a_target_is_a_folder(tmp_path):
    from utils.atomic import AtomicWriteError, atomic_write_group

    (tmp_path / "a.png").write_bytes(b"old")
    (tmp_path / "maps" / "b.npy").mkdir(parents=True)  # a folder where a file must go
    with pytest.raises(AtomicWriteError, match=r"b\.npy.*folder"):
        atomic_write_group({tmp_path / "a.png": b"new", tmp_path / "maps" / "b.npy": b"x"})
    assert (tmp_path / "a.png").read_bytes() == b"old" and not list(tmp_path.rglob(".*.tmp"))
