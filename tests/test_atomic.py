"""diffprune/atomic.py: permissions follow the umask, a full disk is named, a claimed
directory is exclusive and marked."""
from __future__ import annotations

import errno
import os
import stat
import threading

import pandas as pd
import pytest

from diffprune import atomic
from diffprune.analysis import output


@pytest.fixture
def umask():
    def set_umask(value):
        previous = os.umask(value)
        restore.append(previous)

    restore = []
    yield set_umask
    if restore:
        os.umask(restore[0])


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_every_writer_follows_the_umask(tmp_path, umask, mask, expected):
    """Analysis outputs were written 0600 whatever the umask, metrics.json 0644."""
    umask(mask)
    atomic.write_json(tmp_path / "metrics.json", {"a": 1})
    atomic.write_with(tmp_path / "diff.safetensors", lambda tmp: tmp.write_bytes(b"x"))
    output.write_csv(tmp_path / "summary.csv", pd.DataFrame({"a": [1]}))
    output.write_text(tmp_path / "README.md", "# x\n")
    for name in ("metrics.json", "diff.safetensors", "summary.csv", "README.md"):
        assert mode(tmp_path / name) == expected, name


def test_a_write_failing_on_a_full_disk_says_so_with_the_path(tmp_path, monkeypatch):
    def torch_like_writer(tmp):
        monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result((4096,) * 3 + (0,) * 7))
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 832 vs 726")

    with pytest.raises(OSError) as error:
        atomic.write_with(tmp_path / "model.pt", torch_like_writer)
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(tmp_path / "model.pt")
    assert "no space left on the device holding" in str(error.value)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_a_failing_write_with_space_left_keeps_its_own_error(tmp_path):
    def broken(tmp):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        atomic.write_with(tmp_path / "x", broken)


def test_claimed_dir_is_marked_and_exclusive(tmp_path):
    owner = {"task": "rte", "seed": 0}
    first = atomic.claim_dir(tmp_path / "run.tmp", owner)
    assert first.created and (tmp_path / "run.tmp" / atomic.OWNER_FILE).is_file()
    waited = threading.Event()
    got = []
    thread = threading.Thread(target=lambda: got.append(atomic.claim_dir(tmp_path / "run.tmp", owner,
                                                                         on_wait=lambda p: waited.set())))
    thread.start()
    assert waited.wait(10) and thread.is_alive()
    first.release()
    thread.join(10)
    assert got and not got[0].created  # the same run resumes what the first left
    got[0].release()
    with pytest.raises(FileExistsError, match="holds another run's"):
        atomic.claim_dir(tmp_path / "run.tmp", {"task": "rte", "seed": 1})


def test_clear_dir_removes_links_not_their_targets(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(target, work / "link")
    (work / "sub").mkdir()
    os.symlink(target, work / "sub" / "inner")
    (work / "checkpoint").write_text("c")
    atomic.clear_dir(work, keep=("checkpoint",))
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint"]
    assert (target / "keep.txt").read_text() == "x"
