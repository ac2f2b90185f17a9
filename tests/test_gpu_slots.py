"""GPU slots: concurrent jobs see different devices; a killed job frees its slot.

GPUs are faked with ``--slots N`` (no CUDA needed): the slot logic only hands out device
ids and never touches a device itself.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffprune import gpu_slots

# The child records what it saw, then sleeps so that the jobs overlap in time.
RECORDER = ("import os, sys, time; from pathlib import Path; "
            "Path(sys.argv[1]).write_text(os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>') + ' ' + repr(time.time())); "
            "time.sleep(float(sys.argv[2]))")


def clean_env(lock_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_VISIBLE_DEVICES", "DIFFPRUNE_GPU_SLOTS", *gpu_slots.SCHEDULER_JOB_VARS)}
    env["DIFFPRUNE_GPU_LOCK_DIR"] = str(lock_dir)
    env.update(extra)
    return env


def start_job(tmp_path: Path, name: str, slots: str | None, sleep: float, env: dict[str, str],
              timeout: float | None = None) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / f"{name}.txt"
    cmd = [sys.executable, "-m", "diffprune.gpu_slots", "run"]
    if slots is not None:
        cmd += ["--slots", slots]
    if timeout is not None:
        cmd += ["--timeout", str(timeout)]
    cmd += ["--", sys.executable, "-c", RECORDER, str(out), str(sleep)]
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True), out


def wait_for(path: Path, seconds: float = 30.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written within {seconds} s")


def seen_device(path: Path) -> str:
    return path.read_text().split()[0]


@pytest.mark.parametrize("n", [2, 4])
def test_concurrent_jobs_get_distinct_devices(tmp_path, n):
    env = clean_env(tmp_path / "locks")
    jobs = [start_job(tmp_path, f"job{i}", str(n), sleep=2.0, env=env) for i in range(n)]
    for proc, _ in jobs:
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    devices = [seen_device(out) for _, out in jobs]
    assert sorted(devices) == [str(i) for i in range(n)]
    # They really ran side by side: every job started before the first one finished.
    starts = sorted(float(out.read_text().split()[1]) for _, out in jobs)
    assert starts[-1] - starts[0] < 2.0


def test_job_waits_for_a_free_slot(tmp_path):
    env = clean_env(tmp_path / "locks")
    first, first_out = start_job(tmp_path, "first", "1", sleep=1.5, env=env)
    wait_for(first_out)
    second, second_out = start_job(tmp_path, "second", "1", sleep=0.0, env=env)
    assert first.wait(timeout=60) == 0
    finished_first = time.time()
    assert second.wait(timeout=60) == 0
    assert "busy, waiting" in second.stderr.read()
    assert seen_device(first_out) == seen_device(second_out) == "0"
    assert float(second_out.read_text().split()[1]) >= finished_first - 0.5


def test_sigkill_releases_the_slot(tmp_path):
    env = clean_env(tmp_path / "locks")
    victim, victim_out = start_job(tmp_path, "victim", "1", sleep=120.0, env=env)
    wait_for(victim_out)
    assert gpu_slots.slot_status(["0"], tmp_path / "locks")[0][1] == str(victim.pid)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    # The kernel dropped the flock with the process: the next job gets the slot at once.
    started = time.monotonic()
    nxt, nxt_out = start_job(tmp_path, "next", "1", sleep=0.0, env=env, timeout=10)
    assert nxt.wait(timeout=60) == 0, nxt.stderr.read()
    assert seen_device(nxt_out) == "0"
    assert time.monotonic() - started < 10
    assert gpu_slots.slot_status(["0"], tmp_path / "locks") == [("0", None)]


def test_exit_code_passes_through(tmp_path):
    env = clean_env(tmp_path / "locks")
    proc = subprocess.run([sys.executable, "-m", "diffprune.gpu_slots", "run", "--slots", "1", "--",
                           sys.executable, "-c", "import sys; sys.exit(7)"], env=env, capture_output=True)
    assert proc.returncode == 7


def test_zero_slots_runs_without_a_device(tmp_path):
    env = clean_env(tmp_path / "locks")
    proc, out = start_job(tmp_path, "cpu", "0", sleep=0.0, env=env)
    assert proc.wait(timeout=60) == 0
    assert seen_device(out) == "<unset>"
    assert not (tmp_path / "locks").exists()


def test_slots_from_environment_variable(tmp_path):
    env = clean_env(tmp_path / "locks", DIFFPRUNE_GPU_SLOTS="3")
    proc, out = start_job(tmp_path, "env", "auto", sleep=0.0, env=env)
    assert proc.wait(timeout=60) == 0
    assert seen_device(out) == "0"


def test_scheduler_assigned_device_is_left_alone(tmp_path):
    env = clean_env(tmp_path / "locks", SLURM_JOB_ID="123", CUDA_VISIBLE_DEVICES="5")
    proc, out = start_job(tmp_path, "slurm", None, sleep=0.0, env=env)
    assert proc.wait(timeout=60) == 0
    assert seen_device(out) == "5"
    assert not (tmp_path / "locks").exists()


def test_resolve_devices_maps_slots_onto_visible_devices():
    assert gpu_slots.resolve_devices(2, {"CUDA_VISIBLE_DEVICES": "2,3,5"})[0] == ["2", "3"]
    assert gpu_slots.resolve_devices(None, {"CUDA_VISIBLE_DEVICES": "2,3"})[0] == ["2", "3"]
    assert gpu_slots.resolve_devices(None, {"CUDA_VISIBLE_DEVICES": "-1"})[0] == []
    assert gpu_slots.resolve_devices(None, {"CUDA_VISIBLE_DEVICES": ""})[0] == []
    assert gpu_slots.resolve_devices(3, {})[0] == ["0", "1", "2"]
    assert gpu_slots.resolve_devices(None, {"DIFFPRUNE_GPU_SLOTS": "2"})[0] == ["0", "1"]
    # An explicit --slots wins over the environment.
    assert gpu_slots.resolve_devices(1, {"DIFFPRUNE_GPU_SLOTS": "4"})[0] == ["0"]


@pytest.mark.parametrize("value,expected", [("auto", None), (None, None), ("", None), ("0", 0), (3, 3)])
def test_parse_slots(value, expected):
    assert gpu_slots.parse_slots(value) == expected


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_parse_slots_rejects_nonsense(value):
    with pytest.raises(ValueError):
        gpu_slots.parse_slots(value)
