"""Where a job's seconds go, and a summary over a run set.

Every train / prune run records ``timings`` in its metrics.json: wall seconds per phase of
the process that finished it (an interrupted-and-resumed run records its last attempt):

  startup                 process start to the plan being ready: interpreter, imports, config
  load_model              the pretrained model, tokenizer and the method's wrapping
  load_data               reading (or memory-mapping the cached tokenisation of) the data
  evaluate_before_finetune  prune runs: the dev evaluation right after projection
  train                   the training loop of this attempt
  evaluate                the final dev evaluation
  write                   the method's files, the dense diff, metrics.json
  total                   process start to metrics.json written

    python -m diffprune.job_timings results/<name>          # medians over the finished runs

prints, per phase, the median and the sum over the run set's finished runs (wall and CPU
seconds), and the median non-training time per job (total - train), the figure the
job-overhead target is stated in.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PHASES = ("startup", "load_model", "load_data", "evaluate_before_finetune", "train", "evaluate", "write")


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (Linux ``/proc``; None elsewhere).

    A job is exec'd by the GPU-slot wrapper, which keeps the process: this counts the
    wrapper's start-up too, as a job's wall time does.
    """
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started_after_boot)


class PhaseClock:
    """Wall and CPU seconds per named phase; ``startup`` is read when the clock is made.

    CPU seconds (this process, all its threads) say what a phase costs whatever else the
    machine is doing; wall seconds are what a user waits.
    """

    def __init__(self) -> None:
        self._made = time.perf_counter()
        self._startup = seconds_since_process_start()
        self._startup_cpu = time.process_time()
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._running: tuple[str, float, float] | None = None

    def start(self, name: str) -> None:
        """Start counting ``name`` (a phase may be counted in several stretches)."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; phases: {', '.join(PHASES)}")
        if self._running is not None:
            raise RuntimeError(f"phase {self._running[0]!r} is still being counted")
        self._running = (name, time.perf_counter(), time.process_time())

    def stop(self) -> None:
        name, started, started_cpu = self._running
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + time.process_time() - started_cpu
        self._running = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop()

    def as_dict(self) -> dict[str, float | None]:
        """Wall seconds of every phase (0.0 for one this job did not have) and ``total``
        (``startup`` and ``total`` None where the process start time is unknown), and under
        ``cpu`` the same in CPU seconds."""
        since_made = time.perf_counter() - self._made
        timings: dict = {name: round(self.seconds.get(name, 0.0), 3) for name in PHASES}
        timings["startup"] = None if self._startup is None else round(self._startup, 3)
        timings["total"] = None if self._startup is None else round(self._startup + since_made, 3)
        cpu = {name: round(self.cpu_seconds.get(name, 0.0), 3) for name in PHASES}
        cpu["startup"] = round(self._startup_cpu, 3)
        cpu["total"] = round(time.process_time(), 3)
        timings["cpu"] = cpu
        return timings


def run_timings(runs_dir: Path) -> list[dict]:
    """``timings`` of every finished run under ``runs_dir`` that recorded them."""
    found = []
    for metrics_file in sorted(Path(runs_dir).rglob("metrics.json")):
        if metrics_file.parent.name.endswith(".tmp"):
            continue
        timings = json.loads(metrics_file.read_text()).get("timings")
        if timings and timings.get("total") is not None and "cpu" in timings:
            found.append({"run": str(metrics_file.parent.relative_to(runs_dir)), **timings})
    return found


def summarise(timings: list[dict], clock: str = "wall") -> list[tuple[str, float, float]]:
    """(phase, median, sum) for each phase, then ``non-training`` (total - train) and ``total``,
    in wall seconds (``clock="wall"``) or CPU seconds (``"cpu"``)."""
    if not timings:
        raise ValueError("no finished run recorded timings (runs from before timings were recorded have none)")
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    timings = [t if clock == "wall" else t["cpu"] for t in timings]
    rows = []
    for name in (*PHASES, "non-training", "total"):
        values = [t["total"] - t["train"] if name == "non-training" else t[name] for t in timings]
        rows.append((name, statistics.median(values), sum(values)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffprune.job_timings",
                                     description="Median and summed wall seconds per job phase over a run set.")
    parser.add_argument("run_set", type=Path, help="a run set folder (results/<name>) or its runs/ folder")
    args = parser.parse_args(argv)
    runs_dir = args.run_set / "runs" if (args.run_set / "runs").is_dir() else args.run_set
    if not runs_dir.is_dir():
        print(f"{runs_dir}: no such folder", file=sys.stderr)
        return 2
    timings = run_timings(runs_dir)
    try:
        wall, cpu = summarise(timings, "wall"), summarise(timings, "cpu")
    except ValueError as error:
        print(f"{runs_dir}: {error}", file=sys.stderr)
        return 2
    print(f"{len(timings)} runs under {runs_dir}: seconds per job")
    print(f"{'phase':<26}{'wall median':>12}{'wall sum':>10}{'cpu median':>12}{'cpu sum':>10}")
    for (name, median, total), (_, cpu_median, cpu_total) in zip(wall, cpu):
        print(f"{name:<26}{median:>12.2f}{total:>10.1f}{cpu_median:>12.2f}{cpu_total:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
