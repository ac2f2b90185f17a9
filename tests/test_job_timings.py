"""Per-phase job timings: what the clock records and how a run set is summarised."""
from __future__ import annotations

import json
import time

import pytest

from diffprune import job_timings
from diffprune.job_timings import PHASES, PhaseClock


def test_a_phase_counted_in_two_stretches_adds_up_and_unused_phases_are_zero():
    clock = PhaseClock()
    for _ in range(2):
        with clock.phase("evaluate"):
            time.sleep(0.02)
    timings = clock.as_dict()
    assert timings["evaluate"] >= 0.04 and timings["train"] == 0.0
    assert set(timings) == {*PHASES, "total", "cpu"} and set(timings["cpu"]) == {*PHASES, "total"}
    assert timings["total"] >= timings["startup"] + timings["evaluate"]  # Linux: /proc gives the start
    assert timings["cpu"]["evaluate"] < 0.04  # sleeping costs no CPU


def test_phases_do_not_nest_and_unknown_names_are_refused():
    clock = PhaseClock()
    with pytest.raises(ValueError, match="unknown phase 'lunch'"):
        clock.start("lunch")
    clock.start("train")
    with pytest.raises(RuntimeError, match="'train' is still being counted"):
        clock.start("evaluate")


def test_seconds_since_process_start_is_plausible():
    seconds = job_timings.seconds_since_process_start()
    assert seconds is not None and 0.0 < seconds < 24 * 3600


def fake_run(folder, train: float, evaluate: float, total: float):
    folder.mkdir(parents=True)
    timings = {name: 0.0 for name in PHASES}
    timings.update(startup=1.0, train=train, evaluate=evaluate, total=total)
    timings["cpu"] = {**timings, "total": total - 0.5}
    (folder / "metrics.json").write_text(json.dumps({"timings": timings}))


def test_summary_gives_medians_sums_and_the_non_training_time(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs / "sst2" / "a" / "seed0", train=10.0, evaluate=2.0, total=14.0)
    fake_run(runs / "sst2" / "b" / "seed0", train=20.0, evaluate=4.0, total=30.0)
    fake_run(runs / "sst2" / "c" / "seed0", train=30.0, evaluate=6.0, total=45.0)
    (runs / "old").mkdir()
    (runs / "old" / "metrics.json").write_text(json.dumps({"scores": {}}))  # before timings: ignored
    rows = {name: (median, total) for name, median, total in job_timings.summarise(job_timings.run_timings(runs))}
    assert rows["train"] == (20.0, 60.0) and rows["evaluate"] == (4.0, 12.0)
    assert rows["non-training"] == (10.0, 29.0)  # 4, 10, 15
    assert job_timings.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 runs under" in out and "non-training" in out


def test_summary_of_a_run_set_without_timings_says_so(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert job_timings.main([str(tmp_path)]) == 2
    assert "no finished run recorded timings" in capsys.readouterr().err
