"""Table 5 (cost) on the synthetic run set; the expected ratios and sizes are worked out by
hand from the cost fields listed in analysis_synthetic.py."""
from __future__ import annotations

import pytest

from diffprune.analysis.cost_table import table5_cost
from diffprune.analysis.runset import AnalysisError


def test_table5_cost_ratios_and_storage(summary):
    table = table5_cost(summary)
    numeric = table.numeric.set_index("row")
    assert numeric.loc["adapters 64", "step_vs_full"] == pytest.approx(0.8)
    assert numeric.loc["structured diff pruning (L0 / source phase)", "step_vs_full"] == pytest.approx(2.0)
    assert numeric.loc["structured diff pruning @ 0.5% (fixed-mask phase)", "step_vs_full"] == pytest.approx(1.5)
    # 5 tasks: base 4 MB + 5 x 0.4 MB adapters = 6 MB against 5 x 4 MB
    assert numeric.loc["adapters 64", "storage_5_tasks_bytes"] == pytest.approx(6e6)
    assert numeric.loc["adapters 64", "storage_5_tasks_vs_full_models"] == pytest.approx(0.3)
    assert numeric.loc["full finetuning", "storage_9_tasks_vs_full_models"] == pytest.approx(1.0)
    assert numeric.loc["full finetuning", "peak_memory_mib"] == pytest.approx(100.0)


def test_missing_cost_column_is_named(summary):
    with pytest.raises(AnalysisError, match="seconds_per_step"):
        table5_cost(summary.drop(columns=["seconds_per_step"]))
