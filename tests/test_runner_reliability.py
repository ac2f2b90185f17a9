"""The runner's reliability probes (issue 16): run directories it did not make are never
touched, a second writer of the same run waits instead of racing, and results say what
produced them. Same tiny RTE fixture and tiny random BERT as tests/test_runner.py."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest
import torch

from diffprune import cli, datahash, run_plan, runner
from diffprune.atomic import OWNER_FILE, claim_dir, publish_dir, write_json
from diffprune.checkpoint import CHECKPOINT_NAME
from tests.test_runner import write_config, write_rte


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_NO_PROGRESS", "1")
    monkeypatch.delenv(runner.CRASH_HOOK_ENV, raising=False)


@pytest.fixture
def thesis(tmp_path):
    """A user's folder that a careless link points at."""
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("years of work")
    (folder / "figures").mkdir()
    (folder / "figures" / "plot.pdf").write_bytes(b"%PDF")
    return folder


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_tmp_dir_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, thesis):
    config = write_config(tmp_path)
    out = tmp_path / "runs" / "ff" / "seed0"
    out.parent.mkdir(parents=True)
    before = _files(thesis)
    os.symlink(thesis, out.with_name("seed0.tmp"))
    with pytest.raises(ValueError, match=r"seed0.tmp is a symbolic link; a run never writes or clears through a link"):
        run_plan.plan_train(config, "rte", "full_finetuning", 0, out)
    # ... and if the link appears after planning, execute refuses it too
    os.unlink(out.with_name("seed0.tmp"))
    plan = run_plan.plan_train(config, "rte", "full_finetuning", 0, out)
    os.symlink(thesis, plan.tmp_dir)
    with pytest.raises(FileExistsError, match="is not a plain directory"):
        runner.execute(plan)
    assert _files(thesis) == before and not out.exists()


def test_a_tmp_dir_this_run_did_not_create_is_neither_cleared_nor_published(tmp_path, thesis):
    config = write_config(tmp_path)
    plan = run_plan.plan_train(config, "rte", "full_finetuning", 0, tmp_path / "runs" / "seed0")
    plan.tmp_dir.mkdir(parents=True)
    (plan.tmp_dir / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=f"holds no {OWNER_FILE}: this run did not create it"):
        runner.execute(plan)
    assert (plan.tmp_dir / "notes.txt").read_text() == "mine" and not plan.out_dir.exists()


def test_publish_never_follows_a_link(tmp_path, thesis):
    tmp = tmp_path / "run.tmp"
    tmp.mkdir()
    write_json(tmp / "metrics.json", {"a": 1})
    os.symlink(thesis, tmp_path / "run")
    with pytest.raises(FileExistsError, match="the destination is a symbolic link"):
        publish_dir(tmp, tmp_path / "run")
    os.symlink(tmp, tmp_path / "link.tmp")
    with pytest.raises(FileExistsError, match="not a plain directory"):
        publish_dir(tmp_path / "link.tmp", tmp_path / "other")
    assert (tmp / "metrics.json").is_file() and _files(thesis) == ["chapter1.tex", "figures", "figures/plot.pdf"]


def test_a_second_writer_waits_then_leaves_the_first_ones_run_alone(tmp_path):
    """Two workflow instances (after `snakemake --unlock`) running the same job: the second
    used to clear the first one's files, train again and fail on publishing, which made
    Snakemake delete the first one's published run."""
    config = write_config(tmp_path)
    out = tmp_path / "runs" / "ff" / "seed0"
    first = run_plan.plan_train(config, "rte", "full_finetuning", 0, out)
    holder = claim_dir(first.tmp_dir, first.owner())  # the first writer, mid-run
    (first.tmp_dir / "partial.safetensors").write_bytes(b"half of it")
    outcome = {}

    def second_writer():
        try:
            outcome["result"] = runner.execute(run_plan.plan_train(config, "rte", "full_finetuning", 0, out))
        except BaseException as error:  # reported below
            outcome["error"] = error

    thread = threading.Thread(target=second_writer)
    thread.start()
    time.sleep(2.0)
    assert thread.is_alive(), f"the second writer did not wait: {outcome}"
    assert (first.tmp_dir / "partial.safetensors").read_bytes() == b"half of it"
    # the first writer finishes: its run is published, then its job ends
    write_json(first.tmp_dir / "metrics.json", {"task": "rte", "written_by": "first"})
    publish_dir(first.tmp_dir, out)
    holder.release()
    thread.join(timeout=60)
    assert outcome == {"result": None}
    assert json.loads((out / "metrics.json").read_text())["written_by"] == "first"
    assert (out / "partial.safetensors").read_bytes() == b"half of it"
    assert not first.tmp_dir.exists()


def test_a_run_that_took_no_step_is_not_published(tmp_path, monkeypatch):
    config = write_config(tmp_path)
    plan = run_plan.plan_train(config, "rte", "full_finetuning", 0, tmp_path / "zero")
    monkeypatch.setattr(runner, "train_loop", lambda *args: runner.TrainOutcome(steps=0, epochs=0, train_seconds=0.0,
                                                                               extra={}))
    with pytest.raises(ValueError, match="took no optimizer step .* a run that trained nothing is not published"):
        runner.execute(plan)
    assert not plan.out_dir.exists()
    with pytest.raises(ValueError, match="--set.epochs must be >= 1"):
        run_plan.plan_train(config, "rte", "full_finetuning", 0, tmp_path / "z", {"epochs": 0})


def test_metrics_record_the_thread_count_and_the_data_hash(tmp_path):
    config = write_config(tmp_path)
    metrics = runner.execute(run_plan.plan_train(config, "rte", "full_finetuning", 0, tmp_path / "a",
                                                 {"num_threads": 1, "max_steps": 1}))
    assert metrics["num_threads"] == torch.get_num_threads() == 1
    glue = tmp_path / "glue"
    expected = datahash.task_data_hash("rte", {"glue_dir": str(glue)})
    assert metrics["data_hash"] == metrics["config"]["data_hash"] == expected
    manifest = {"files": {name: {"md5": datahash.file_md5(glue / "RTE" / name)} for name in ("train.tsv", "dev.tsv")}}
    assert datahash.manifest_content_hash(manifest, ["train.tsv", "dev.tsv"]) == expected
    write_rte(glue, seed=1)  # another copy of the data: another hash
    assert datahash.task_data_hash("rte", {"glue_dir": str(glue)}) != expected


def test_a_full_disk_says_no_space_left_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "runs" / "seed0"

    def full_disk_midway(plan, *args):
        (plan.tmp_dir / CHECKPOINT_NAME).write_bytes(b"checkpoint")
        monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result((4096,) * 3 + (0,) * 7))
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 832 vs 726")

    monkeypatch.setattr(runner, "train_loop", full_disk_midway)
    code = cli.main(["train", "--config", config, "--task", "rte", "--method-key", "full_finetuning",
                     "--seed", "0", "--out", str(out)])
    assert code == 1
    message = capsys.readouterr().err
    assert f"no space left on the device holding {out.with_name('seed0.tmp')}: free some space and rerun" in message
    assert (out.with_name("seed0.tmp") / CHECKPOINT_NAME).read_bytes() == b"checkpoint"
