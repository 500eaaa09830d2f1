"""Atomic file writes: the target holds either its old content or the complete new one, never a part.

Every write goes to a temporary file in the target's folder, named after the target and the writing
process (``.<name>.<pid>.prunekit-tmp``), is flushed to disk and only then renamed over the target.
An existing target keeps its permission bits (a new file gets the umask's, not ``mkstemp``'s 0600).
A process killed mid-write (``kill -9``) leaves its temporary file behind; the next write to the same
target removes every such file whose process is gone.

>>> import os, tempfile
>>> d = tempfile.mkdtemp()
>>> with atomic_path(os.path.join(d, "x.txt")) as tmp:
...     _ = open(tmp, "w").write("hello")
>>> sorted(os.listdir(d))
['x.txt']
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path
from typing import Iterator

SUFFIX = ".prunekit-tmp"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def temp_name(target: Path, pid: int | None = None) -> Path:
    """Where the process ``pid`` (default: this one) stages a write to ``target``."""
    return target.parent / f".{target.name}.{os.getpid() if pid is None else pid}{SUFFIX}"


def stale_temps(target: Path) -> list[Path]:
    """Temporary files for ``target`` left by processes that no longer run."""
    prefix = f".{target.name}."
    out = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(SUFFIX)):
                continue
            pid = name[len(prefix):-len(SUFFIX)]
            if pid.isdigit() and not _alive(int(pid)):
                out.append(Path(entry.path))
    return out


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename.

    On any exception (``KeyboardInterrupt`` included) the temporary file is removed and ``path`` is
    untouched. A ``path`` that is a directory is refused before anything is written.
    """
    target = Path(os.fspath(path)).absolute()
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file to write", str(target))
    if not target.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "folder does not exist", str(target.parent))
    for old in stale_temps(target):
        with contextlib.suppress(OSError):
            old.unlink()
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = _new_file_mode()
    tmp = temp_name(target)
    try:
        yield str(tmp)
        if not tmp.exists():
            raise FileNotFoundError(errno.ENOENT, "the writer created no file", str(tmp))
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike, last: str | None = None) -> Iterator[Path]:
    """Yield an empty staging folder beside ``folder``; on success move every file written there into
    ``folder`` (created if needed), each by one rename, ``last`` after all the others.

    Each file in ``folder`` is then either its old or its complete new version, never a part; files
    not written this time are left alone. On an exception nothing in ``folder`` changes and the
    staging folder is removed; one left by a killed process is removed by the next write here.
    """
    target = Path(os.fspath(folder)).absolute()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    for old in stale_temps(target):
        _remove(old)
    stage = temp_name(target)
    _remove(stage)
    stage.mkdir()
    try:
        yield stage
        target.mkdir(exist_ok=True)
        names = sorted(p.name for p in stage.iterdir())
        names.sort(key=lambda n: n == last)  # stable: ``last`` moves last
        for name in names:
            dest = target / name
            if dest.exists() and not dest.is_dir():
                with contextlib.suppress(OSError):
                    os.chmod(stage / name, stat.S_IMODE(os.stat(dest).st_mode))
            else:
                os.chmod(stage / name, _new_file_mode())
            os.replace(stage / name, dest)
        _fsync_dir(target)
    finally:
        _remove(stage)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))
