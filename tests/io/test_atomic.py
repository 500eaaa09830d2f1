"""Atomic writes: the target is the old file or the complete new one; modes kept; temp files of
killed writers cleaned up; a directory or missing folder refused before writing."""
import os
import subprocess
import sys

import pytest

from prunekit.io.atomic import atomic_path, staged_folder, stale_temps, temp_name, write_text


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)


def test_an_interrupt_mid_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.txt"
    write_text(path, "old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            open(tmp, "w").write("half")
            raise KeyboardInterrupt
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_a_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        with atomic_path(tmp_path / "f.txt"):
            pass
    assert os.listdir(tmp_path) == []


def test_directory_and_missing_folder_are_refused(tmp_path):
    with pytest.raises(IsADirectoryError):
        with atomic_path(tmp_path):
            raise AssertionError("not reached")
    with pytest.raises(FileNotFoundError, match="folder does not exist"):
        write_text(tmp_path / "nope" / "f.txt", "x")


def test_modes_are_kept_and_stale_temps_removed(tmp_path):
    path = tmp_path / "f.txt"
    write_text(path, "a")
    os.chmod(path, 0o604)
    stale = temp_name(path.absolute(), _dead_pid())
    stale.write_text("left by kill -9")
    other = tmp_path / ".g.txt.1.prunekit-tmp"  # another target's temp: not ours to remove
    other.write_text("x")
    assert stale_temps(path.absolute()) == [stale]
    write_text(path, "b")
    assert path.read_text() == "b" and os.stat(path).st_mode & 0o777 == 0o604
    assert sorted(os.listdir(tmp_path)) == sorted(["f.txt", other.name])


def test_staged_folder_moves_files_in_and_removes_a_dead_writers_stage(tmp_path):
    target = tmp_path / "out"
    stale = temp_name(target.absolute(), _dead_pid())
    stale.mkdir()
    (stale / "junk").write_text("x")
    with staged_folder(target, last="b") as stage:
        (stage / "b").write_text("page")
        (stage / "a").write_text("data")
    assert sorted(os.listdir(target)) == ["a", "b"] and sorted(os.listdir(tmp_path)) == ["out"]
    with pytest.raises(RuntimeError):
        with staged_folder(target) as stage:
            (stage / "a").write_text("new")
            raise RuntimeError("failed")
    assert (target / "a").read_text() == "data" and sorted(os.listdir(tmp_path)) == ["out"]
