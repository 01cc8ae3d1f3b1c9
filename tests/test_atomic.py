"""netvlad._atomic: the target appears only complete, failures leave the old file and no temp file."""

from __future__ import annotations

import os
import stat
import sys

import numpy as np
import pytest

from netvlad._atomic import atomic_write, atomic_write_text


def test_write_text_round_trip_and_creates_parents(tmp_path):
    out = tmp_path / "a" / "b" / "report.json"
    assert atomic_write_text(out, "héllo\n") == out
    assert out.read_bytes() == "héllo\n".encode()
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.json"]


def test_target_appears_only_when_complete(tmp_path):
    out = tmp_path / "f.bin"
    out.write_bytes(b"old")
    seen = []

    def write(tmp):
        assert os.path.dirname(tmp) == str(tmp_path)  # same folder: os.replace stays atomic
        assert os.path.getsize(tmp) == 0
        with open(tmp, "wb") as f:
            f.write(b"new-part-1")
            f.flush()
            seen.append(out.read_bytes())  # mid-write, readers still see the old file
            f.write(b"-part-2")

    atomic_write(out, write)
    assert seen == [b"old"]
    assert out.read_bytes() == b"new-part-1-part-2"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_keeps_old_content_and_removes_temp(tmp_path, exc):
    out = tmp_path / "model.pt"
    out.write_text("old content")
    tmps = []

    def write(tmp):
        tmps.append(tmp)
        with open(tmp, "w") as f:
            f.write("half of the new")
        raise exc

    with pytest.raises(type(exc)):
        atomic_write(out, write)
    assert out.read_text() == "old content"
    assert not os.path.exists(tmps[0])
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_failure_without_old_file_leaves_nothing(tmp_path):
    out = tmp_path / "new.txt"

    def write(tmp):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        atomic_write(out, write)
    assert list(tmp_path.iterdir()) == []


def test_suffix_for_writers_that_append_an_extension(tmp_path):
    # np.save appends ".npy" unless the name already ends with it
    out = tmp_path / "descs.npy"
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    atomic_write(out, lambda tmp: np.save(tmp, x), suffix=".tmp.npy")
    np.testing.assert_array_equal(np.load(out), x)
    assert [p.name for p in tmp_path.iterdir()] == ["descs.npy"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_final_file_gets_umask_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        out = atomic_write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # like open(path, "w"), not mkstemp's 0600
