"""The whole DAG on a tiny random BERT and a few rows of data, as `snakemake` runs it.

One workflow run in a scratch copy of the workflow (so nothing lands in this checkout's
resources/ or results/): every method, GLUE RTE + STS-B + SQuAD fixtures written here, two
rates, one epoch. Along the way:
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
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from diffprune import datahash, settings
from workflow_helpers import REPO, SNAKEMAKE, job_counts, run_snakemake, snakemake_env

pytestmark = pytest.mark.slow

WORDS = "the a cat dog sat on mat big small red blue house tree runs walks near far".split()
METHODS = {
    "full_finetuning": {"method": "full_finetuning"},
    "last_layer": {"method": "last_layer"},
    "adapters_4": {"method": "adapters", "bottleneck": 4},
    "diff_pruning": {"method": "diff_pruning"},
    "structured_diff_pruning": {"method": "diff_pruning", "structured": True},
    "nonadaptive_diff_pruning": {"method": "nonadaptive_diff_pruning"},
    "bitfit": {"method": "bitfit"},
    "lora": {"method": "lora", "rank": 2},
    "critical_layers": {"method": "critical_layers", "num_layers": 1},  # ranked by full_finetuning
    "sparsification": {"method": "sparsification"},
}


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_glue(root: Path, rng: random.Random) -> None:
    rte, stsb = root / "RTE", root / "STS-B"
    rte.mkdir(parents=True)
    stsb.mkdir(parents=True)
    for split, count in (("train", 24), ("dev", 12)):
        rows = ["index\tsentence1\tsentence2\tlabel"]
        rows += [f"{i}\t{sentence(rng, 6)}\t{sentence(rng, 4)}\t{rng.choice(['entailment', 'not_entailment'])}"
                 for i in range(count)]
        (rte / f"{split}.tsv").write_text("\n".join(rows) + "\n")
        rows = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
        rows += [f"{i}\tmain\tx\t2012\t{i}\tnone\tnone\t{sentence(rng, 5)}\t{sentence(rng, 5)}\t{rng.uniform(0, 5):.2f}"
                 for i in range(count)]
        (stsb / f"{split}.tsv").write_text("\n".join(rows) + "\n")


def write_squad(root: Path, rng: random.Random) -> None:
    root.mkdir(parents=True)
    for split, count in (("train", 16), ("dev", 8)):
        paragraphs = []
        for i in range(count):
            context = sentence(rng, 8)
            words = context.split()
            k = rng.randrange(len(words))
            start = len(" ".join(words[:k])) + (1 if k else 0)
            paragraphs.append({"context": context, "qas": [{
                "id": f"{split}{i}", "question": f"where {sentence(rng, 2)}",
                "answers": [{"text": words[k], "answer_start": start}]}]})
        data = {"version": "1.1", "data": [{"title": f"t{split}", "paragraphs": paragraphs}]}
        (root / f"{split}-v1.1.json").write_text(json.dumps(data))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch copy of the workflow with tiny data and a config running every method."""
    root = tmp_path_factory.mktemp("e2e")
    shutil.copy(REPO / "Snakefile", root / "Snakefile")
    shutil.copytree(REPO / "workflow", root / "workflow")
    rng = random.Random(0)
    write_glue(root / "data" / "glue", rng)
    write_squad(root / "data" / "squad", rng)
    config = {
        "name": "e2e",
        "model": "tiny-random",
        "tasks": ["rte", "stsb", "squad"],
        "rates": [0.5, 1.0],
        "seeds": [0],
        "training": {"batch_size": 8, "eval_batch_size": 32, "epochs": 1, "learning_rate": 1e-3,
                     "max_seq_length": 48, "fixed_mask_epochs": 1, "fixed_mask_learning_rate": 1e-3},
        "task_training": {"squad": {"max_seq_length": 96, "doc_stride": 32}},
        "methods": METHODS,
        "data": {"glue_dir": str(root / "data" / "glue"), "squad_dir": str(root / "data" / "squad")},
    }
    (root / "e2e.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def snakemake_args(*extra: str) -> list[str]:
    return ["--cores", "2", "--configfile", "e2e.yaml",
            "--workflow-profile", "workflow/profiles/default", *extra]


def finished_runs(root: Path) -> set[str]:
    return {str(p.parent.relative_to(root)) for p in (root / "results/e2e/runs").glob("**/metrics.json")}


def test_workflow_end_to_end(workdir):
    cfg = settings.load_config(workdir / "e2e.yaml")
    expected_runs = settings.expand_runs(cfg)
    env = snakemake_env()

    # --- 1. start, let a few runs finish, then kill everything at once -------------------
    proc = subprocess.Popen([str(SNAKEMAKE), *snakemake_args()], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while len(finished_runs(workdir)) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = finished_runs(workdir)
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
    results = workdir / "results/e2e"
    assert finished_runs(workdir) == {str(settings.run_dir("results", cfg, r["task"], r["key"], r["seed"], r["rate"]))
                                     for r in expected_runs}
    summary_rows = (results / "summary.csv").read_text().strip().splitlines()[1:]
    assert len(summary_rows) == len(expected_runs)
    assert (results / "layers.csv").stat().st_size > 0
    assert list((results / "tables").glob("table1*.md"))
    assert len(list((results / "figures").glob("*.png"))) >= 2
    readme = (results / "README.md").read_text()
    assert "Table 1" in readme

    # non-adaptive diff pruning started from the full-finetuning run of the same task and seed
    nonadaptive = json.loads((results / "runs/rte/nonadaptive_diff_pruning/rate0.5/seed0/metrics.json").read_text())
    assert nonadaptive["config"]["source_dir"] == "results/e2e/runs/rte/full_finetuning/seed0"
    assert not (results / "runs/rte/nonadaptive_diff_pruning/seed0").exists()

    # the data rules linked the local copies and recorded them
    manifest = json.loads((workdir / "resources/glue/RTE/manifest.json").read_text())
    assert manifest["source"] == "local" and set(manifest["files"]) == {"train.tsv", "dev.tsv"}
    assert (workdir / "resources/glue/RTE/train.tsv").is_symlink()
    assert json.loads((workdir / "resources/squad/manifest.json").read_text())["source"] == "local"

    # --- 3. nothing is redone --------------------------------------------------------------
    stamps = {p: p.stat().st_mtime_ns for p in results.glob("runs/*/*/**/metrics.json")}
    again = run_snakemake(*snakemake_args(), cwd=workdir, env=env)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert stamps == {p: p.stat().st_mtime_ns for p in results.glob("runs/*/*/**/metrics.json")}

    # --- 4. editing one method's settings re-runs only that method's runs -----------------
    config = yaml.safe_load((workdir / "e2e.yaml").read_text())
    config["methods"]["lora"]["rank"] = 3
    (workdir / "e2e.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    plan = job_counts(run_snakemake(*snakemake_args("-n"), cwd=workdir, env=env).stdout)
    assert plan == {"train": len(cfg["tasks"]), "collect": 1, "tables": 1, "figures": 1, "readme": 1, "all": 1}
    config["methods"]["lora"]["rank"] = 2  # back to what ran
    (workdir / "e2e.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    # --- 5. the HTML report carries the figures and the tables ---------------------------
    run_snakemake("--configfile", "e2e.yaml", "--report", "report.html", cwd=workdir, env=env)
    report = (workdir / "report.html").read_text(errors="replace")
    assert "figure1_left_average_vs_rate" in report and "table1_main" in report

    # --- 6. another copy of the data re-runs exactly the runs whose data changed ------------
    # (it used to run only the data job, print "100% done" and keep every old run)
    copy = workdir / "data" / "glue-copy"
    shutil.copytree(workdir / "data" / "glue", copy)
    config["data"]["glue_dir"] = str(copy)
    (workdir / "e2e.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    plan = job_counts(run_snakemake(*snakemake_args("-n"), cwd=workdir, env=env).stdout)
    assert "train" not in plan and "prune" not in plan  # same files elsewhere: nothing to redo
    train_tsv = copy / "RTE" / "train.tsv"
    train_tsv.write_text(train_tsv.read_text() + "24\tthe cat sat\tthe dog sat\tentailment\n")
    plan = job_counts(run_snakemake(*snakemake_args("-n"), cwd=workdir, env=env).stdout)
    rte_runs = [r for r in expected_runs if r["task"] == "rte"]
    assert plan.get("train") == sum(r["phase"] == "train" for r in rte_runs)
    assert plan.get("prune") == sum(r["phase"] == "prune" for r in rte_runs)
    runs_data_hash = json.loads((results / "runs/rte/full_finetuning/seed0/metrics.json").read_text())["data_hash"]
    assert runs_data_hash == datahash.task_data_hash("rte", {"glue_dir": str(workdir / "data" / "glue")})

    # --- 7. a method dropped from the config leaves the tables ----------------------------
    config["data"]["glue_dir"] = str(workdir / "data" / "glue")
    del config["methods"]["bitfit"]
    (workdir / "e2e.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    done = run_snakemake(*snakemake_args(), cwd=workdir, env=env)
    assert "rule train" not in done.stdout + done.stderr and "rule prune" not in done.stdout + done.stderr
    summary = (results / "summary.csv").read_text()
    assert "bitfit" not in summary and len(summary.strip().splitlines()) - 1 == len(expected_runs) - len(cfg["tasks"])
    assert "bitfit" not in (results / "README.md").read_text()
    assert "ignored 3 finished run(s)" in (results / "logs/analysis/collect.log").read_text()
