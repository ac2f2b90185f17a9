"""Helpers for running the Snakemake workflow in a subprocess, as a user would."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The snakemake beside the interpreter running the tests (the project's venv).
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def snakemake_env(**extra: str) -> dict[str, str]:
    """The environment of a workflow run: offline, no data folders unless given, and this
    checkout's diffprune first on the path (an editable install may point at another
    checkout of the project, e.g. a second git worktree: its code is not what is tested)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLUE_DIR", "SQUAD_DIR", "DIFFPRUNE_GPU_SLOTS")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def run_snakemake(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None,
                  timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    if not SNAKEMAKE.exists():
        pytest.skip(f"snakemake not installed beside {sys.executable}")
    proc = subprocess.run([str(SNAKEMAKE), *args], cwd=cwd, env=env or snakemake_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table Snakemake prints, as {rule: count} (without the total)."""
    match = re.search(r"Job stats:\njob\s+count\n[- ]+\n(.*?)\n(?:total|\n)", output, re.S)
    if not match:
        return {}
    counts = {}
    for line in match.group(1).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def make_test_data(out_dir: Path) -> None:
    """The .test run set's tiny data, written by .test/make_data.py (generated, not committed)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("test_run_set_data", REPO / ".test" / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_data(out_dir)
