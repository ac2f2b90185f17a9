"""The shipped configs plan offline, with the job counts their contents imply.

Each plan is a real `snakemake -n` in a subprocess (no network, no data folders, no GPU):
the data rules would go to the Hub at run time, never at planning time.
"""
from __future__ import annotations

import re

import pytest
import yaml

from diffprune import rungraph, settings
from diffprune.registry import METHODS

import shutil

from workflow_helpers import REPO, job_counts, make_test_data, snakemake_env
from workflow_helpers import run_snakemake as run_in

pytestmark = pytest.mark.slow

# Plans are made in a pristine copy of the workflow and the configs: the checkout's own
# results/ and resources/ (after a `make reproduce`) would otherwise change what is planned.
PRISTINE = None


@pytest.fixture(scope="module", autouse=True)
def pristine(tmp_path_factory):
    global PRISTINE
    root = tmp_path_factory.mktemp("pristine")
    shutil.copy(REPO / "Snakefile", root / "Snakefile")
    for folder in ("workflow", "config", ".test/config"):
        shutil.copytree(REPO / folder, root / folder)
    make_test_data(root / ".test" / "data")
    PRISTINE = root
    yield root
    PRISTINE = None


def run_snakemake(*args, **kwargs):
    return run_in(*args, cwd=PRISTINE, **kwargs)

CONFIGS = ["config/config.yaml", "config/cpu.yaml", "config/glue-small.yaml", "config/paper.yaml",
           "config/reference.yaml"]


def expected_counts(config_file: str) -> dict[str, int]:
    """Jobs per rule, worked out from the config independently of the Snakefile's code."""
    cfg = settings.load_config(REPO / config_file)
    train = prune = 0
    for task in cfg["tasks"]:
        for key in cfg["methods"]:
            if task not in rungraph.method_tasks(cfg, key):
                continue
            seeds = len(rungraph.seeds_for(cfg, task, key))
            train += seeds * rungraph.trains(cfg, key)
            if rungraph.is_projected(cfg, key):
                # every rate x seed: the L0 phase fans out, nothing repeats
                prune += seeds * len(rungraph.rates_for(cfg, key, task))
    counts = {
        "train": train,
        "prune": prune,
        "glue_data": len([t for t in cfg["tasks"] if t != "squad"]),
        "squad_data": int("squad" in cfg["tasks"]),
        "collect": 1, "tables": 1, "figures": 1, "readme": 1, "all": 1,
        "serving": int(prune > 0),  # N tasks on one base, from the run set's diffs (Table 5)
    }
    return {rule: n for rule, n in counts.items() if n}


def plan(*args: str) -> dict[str, int]:
    proc = run_snakemake("-n", "--nolock", *args)
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts, proc.stdout[-3000:]
    return counts


@pytest.mark.parametrize("config_file", CONFIGS)
def test_config_plans_with_expected_job_counts(config_file):
    assert plan("--configfile", config_file) == expected_counts(config_file)


def test_default_config_is_used_without_configfile():
    assert plan() == expected_counts("config/config.yaml")


def test_the_test_run_set_plans_in_its_own_directory():
    """`snakemake --directory .test` (the README's quick check; tests/workflow/test_end_to_end.py
    runs it): .test's config is the default there and its data folders are found."""
    config_file = ".test/config/config.yaml"
    assert plan("--directory", ".test") == expected_counts(config_file)
    assert settings.load_config(REPO / config_file)["data"] == {"glue_dir": "data/glue", "squad_dir": "data/squad"}


def test_default_and_reference_plans_by_the_numbers():
    """Literal numbers (worked out by hand from the configs' method entries), so a change in
    rungraph.py cannot move both sides. The default config's train and prune counts are left
    to test_config_plans_with_expected_job_counts: a new baseline adds its entry there (one
    of the three places it touches) and must not have to edit a number here too."""
    default = plan()
    assert {rule: n for rule, n in default.items() if rule not in ("train", "prune")} == {
        "glue_data": 3, "squad_data": 1, "collect": 1, "serving": 1, "tables": 1, "figures": 1, "readme": 1, "all": 1}
    # reference, train: 5 keys on SST-2, MRPC and STS-B + 2 more seeds of SST-2 for full and
    # structured + full and structured on SQuAD + CoLA's full, last layer, adapters and
    # structured L0 + RTE's full, adapters and structured L0.
    # prune: 3 variants x 4 rates on SST-2 and STS-B, x 1 rate on MRPC, 2 more SST-2 seeds x
    # 4 rates of structured, structured at 1% on SQuAD, structured and non-adaptive at 0.5% on
    # CoLA and RTE.
    assert plan("--configfile", "config/reference.yaml") == {
        "train": 5 * 3 + 2 * 2 + 2 + 4 + 3, "prune": 3 * 4 * 2 + 3 * 1 + 2 * 4 + 1 + 2 * 2, "glue_data": 5,
        "squad_data": 1, "collect": 1, "serving": 1, "tables": 1, "figures": 1, "readme": 1, "all": 1}


def test_paper_plan_by_the_numbers():
    """Literal numbers, so a change in rungraph.py cannot move both sides of the test."""
    counts = plan("--configfile", "config/paper.yaml")
    # 8 GLUE tasks x 1 seed + SST-2's 4 extra seeds = 13 (task, seed) pairs;
    # 6 keys train (full, last layer, 2 adapters, 2 diff pruning variants);
    # 3 projected keys (2 adaptive + non-adaptive) x 4 rates.
    assert counts["train"] == 13 * 6 == 78
    assert counts["prune"] == 13 * 3 * 4 == 156
    assert counts["glue_data"] == 8 and counts["squad_data"] == 1


def test_nonadaptive_prunes_the_full_finetuning_run():
    proc = run_snakemake("-n", "--nolock", "--configfile", "config/paper.yaml", "-p")
    text = proc.stdout + proc.stderr
    commands = [line for line in text.splitlines() if " prune " in line and "nonadaptive_diff_pruning" in line]
    assert commands
    for line in commands:
        seed = re.search(r"--seed (\d+)", line).group(1)
        task = re.search(r"--task (\w+)", line).group(1)
        assert f"--from results/paper/runs/{task}/full_finetuning/seed{seed}" in line
    # and no train job exists for it
    assert "--method-key nonadaptive_diff_pruning --seed" not in " ".join(
        line for line in text.splitlines() if " train " in line)


@pytest.mark.parametrize("config_file", ["config/config.yaml"])
def test_small_configs_run_every_registered_method(config_file):
    cfg = yaml.safe_load((REPO / config_file).read_text())
    used = {entry.get("method", key) for key, entry in cfg["methods"].items()}
    assert used == set(METHODS), f"{config_file} lacks {sorted(set(METHODS) - used)}"


def test_default_config_scope():
    cfg = settings.load_config(REPO / "config/config.yaml")
    glue = [t for t in cfg["tasks"] if t != "squad"]
    assert len(glue) >= 3 and "stsb" in glue and "squad" in cfg["tasks"]
    assert len(cfg["rates"]) >= 2
    assert cfg["models"][cfg["model"]]["source"] == "offline-minilm"


def test_slurm_profile_plans_and_maps_resources():
    # --cores only lifts the dry-run's local cap on threads so the profile's set-threads show;
    # the SLURM executor itself does not cap them.
    proc = run_snakemake("-n", "--nolock", "--profile", "workflow/profiles/slurm", "--cores", "8")
    text = proc.stdout + proc.stderr
    assert job_counts(text) == expected_counts("config/config.yaml")
    blocks = re.findall(r"\nrule (train|prune):\n((?:    .*\n)+)", text)
    assert blocks
    for _, block in blocks:
        resources = dict(item.split("=", 1) for item in re.search(r"resources: (.*)", block).group(1).split(", "))
        threads = int(re.search(r"threads: (\d+)", block).group(1))
        assert (resources["gpu"], resources["mem_mb"], resources["runtime"], threads) == ("1", "48000", "1440", 4)

    # What the plugin would submit for such a job (sbatch itself is not needed to check this).
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    job = SimpleNamespace(resources=Resources(gpu=1, mem_mb=48000, runtime=1440), threads=4)
    params = {"run_uuid": "x", "slurm_logfile": "x.log", "comment_str": "train", "account": "",
              "partition": "", "workdir": "."}
    call = get_submit_command(job, params) + set_gres_string(job)
    for flag in ("--gpus=1", "--mem 48000", "-t 1440", "--cpus-per-task=4"):
        assert flag in call, call


def test_local_data_folder_that_does_not_exist_fails_planning(tmp_path):
    proc = run_snakemake("-n", "--nolock", env=snakemake_env(GLUE_DIR=str(tmp_path / "missing")), check=False)
    assert proc.returncode != 0
    assert "missing" in proc.stdout + proc.stderr


def test_config_overrides_are_refused():
    proc = run_snakemake("-n", "--nolock", "--config", "name=other", check=False)
    assert proc.returncode != 0
    assert "--config KEY=VALUE overrides are not supported" in proc.stdout + proc.stderr


def test_lint_is_clean():
    proc = run_snakemake("--lint", check=False)
    text = proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in text, text[-4000:]


def test_a_run_set_name_leaving_results_fails_planning():
    """`name: ..` wrote the run set's README.md over the repository's own."""
    (PRISTINE / "config" / "escape.yaml").write_text("name: '..'\ntasks: [rte]\nmethods: {full_finetuning: }\n")
    proc = run_snakemake("-n", "--nolock", "--configfile", "config/escape.yaml", check=False)
    assert proc.returncode != 0
    assert "name must be one path segment (letters, digits, '_', '.', '-'; not '.' or '..'), got '..'" in (
        proc.stdout + proc.stderr)
