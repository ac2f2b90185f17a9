"""Per-run diff-file columns (collect) and Table 5's stored / limit column."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffprune.analysis.collect import collect
from diffprune.analysis.cost_table import table5_cost
from diffprune.analysis.diff_files import diff_file_columns
from diffprune.analysis.runset import AnalysisError
from diffprune.diffsize import size_report
from diffprune.models import load_pretrained
from diffprune.projection import FixedMaskModel
from diffprune.storage import save_diff


def _diff_run(run_dir):
    model, _, model_id = load_pretrained({"source": "tiny-random"}, "sst2")
    torch.manual_seed(0)
    dense = {n: torch.randn_like(p) for n, p in model.named_parameters() if not n.startswith("classifier")}
    return save_diff(run_dir / "diff.safetensors", FixedMaskModel.from_dense(model, dense, rate=1.0),
                     model_id=model_id, task="sst2", rate=1.0)


def test_a_run_with_a_diff_file_gets_its_bytes_against_the_limit(tmp_path):
    path = _diff_run(tmp_path)
    columns = diff_file_columns(tmp_path)
    report = size_report(path, repeats=1)
    assert columns["diff_file.file_bytes"] == path.stat().st_size
    assert columns["diff_file.file_vs_limit"] == pytest.approx(report["file_vs_limit"])
    assert columns["diff_file.version"] == "3" and columns["diff_file.values_dtype"] == "float32"
    assert diff_file_columns(tmp_path / "nowhere") == {}


def test_collect_adds_the_columns_and_a_broken_file_is_named(tmp_path):
    run = tmp_path / "runs" / "sst2" / "structured" / "rate1.0" / "seed0"
    path = _diff_run(run)
    (run / "metrics.json").write_text('{"task": "sst2", "method_key": "structured", "method": "diff_pruning", '
                                      '"phase": "prune", "rate": 1.0, "seed": 0}')
    summary, _ = collect(tmp_path / "runs")
    assert summary.loc[0, "diff_file.file_bytes"] == path.stat().st_size
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(AnalysisError, match=f"{path}: .*is truncated"):
        collect(tmp_path / "runs")


def test_table5_shows_the_mean_stored_vs_limit_of_a_row(summary_frame):
    frame = summary_frame.copy()
    prune = frame.index[(frame["phase"] == "prune") & (frame["rate"] == 0.5)
                        & (frame["method_key"] == "structured_diff_pruning")]
    frame["diff_file.file_vs_limit"] = np.nan
    frame.loc[prune, "diff_file.file_vs_limit"] = np.linspace(1.01, 1.03, len(prune))
    numeric = table5_cost(frame).numeric.set_index("row")
    assert numeric.loc["structured diff pruning @ 0.5% (fixed-mask phase)", "stored_vs_limit"] == pytest.approx(1.02)
    assert np.isnan(numeric.loc["full finetuning", "stored_vs_limit"])
    assert "1.020x" in table5_cost(frame).display.to_string()
