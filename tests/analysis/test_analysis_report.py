"""analysis/report.py: the run-set README's check of every run against its floor."""
from __future__ import annotations

import pandas as pd

from diffprune.analysis.report import floor_lines


def _runs(rows):
    return pd.DataFrame(rows, columns=["run_dir", "scores.sst2", "majority_scores.sst2",
                                       "scores.squad_f1", "majority_scores.squad_f1"])


def test_every_run_above_its_floor_is_said_and_the_closest_named():
    summary = _runs([["sst2/a/seed0", 80.0, 50.9, None, None],
                     ["sst2/b/seed0", 52.0, 50.9, None, None],
                     ["squad/a/seed0", None, None, 29.5, 20.7]])
    text = "\n".join(floor_lines(summary))
    assert "| sst2 | 50.9 | 2 | 2 | sst2/b/seed0 (52.0, +1.1) |" in text
    assert "| squad_f1 | 20.7 | 1 | 1 | squad/a/seed0 (29.5, +8.8) |" in text
    assert "Every run is above its floor." in text


def test_a_run_at_its_floor_is_listed():
    summary = _runs([["sst2/a/seed0", 80.0, 50.9, None, None],
                     ["sst2/b/seed0", 50.9, 50.9, None, None]])
    lines = floor_lines(summary)
    assert "At or below the floor (1):" in lines
    assert "- sst2/b/seed0: sst2 50.9 vs floor 50.9" in lines
    assert "Every run is above its floor." not in lines


def test_runs_without_a_recorded_floor():
    summary = pd.DataFrame({"run_dir": ["x"], "scores.sst2": [80.0]})
    assert floor_lines(summary)[0] == "No run recorded its floor."
