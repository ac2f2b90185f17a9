"""diffprune/atomic.py: permissions follow the umask, a full disk is named, a claimed
directory is exclusive and marked, a staged directory is published whole or not at all."""
from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

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


def test_staged_dir_is_published_whole_and_readable_as_the_umask_allows(tmp_path, umask):
    umask(0o022)
    final = tmp_path / "task"
    final.mkdir()  # an empty folder (as a workflow engine may create) is replaced
    with atomic.staged_dir(final) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".task.") and not any(staging.iterdir())
        (staging / "sub").mkdir()
        (staging / "sub" / "values.npy").write_bytes(b"x")
        (staging / "meta.json").write_text("{}")
        assert not (final / "meta.json").exists()  # nothing is visible before the block ends
    assert sorted(p.name for p in final.rglob("*")) == ["meta.json", "sub", "values.npy"]
    assert mode(final) == 0o755  # mkdtemp's 0700 is not what gets published
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task"]


def test_staged_dir_flushes_every_file_before_publishing(tmp_path, monkeypatch):
    events = []
    fsync, rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or fsync(fd))
    monkeypatch.setattr(os, "rename", lambda src, dst: events.append(("rename", str(src))) or rename(src, dst))
    outside = tmp_path / "outside.txt"
    outside.write_text("not part of the tree")
    with atomic.staged_dir(tmp_path / "entry") as staging:
        (staging / "a.npy").write_bytes(b"a")
        (staging / "nested").mkdir()
        (staging / "nested" / "b.npy").write_bytes(b"b")
        os.symlink(outside, staging / "link")
        files = [str(staging / "a.npy"), str(staging / "nested" / "b.npy")]
    published = events.index(("rename", str(staging)))
    flushed = {path for kind, path in events[:published] if kind == "fsync"}
    assert set(files) <= flushed and str(staging) in flushed
    assert str(outside) not in flushed  # a link inside the tree is not followed


def test_staged_dir_leaves_nothing_behind_when_its_writer_fails(tmp_path):
    final = tmp_path / "task"
    with pytest.raises(RuntimeError, match="writer broke"):
        with atomic.staged_dir(final) as staging:
            (staging / "half.safetensors").write_bytes(b"half")
            raise RuntimeError("writer broke")
    assert list(tmp_path.iterdir()) == []


def test_staged_dir_refuses_a_destination_that_is_not_empty(tmp_path):
    final = tmp_path / "task"
    final.mkdir()
    (final / "theirs.txt").write_text("theirs")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        with atomic.staged_dir(final) as staging:
            (staging / "mine.txt").write_text("mine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task"]
    assert [p.name for p in final.iterdir()] == ["theirs.txt"]


def test_staged_dir_losing_the_race_to_another_writer_is_a_file_exists_error(tmp_path, monkeypatch):
    """Another process publishes the same directory after the destination was checked and
    before the rename: the rename's ENOTEMPTY reads as the refusal it is."""
    final = tmp_path / "entry"
    rename = os.rename

    def other_writer_first(src, dst):
        os.mkdir(dst)
        (Path(dst) / "meta.json").write_text("theirs")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", other_writer_first)
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        with atomic.staged_dir(final) as staging:
            (staging / "meta.json").write_text("mine")
    assert (final / "meta.json").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
