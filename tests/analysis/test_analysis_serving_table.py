"""Table 5 (serving) from serving.json: formatted as measured, skipped when absent, a
malformed file named."""
from __future__ import annotations

import json

import pytest

from diffprune.analysis.runset import AnalysisError
from diffprune.analysis.serving_table import table5_serving
from diffprune.analysis.tables import Skipped

TOTALS = {"n_tasks": 2, "bank_resident_bytes": 100e6, "full_models_resident_bytes": 180e6,
          "resident_vs_full_models": 100 / 180, "bank_disk_bytes": 92e6, "full_models_disk_bytes": 180e6,
          "disk_vs_full_models": 92 / 180}


def _serving():
    task = {"nonzeros": 113566, "file_bytes": 594646, "resident_bytes": 1_820_000, "switch_ms_median": 4.5,
            "switch_ms_p90": 6.0, "bit_exact": True}
    return {"model_id": "m", "method_key": "structured_diff_pruning", "rate": 0.5, "tasks": ["sst2", "stsb"],
            "per_task": {"sst2": task, "stsb": dict(task)}, "rounds": 30, "measured": TOTALS,
            "extrapolated": {**TOTALS, "n_tasks": 9}, "torch_threads": 1, "device": "cpu"}


def test_the_table_shows_the_measured_numbers(tmp_path):
    path = tmp_path / "serving.json"
    path.write_text(json.dumps(_serving()))
    table = table5_serving(path)
    rows = table.display.set_index("row")
    assert rows.loc["sst2", "switch (ms, median / p90)"] == "4.50 / 6.00"
    assert rows.loc["sst2", "file (MB)"] == "0.595"
    assert rows.loc["N = 2 tasks (measured)", "memory vs N full models"] == "55.6% of 180.0 MB"
    assert rows.loc["N = 9 tasks (extrapolated)", "disk vs N full models"] == "51.1% of 180.0 MB"
    assert "structured diff pruning @ 0.5%" in table.caption


def test_absent_is_skipped_and_malformed_is_named(tmp_path):
    with pytest.raises(Skipped, match="python -m diffprune.serve"):
        table5_serving(tmp_path / "serving.json")
    broken = _serving()
    del broken["per_task"]["stsb"]["switch_ms_p90"]
    path = tmp_path / "serving.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(AnalysisError, match=r"serving.json lacks per_task.stsb.switch_ms_p90"):
        table5_serving(path)
