"""How files reach the disk: whole or not at all, with the umask's permissions, one run per output."""

import errno
import os
import stat

import pytest

from miracle import files


def test_a_written_file_gets_the_permissions_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        files.write_bytes(tmp_path / "a.mrc", b"abc")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.mrc").stat().st_mode) == 0o644


def test_a_full_disk_is_one_clear_error_keeping_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    files.save_torch({"step": 1}, target)
    before = target.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(files.WriteError, match=r"no space left on the device \(.* needed, .* free\)") as e:
        files.save_torch({"step": 2}, target)
    assert str(target) in str(e.value)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary file left


def test_a_second_holder_of_a_work_directory_is_refused_until_the_first_lets_go(tmp_path):
    with files.exclusive(tmp_path / "run"):
        with pytest.raises(files.OutputLocked, match=rf"process {os.getpid()}\) is using .*run"):
            with files.exclusive(tmp_path / "run"):
                pass
    with files.exclusive(tmp_path / "run"):  # released
        pass
