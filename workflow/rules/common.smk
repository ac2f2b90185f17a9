# Shared state of the DAG: the config as diffprune reads it, the run list, path patterns and
# the small helpers the rules call. The config is checked against
# workflow/schemas/config.schema.yaml (by diffprune.settings, as the runner does, and by
# snakemake.utils.validate); everything about *which* runs exist comes from
# diffprune.rungraph, so the workflow and the runner can never disagree about a run.
#
# Functions that Snakemake calls per job as input or params functions are named get_* (the
# snakemake-workflows convention). Every function lives in this file: `snakemake --lint`
# wants none in the other rule files.

import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate
from snakemake_interface_executor_plugins.settings import DeploymentMethod

# Planning imports diffprune from this checkout even when it is not pip-installed.
sys.path.insert(0, workflow.basedir)

from diffprune import config_schema, datahash, rungraph, settings  # noqa: E402
from diffprune.tasks import GLUE_SPECS  # noqa: E402

# Jobs run with the interpreter running Snakemake: `python` on PATH may be another one
# (`make reproduce` calls .venv/bin/snakemake without activating the venv). Under
# `--software-deployment-method conda` the job's activated environment provides `python`.
# Either way the jobs run in the working directory: from the repository root, `-m diffprune` /
# `-m diffprune.analysis` import this checkout's code; under `--directory .test` they import the
# installed package (`make venv` installs this checkout, editable).
PYTHON = (
    "python"
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    else sys.executable
)
# Found beside this file, whatever the working directory.
PREPARE_DATA = os.path.relpath(os.path.join(workflow.basedir, "workflow", "scripts", "prepare_data.py"))
# Every rule runs in this environment when conda deployment is asked for.
CONDA_ENV = "../envs/diffprune.yaml"


def _config_file() -> str:
    """The one YAML file this invocation runs (the runner is handed the same file)."""
    files = workflow.config_settings.configfiles
    if len(files) > 1:
        raise WorkflowError(
            "give one --configfile: every job re-reads its config file, and a merge of several "
            "files would exist only inside Snakemake"
        )
    if workflow.config_settings.config:
        raise WorkflowError(
            "--config KEY=VALUE overrides are not supported: the jobs read the config file "
            "itself, so an override would change the plan but not the runs. Copy the config "
            "file, edit it and pass it with --configfile."
        )
    path = Path(files[0]) if files else Path("config/config.yaml")
    return os.path.relpath(path)


CONFIG_FILE = _config_file()
try:
    CFG = settings.load_config(CONFIG_FILE)
except (ValueError, FileNotFoundError) as error:
    raise WorkflowError(f"invalid config: {error}") from None
# The same schema through Snakemake's validator (on the file as diffprune reads it: YAML 1.2
# numbers); load_config above has already named any offending key and its fix.
validate(config_schema.read_config_file(CONFIG_FILE), str(config_schema.SCHEMA_PATH), set_default=False)

NAME = CFG["name"]
RESULTS = f"results/{NAME}"
RUNS_ROOT = f"{RESULTS}/runs"
LOGS = f"{RESULTS}/logs"

# ------------------------------------------------------------------------- runs to make

RUNS = rungraph.expand_runs(CFG)
TRAIN_KEYS = [k for k in CFG["methods"] if rungraph.trains(CFG, k)]
PROJECTED_KEYS = rungraph.projected_keys(CFG)

# Output patterns; rungraph.run_dir is the reference layout (docs/ARCHITECTURE.md) and the
# targets below are built with it, so a mismatch would fail planning, not go unnoticed.
TRAIN_RUN = f"{RUNS_ROOT}/{{task}}/{{key}}/seed{{seed}}"
PRUNE_RUN = f"{RUNS_ROOT}/{{task}}/{{key}}/rate{{rate}}/seed{{seed}}"


def run_path(task, key, seed, rate=None) -> str:
    return str(rungraph.run_dir("results", CFG, task, key, int(seed), rate))


RUN_DIRS = [run_path(r["task"], r["key"], r["seed"], r["rate"]) for r in RUNS]


def _alternatives(values) -> str:
    return "|".join(re.escape(str(v)) for v in values) or "(?!)"


wildcard_constraints:
    task=_alternatives(CFG["tasks"]),
    seed=r"\d+",
    rate=r"\d+(\.\d+)?",


# ------------------------------------------------------------------------- data

# Local copies named by the config or $GLUE_DIR / $SQUAD_DIR (resolved now, so a folder that
# does not exist fails planning with its name). None: the jobs load from the Hugging Face Hub.
try:
    DATA = settings.data_config(CFG)
except FileNotFoundError as error:
    raise WorkflowError(str(error)) from None

# The content hash of each task's data files (datahash): part of every run's settings, so a
# data copy whose files differ re-runs exactly the runs of the tasks it changes.
try:
    DATA_HASH = {task: datahash.task_data_hash(task, DATA) for task in CFG["tasks"]}
except (FileNotFoundError, ValueError) as error:
    raise WorkflowError(f"data: {error}") from None

GLUE_TASKS = [t for t in CFG["tasks"] if t in GLUE_SPECS]
GLUE_FOLDERS = {t: GLUE_SPECS[t].folder for t in GLUE_TASKS}


def data_manifest(task: str) -> str:
    if task == "squad":
        return "resources/squad/manifest.json"
    return f"resources/glue/{GLUE_FOLDERS[task]}/manifest.json"


_NOT_RECORDED = object()


def _recorded_data_hash(run_dir: str):
    """The data hash a finished run recorded (``_NOT_RECORDED``: unfinished, or older than the field)."""
    try:
        return json.loads(Path(run_dir, "metrics.json").read_text()).get("data_hash", _NOT_RECORDED)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return _NOT_RECORDED


def get_run_data_input(wildcards):
    """A run's data manifest, as an input.

    Ancient (its rewrite does not re-run the run) unless the finished run recorded a data hash
    other than the current one. Snakemake's params trigger alone misses that case when the
    data job re-runs in the same invocation (a new GLUE_DIR): it skips the downstream jobs of
    a job that re-runs when their input from it is ancient. An identical copy elsewhere keeps
    the hash, so its runs stay finished.
    """
    manifest = data_manifest(wildcards.task)
    run = run_path(wildcards.task, wildcards.key, wildcards.seed, getattr(wildcards, "rate", None))
    recorded = _recorded_data_hash(run)
    stale = recorded is not _NOT_RECORDED and recorded != DATA_HASH[wildcards.task]
    return manifest if stale else ancient(manifest)


# Jobs read the linked copies in resources/ (a glue_data layout of just this config's tasks);
# a data folder named in the config itself still wins inside the runner (same files). A job
# is pointed at the copy of its own task's family only: the other family's copy may not be
# prepared yet when it starts.
_DATA_FAMILIES = {"glue_dir": ("GLUE_DIR", "glue"), "squad_dir": ("SQUAD_DIR", "squad")}


# Jobs of one task with the same data settings share one tokenisation (diffprune/tasks/cache.py).
FEATURE_CACHE = "resources/features"


def get_data_env(wildcards, output) -> str:
    """The job's data variables (a function of ``output``: untracked, see ``untracked``)."""
    key = settings.data_key(wildcards.task)
    env, family = _DATA_FAMILIES[key]
    local = f" {env}=resources/{family}" if DATA[key] else ""
    return f"env DIFFPRUNE_FEATURE_CACHE={FEATURE_CACHE}{local}"


# ------------------------------------------------------------------------- per-run settings


def run_settings(task: str, key: str, phase: str) -> str:
    """Everything a run's result depends on, as canonical JSON.

    Passed as a rule parameter so that Snakemake's params rerun trigger re-runs exactly the
    runs whose settings changed when the config is edited, and nothing else (adding a task
    or a rate leaves every finished run alone).
    """
    name, options, _ = rungraph.method_entry(CFG, key)
    values = {
        "method": name,
        "options": options,
        "model": settings.model_spec(CFG),
        "training": settings.resolve_training(CFG, task, key, phase),
        "head_pattern": CFG["head_pattern"],
        "data_hash": DATA_HASH[task],
    }
    if phase == "prune":
        values["source_key"] = rungraph.source_key(CFG, key)
    return json.dumps(values, sort_keys=True, default=str)


# Above every run_priority (the data jobs take seconds and unlock whole tasks).
DATA_PRIORITY = 1_000_000

# Training examples and typical tokens per example (question + context windows for SQuAD)
# of each task, for run_priority only: the order of magnitude of a job, not a measurement.
TRAIN_EXAMPLES = {"cola": 8_551, "sst2": 67_349, "mrpc": 3_668, "stsb": 5_749, "qqp": 363_846,
                  "mnli": 392_702, "qnli": 104_743, "rte": 2_490, "squad": 87_599}
TYPICAL_TOKENS = {"cola": 11, "sst2": 13, "mrpc": 53, "stsb": 31, "qqp": 30, "mnli": 40,
                  "qnli": 50, "rte": 70, "squad": 400}


def run_priority(wildcards) -> int:
    """Longer jobs start first, so that the longest one (SQuAD here) does not start last and
    hold the whole workflow up on one core. Work ~ examples x tokens x epochs (x 1.3 for the
    L0 phase's gates), in steps of 10k token-epochs; a guide for the scheduler, not a
    measurement."""
    phase = "prune" if "rate" in wildcards.keys() else "train"
    training = settings.resolve_training(CFG, wildcards.task, wildcards.key, phase)
    examples = min(training["max_train_examples"] or TRAIN_EXAMPLES[wildcards.task],
                   TRAIN_EXAMPLES[wildcards.task])
    tokens = min(training["max_seq_length"], TYPICAL_TOKENS[wildcards.task])
    if wildcards.task == "squad":   # one window per question, plus the overflow windows
        tokens = training["max_seq_length"] * 1.3
    epochs = training["fixed_mask_epochs"] if phase == "prune" else training["epochs"]
    gates = 1.3 if phase == "train" and rungraph.method_entry(CFG, wildcards.key)[0] == "diff_pruning" else 1.0
    return int(examples * tokens * epochs * gates // 10_000)


def get_source_run(wildcards) -> str:
    """The train run a prune run starts from: its own L0 phase, or the reused run."""
    return run_path(wildcards.task, rungraph.source_key(CFG, wildcards.key), wildcards.seed)


def get_needed_run(wildcards) -> list[str]:
    """The finished run a train run reads first (critical_layers: full finetuning), if any."""
    needed = rungraph.needed_key(CFG, wildcards.key)
    return [run_path(wildcards.task, needed, wildcards.seed)] if needed else []


def get_needed_run_flag(wildcards, input) -> str:
    """`--from DIR` for a train run that reads another run (a function of input: untracked)."""
    return f"--from {shlex.quote(input.needed[0])}" if input.needed else ""


def untracked(value):
    """A rule parameter that Snakemake's params rerun trigger ignores.

    Snakemake skips params computed from a job's input/output (they change with the files
    anyway); a function of ``output`` is the sanctioned way to mark a value as "not part of
    the result". Used for facts of this machine and invocation (the interpreter's path, the
    path the config was given by, where the same data are read from): none of them may make
    a finished run look stale. They must not be literal text of the shell command either,
    whose changes the code trigger watches.
    """
    return lambda wildcards, output: value


def shell_command(*words: str) -> str:
    """A job's command, through the GPU-slot wrapper (a no-op without GPUs)."""
    return "{params.data_env} {params.python:q} -m diffprune.gpu_slots run -- {params.python:q} -m diffprune " + " ".join(words)


# Table 5's serving job (analysis.smk) measures N tasks on one base with the run set's own
# diffs. Of the configured prune runs it takes the method key whose diffs
# cover the most tasks, then its largest rate and smallest seed; no prune runs, no serving.
def serving_choice():
    by_entry = {}
    for run in RUNS:
        if run["rate"] is not None and run["task"] != "squad":  # one bank, one model class: GLUE heads
            by_entry.setdefault((run["key"], run["rate"], run["seed"]), []).append(run)
    if not by_entry:
        return None, []
    best = max(by_entry, key=lambda entry: (len(by_entry[entry]), entry[1], -entry[2]))
    return best, [run_path(r["task"], r["key"], r["seed"], r["rate"]) for r in by_entry[best]]


SERVING, SERVING_RUNS = serving_choice()
SERVING_FILE = f"{RESULTS}/serving.json"
