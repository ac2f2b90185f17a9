"""Atomic file and directory writes.

A run killed at any moment (Ctrl-C, an out-of-memory kill, a cluster pre-emption) must never
leave a half-written file that a later step mistakes for a finished one. Everything is
written under a temporary name in the same directory and moved into place with
``os.replace`` / ``os.rename``, which are atomic on POSIX within one file system.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (best effort: not every file system supports it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The writer gets a path (not a handle) so that libraries that want a file name
    (``torch.save``, ``safetensors.save_file``) can write through it. On an exception the
    temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates the file 0600; results are meant to be read by others, as umask allows.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any, indent: int = 2) -> None:
    """JSON with sorted keys and a trailing newline; NaN/inf are refused (they are not JSON)."""
    write_text(path, json.dumps(value, indent=indent, sort_keys=True, allow_nan=False) + "\n")


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """``writer(tmp_path)`` then move into place: for ``torch.save`` and friends."""
    with atomic_path(path) as tmp:
        writer(tmp)


def publish_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Rename a finished ``tmp_dir`` to ``final_dir`` (which must not exist yet, or be empty).

    The workflow may have created ``final_dir`` empty (Snakemake makes output folders for
    some rules); an empty directory is replaced, a non-empty one is an error rather than
    silently merged.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    if final_dir.exists():
        if final_dir.is_dir() and not any(final_dir.iterdir()):
            final_dir.rmdir()
        else:
            raise FileExistsError(f"cannot publish {tmp_dir} as {final_dir}: the destination exists and is not empty")
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)


def remove_tree(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)
