"""Atomic file and directory writes.

A run killed at any moment (Ctrl-C, an out-of-memory kill, a cluster pre-emption) must never
leave a half-written file that a later step mistakes for a finished one. Everything is
written under a temporary name in the same directory and moved into place with
``os.replace`` / ``os.rename``, which are atomic on POSIX within one file system.

Files: ``atomic_path`` / ``write_with`` (and the ``write_*`` shorthands). Directories:
``staged_dir`` writes one afresh and publishes it; ``claim_dir`` holds a run's resumable
temporary directory, which ``publish_dir`` moves into place when the run is done.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def disk_full_error(path: str | os.PathLike, error: BaseException) -> OSError | None:
    """An ``OSError(ENOSPC)`` naming ``path`` if ``error`` came from a full file system, else None.

    Libraries report a full disk in their own words (torch's zip writer: "unexpected pos",
    safetensors: an I/O error): when a write fails and the file system has no space left, the
    error says so, with the path, whatever the library said.
    """
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return OSError(errno.ENOSPC, f"no space left on the device holding {path}: free some space and rerun "
                                     f"(what was already written, e.g. a checkpoint, is kept)", str(path))
    if not isinstance(error, Exception):
        return None
    try:
        free = os.statvfs(Path(path).parent if not Path(path).is_dir() else path).f_bavail
    except OSError:
        return None
    return disk_full_error(path, OSError(errno.ENOSPC, "")) if free == 0 else None


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


def _current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk, so that once ``root`` is renamed
    into place a crash cannot leave it complete in name but with empty files. Links are not
    followed: what they point at is not part of the tree."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


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
    os.chmod(tmp, 0o666 & ~_current_umask())
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        full = disk_full_error(path, error)
        if full is not None:
            raise full from error
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
    silently merged. Links are never followed: a ``tmp_dir`` or ``final_dir`` that is a
    symbolic link is refused (renaming onto it, or clearing it, would act on its target).
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    if not is_plain_dir(tmp_dir):
        raise FileExistsError(f"cannot publish {tmp_dir}: it is not a plain directory (a link or a file)")
    if final_dir.is_symlink():
        raise FileExistsError(f"cannot publish {tmp_dir} as {final_dir}: the destination is a symbolic link; "
                              "move it away")
    if final_dir.exists():
        if is_plain_dir(final_dir) and not any(final_dir.iterdir()):
            final_dir.rmdir()
        else:
            raise FileExistsError(f"cannot publish {tmp_dir} as {final_dir}: the destination exists and is not empty")
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp_dir, final_dir)
    except OSError as error:
        # Another process published the same directory between the check above and here.
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(f"cannot publish {tmp_dir} as {final_dir}: the destination exists and is not "
                                  "empty") from error
        raise
    _fsync_dir(final_dir.parent)


@contextmanager
def staged_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a new, empty directory beside ``final_dir``; when the block ends without an
    error, its files are flushed to disk and it is published as ``final_dir``.

    Publishing follows ``publish_dir``: an absent or empty ``final_dir`` is replaced; one that
    exists and is not empty (also when another process published it while this one was
    writing) raises ``FileExistsError``, and the caller decides whether that is an error or
    the other writer's equal result. On any error, that refusal included, the staging
    directory is removed and ``final_dir`` is left as it was. Each call stages afresh: for a
    directory a run resumes after an interruption, use ``claim_dir``.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
    # mkdtemp makes the directory private; what is published is read by others, as umask allows.
    os.chmod(staging, 0o777 & ~_current_umask())
    try:
        yield staging
        _fsync_tree(staging)
        publish_dir(staging, final_dir)
    except BaseException:
        remove_tree(staging)
        raise


def is_plain_dir(path: str | os.PathLike) -> bool:
    """A directory itself, not a symbolic link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def clear_dir(directory: str | os.PathLike, keep: tuple[str, ...] = ()) -> None:
    """Delete everything in ``directory`` but the names in ``keep``, never following a link:
    a symbolic link is removed itself, its target left alone."""
    directory = Path(directory)
    if not is_plain_dir(directory):
        raise FileExistsError(f"refusing to clear {directory}: it is not a plain directory (a link or a file)")
    for entry in directory.iterdir():
        if entry.name in keep:
            continue
        if is_plain_dir(entry):
            shutil.rmtree(entry)  # rmtree removes links inside without following them
        else:
            entry.unlink()


# The marker a run writes into its temporary directory when it creates it: a DIR.tmp without
# it (or with another run's) was not made by this run and is never cleared or published.
OWNER_FILE = ".diffprune-run.json"


class ClaimedDir:
    """A run's temporary directory, held with an exclusive ``flock`` until ``release``.

    ``claim_dir(path, owner)`` creates ``path`` (a plain directory, marked with ``owner``) or
    takes the one an interrupted attempt of the same run left; a second process claiming the
    same path waits until the first releases it (its job ended: finished, crashed or killed,
    the kernel drops the lock with the process), then sees what the first left. The lock is on
    the directory itself, so it moves with it when the directory is published by rename.
    """

    def __init__(self, path: Path, fd: int, created: bool) -> None:
        self.path, self.fd, self.created = path, fd, created

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1

    def __enter__(self) -> "ClaimedDir":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_dir(path: str | os.PathLike, owner: dict, on_wait=None) -> ClaimedDir:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        if os.path.lexists(path) and not is_plain_dir(path):
            raise FileExistsError(f"{path} exists and is not a plain directory (a symbolic link or a file): a run "
                                  "never writes through it; move it away and rerun")
        created = False
        try:
            os.mkdir(path)
            created = True
        except FileExistsError:
            pass
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError, OSError) as error:
            if isinstance(error, FileNotFoundError):
                continue  # published or removed by its holder in between: look again
            raise FileExistsError(f"{path} is not a plain directory ({error}); move it away and rerun") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        # The holder may have published (renamed) or removed the directory while we waited:
        # the lock must be on what ``path`` names now.
        held = os.fstat(fd)
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
            os.close(fd)
            continue
        marker = path / OWNER_FILE
        if created:
            write_json(marker, owner)
        else:
            try:
                recorded = json.loads(marker.read_text(encoding="utf-8")) if not marker.is_symlink() else None
            except (FileNotFoundError, ValueError):
                recorded = None
            if recorded != owner:
                os.close(fd)
                what = "another run's" if recorded else "no"
                raise FileExistsError(f"{path} exists but holds {what} {OWNER_FILE}: this run did not create it, so "
                                      "it is neither resumed nor cleared; move it away (or delete it) and rerun")
        return ClaimedDir(path, fd, created)


def remove_tree(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)
