"""The whole DAG on a tiny random BERT and a few rows of data, as `snakemake` runs it.

One workflow run of the repository's .test/ run set (its config/config.yaml: every method,
GLUE RTE + STS-B + SQuAD from its data/, two rates, one epoch), with the command the README
gives, `snakemake --directory .test`, in a scratch copy of the workflow and of .test/ (so
nothing lands in this checkout). Along the way:
  - the run is killed with SIGKILL (Snakemake and its jobs, as in a power cut) once a few
    runs are finished; the next plan re-runs exactly the unfinished ones;
  - the finished workflow leaves summary.csv, every table and figure and README.md;
  - a second invocation does nothing; editing one method's options re-runs only its jobs;
  - `snakemake --report` embeds the figures and the tables;
  - a data copy with a changed file re-runs exactly the runs of that task (an identical copy
    elsewhere, none); a method dropped from the config leaves summary.csv and the README.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from diffprune import datahash, rungraph, settings

from workflow_helpers import REPO, SNAKEMAKE, job_counts, make_test_data, run_snakemake, snakemake_env

pytestmark = pytest.mark.slow

# The .test run set inside the scratch copy, and its config file (steps 4 to 7 edit it).
TEST_DIR = ".test"
CONFIG = "config/config.yaml"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch copy of the workflow and of .test/'s config and data."""
    root = tmp_path_factory.mktemp("e2e")
    shutil.copy(REPO / "Snakefile", root / "Snakefile")
    shutil.copytree(REPO / "workflow", root / "workflow")
    shutil.copytree(REPO / TEST_DIR / "config", root / TEST_DIR / "config")
    make_test_data(root / TEST_DIR / "data")  # generated, never committed (.test/make_data.py)
    return root


def snakemake_args(*extra: str) -> list[str]:
    return ["--directory", TEST_DIR, "--cores", "2", "--workflow-profile", "workflow/profiles/default", *extra]


def finished_runs(test_dir: Path, name: str) -> set[str]:
    """Run directories holding a metrics.json, relative to the working directory (.test)."""
    return {str(p.parent.relative_to(test_dir)) for p in (test_dir / "results" / name / "runs").glob("**/metrics.json")}


def test_workflow_end_to_end(workdir):
    test_dir = workdir / TEST_DIR
    config_file = test_dir / CONFIG
    cfg = settings.load_config(config_file)
    expected_runs = rungraph.expand_runs(cfg)
    env = snakemake_env()

    # --- 1. start, let a few runs finish, then kill everything at once -------------------
    proc = subprocess.Popen([str(SNAKEMAKE), *snakemake_args()], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while len(finished_runs(test_dir, cfg["name"])) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = finished_runs(test_dir, cfg["name"])
    assert 4 <= len(done) < len(expected_runs)

    # A crashed Snakemake leaves its lock behind; --unlock is the documented first step.
    run_snakemake(*snakemake_args("--unlock"), cwd=workdir, env=env)
    plan = job_counts(run_snakemake(*snakemake_args("-n"), cwd=workdir, env=env).stdout)
    # Every unfinished run is planned again, and of the finished ones at most those whose
    # job was still running (a run published in the instant before the kill is flagged
    # incomplete by Snakemake, which never saw the job end): at most --cores of them.
    remaining = len(expected_runs) - len(done)
    assert remaining <= plan.get("train", 0) + plan.get("prune", 0) <= remaining + 2

    # --- 2. finish the workflow ----------------------------------------------------------
    run_snakemake(*snakemake_args(), cwd=workdir, env=env, timeout=1200)
    results = test_dir / "results" / cfg["name"]
    assert finished_runs(test_dir, cfg["name"]) == {
        str(rungraph.run_dir("results", cfg, r["task"], r["key"], r["seed"], r["rate"])) for r in expected_runs}
    summary_rows = (results / "summary.csv").read_text().strip().splitlines()[1:]
    assert len(summary_rows) == len(expected_runs)
    assert (results / "layers.csv").stat().st_size > 0
    assert list((results / "tables").glob("table1*.md"))
    assert len(list((results / "figures").glob("*.png"))) >= 2
    readme = (results / "README.md").read_text()
    assert "Table 1" in readme

    # non-adaptive diff pruning started from the full-finetuning run of the same task and seed
    nonadaptive = json.loads((results / "runs/rte/nonadaptive_diff_pruning/rate0.5/seed0/metrics.json").read_text())
    assert nonadaptive["config"]["source_dir"] == f"results/{cfg['name']}/runs/rte/full_finetuning/seed0"
    assert not (results / "runs/rte/nonadaptive_diff_pruning/seed0").exists()

    # the data rules linked the local copies and recorded them
    manifest = json.loads((test_dir / "resources/glue/RTE/manifest.json").read_text())
    assert manifest["source"] == "local" and set(manifest["files"]) == {"train.tsv", "dev.tsv"}
    assert (test_dir / "resources/glue/RTE/train.tsv").is_symlink()
    assert json.loads((test_dir / "resources/squad/manifest.json").read_text())["source"] == "local"

    # --- 3. nothing is redone --------------------------------------------------------------
    stamps = {p: p.stat().st_mtime_ns for p in results.glob("runs/*/*/**/metrics.json")}
    again = run_snakemake(*snakemake_args(), cwd=workdir, env=env)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert stamps == {p: p.stat().st_mtime_ns for p in results.glob("runs/*/*/**/metrics.json")}

    # --- 4. editing one method's settings re-runs only that method's runs -----------------
    config = yaml.safe_load(config_file.read_text())
    config["methods"]["lora"]["rank"] = 3
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    plan = job_counts(run_snakemake(*snakemake_args("-n"), cwd=workdir, env=env).stdout)
    assert plan == {"train": len(cfg["tasks"]), "collect": 1, "tables": 1, "figures": 1, "readme": 1, "all": 1}
    config["methods"]["lora"]["rank"] = 2  # back to what ran
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    # --- 5. the HTML report carries the figures and the tables ---------------------------
    run_snakemake("--directory", TEST_DIR, "--report", "report.html", cwd=workdir, env=env)
    report = (test_dir / "report.html").read_text(errors="replace")  # relative to the working directory
    assert "figure1_left_average_vs_rate" in report and "table1_main" in report

    # --- 6. another copy of the data re-runs exactly the runs whose data changed ------------
    # (it used to run only the data job, print "100% done" and keep every old run)
    original_glue_dir = config["data"]["glue_dir"]  # relative to the working directory
    copy = test_dir / "data" / "glue-copy"
    shutil.copytree(test_dir / original_glue_dir, copy)
    config["data"]["glue_dir"] = str(copy)
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    plan = job_counts(run_snakemake(*snakemake_args("-n"), cwd=workdir, env=env).stdout)
    assert "train" not in plan and "prune" not in plan  # same files elsewhere: nothing to redo
    train_tsv = copy / "RTE" / "train.tsv"
    train_tsv.write_text(train_tsv.read_text() + "24\tthe cat sat\tthe dog sat\tentailment\n")
    plan = job_counts(run_snakemake(*snakemake_args("-n"), cwd=workdir, env=env).stdout)
    rte_runs = [r for r in expected_runs if r["task"] == "rte"]
    assert plan.get("train") == sum(r["phase"] == "train" for r in rte_runs)
    assert plan.get("prune") == sum(r["phase"] == "prune" for r in rte_runs)
    runs_data_hash = json.loads((results / "runs/rte/full_finetuning/seed0/metrics.json").read_text())["data_hash"]
    assert runs_data_hash == datahash.task_data_hash("rte", {"glue_dir": str(test_dir / original_glue_dir)})

    # --- 7. a method dropped from the config leaves the tables ----------------------------
    config["data"]["glue_dir"] = original_glue_dir
    del config["methods"]["bitfit"]
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    done = run_snakemake(*snakemake_args(), cwd=workdir, env=env)
    assert "rule train" not in done.stdout + done.stderr and "rule prune" not in done.stdout + done.stderr
    summary = (results / "summary.csv").read_text()
    assert "bitfit" not in summary and len(summary.strip().splitlines()) - 1 == len(expected_runs) - len(cfg["tasks"])
    assert "bitfit" not in (results / "README.md").read_text()
    assert "ignored 3 finished run(s)" in (results / "logs/analysis/collect.log").read_text()
