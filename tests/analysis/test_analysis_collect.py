"""collect: runs/ tree -> summary.csv + layers.csv."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from diffprune.analysis.__main__ import main
from diffprune.analysis.collect import collect, flatten
from diffprune.analysis.runset import AnalysisError
from analysis_synthetic import write_metrics


def _metrics(task, key, method, phase, rate, seed, **extra):
    return {"task": task, "method_key": key, "method": method, "phase": phase, "rate": rate, "seed": seed,
            "metrics": {"accuracy": 66.1}, "primary_metric": "accuracy", "scores": {task: 66.1},
            "before_finetune": {}, "new_params_pct": 100.0, **extra}


@pytest.fixture
def runs_tree(tmp_path):
    runs = tmp_path / "runs"
    write_metrics(runs / "rte" / "full_finetuning" / "seed0",
                  _metrics("rte", "full_finetuning", "full_finetuning", "train", None, 0,
                           config={"training": {"batch_size": 32}, "rates": [0.5, 1.0],
                                   "method_options": {}}))
    write_metrics(runs / "rte" / "structured_diff_pruning" / "rate0.5" / "seed0",
                  _metrics("rte", "structured_diff_pruning", "diff_pruning", "prune", 0.5, 0,
                           before_finetune={"metrics": {"accuracy": 60.0}, "scores": {"rte": 60.0}},
                           source_scores={"rte": 65.0},
                           config={"training": {"batch_size": 16}, "method_options": {"structured": True}}),
                  stats={"per_tensor": {"bert.embeddings.word_embeddings.weight": {"numel": 10, "nonzero": 1,
                                                                                   "layer": "embeddings"}},
                         "per_layer": {"embeddings": {"numel": 10, "nonzero": 1},
                                       "layer_0": {"numel": 20, "nonzero": 4},
                                       "head": {"numel": 5, "nonzero": 5}},
                         "layer_order": ["embeddings", "layer_0", "head"],
                         "groups_total": 7, "groups_zero": 3})
    # A run still being written (temporary sibling): never part of the run set.
    write_metrics(runs / "rte" / "structured_diff_pruning" / "rate1.0" / ".seed0.tmp-123",
                  _metrics("rte", "structured_diff_pruning", "diff_pruning", "prune", 1.0, 0))
    return runs


def test_flatten_nests_with_dots_and_lists_as_json():
    flat = flatten({"a": {"b": {"c": 1}}, "l": [1, 2], "e": {}, "s": "x"})
    assert flat == {"a.b.c": 1, "l": "[1, 2]", "e": None, "s": "x"}


def test_collect_flattens_every_field_and_reads_stats(runs_tree):
    summary, layers = collect(runs_tree)
    assert list(summary["run_dir"]) == ["rte/full_finetuning/seed0", "rte/structured_diff_pruning/rate0.5/seed0"]
    assert list(summary.columns[:7]) == ["run_dir", "task", "method_key", "method", "phase", "rate", "seed"]
    pruned = summary.set_index("method_key").loc["structured_diff_pruning"]
    assert pruned["scores.rte"] == 66.1
    assert pruned["metrics.accuracy"] == 66.1
    assert pruned["before_finetune.scores.rte"] == 60.0
    assert pruned["source_scores.rte"] == 65.0
    assert pruned["config.method_options.structured"] is True or pruned["config.method_options.structured"] == True  # noqa: E712
    assert pruned["config.training.batch_size"] == 16
    # groups come from stats.json when metrics.json lacks them
    assert pruned["groups_total"] == 7 and pruned["groups_zero"] == 3
    full = summary.set_index("method_key").loc["full_finetuning"]
    assert json.loads(full["config.rates"]) == [0.5, 1.0]
    assert pd.isna(full["groups_total"])

    assert list(layers["layer"]) == ["embeddings", "layer_0", "head"]
    assert list(layers["nonzero"]) == [1, 4, 5]
    assert list(layers["layer_index"]) == [0, 1, 2]
    assert set(layers["run_dir"]) == {"rte/structured_diff_pruning/rate0.5/seed0"}
    for column in ("task", "method_key", "method", "rate", "seed", "numel", "relative_l2", "angle_deg"):
        assert column in layers.columns


def test_collect_reads_per_layer_distance_of_full_finetuning(tmp_path):
    runs = tmp_path / "runs"
    write_metrics(runs / "cola" / "full_finetuning" / "seed1",
                  _metrics("cola", "full_finetuning", "full_finetuning", "train", None, 1),
                  stats={"layer_order": ["embeddings", "layer_0"],
                         "per_layer_distance": {"embeddings": {"relative_l2": 0.01, "angle_deg": 0.5},
                                                "layer_0": {"relative_l2": 0.02, "angle_deg": 1.5}}})
    _, layers = collect(runs)
    assert list(layers["relative_l2"]) == [0.01, 0.02]
    assert list(layers["angle_deg"]) == [0.5, 1.5]
    assert layers["nonzero"].isna().all()


def test_cli_collect_writes_both_files(runs_tree, tmp_path):
    out = tmp_path / "summary.csv"
    assert main(["collect", "--runs", str(runs_tree), "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == 2
    assert len(pd.read_csv(tmp_path / "layers.csv")) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_empty_run_set_is_an_error_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    out = tmp_path / "summary.csv"
    with pytest.raises(AnalysisError, match="run set is empty"):
        collect(tmp_path / "runs")
    assert main(["collect", "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 1
    assert "run set is empty" in capsys.readouterr().err
    assert not out.exists()
    assert main(["collect", "--runs", str(tmp_path / "missing"), "--out", str(out)]) == 1


def test_metrics_without_identity_field_is_named(tmp_path):
    runs = tmp_path / "runs"
    bad = _metrics("rte", "full_finetuning", "full_finetuning", "train", None, 0)
    del bad["method_key"]
    write_metrics(runs / "rte" / "x" / "seed0", bad)
    with pytest.raises(AnalysisError, match="method_key"):
        collect(runs)


def test_data_folders_are_written_without_the_machines_paths(tmp_path, monkeypatch):
    """summary.csv is shared (the reference run set is committed): no absolute data paths."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "rte" / "full_finetuning" / "seed0"
    run.mkdir(parents=True)
    metrics = {"task": "rte", "method_key": "full_finetuning", "method": "full_finetuning", "phase": "train",
               "seed": 0, "config": {"data": {"glue_dir": str(tmp_path / "resources" / "glue"),
                                              "squad_dir": "/somewhere/else/squad-copy"}}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    summary, _ = collect(tmp_path / "runs")
    assert summary.loc[0, "config.data.glue_dir"] == "resources/glue"
    assert summary.loc[0, "config.data.squad_dir"] == "<external>/squad-copy"


def test_only_the_configs_runs_are_collected_and_the_rest_named(runs_tree, tmp_path, caplog):
    """Runs of a method dropped from the config stayed in summary.csv, Table 1 and the README."""
    kept = runs_tree / "rte" / "full_finetuning" / "seed0"
    out = tmp_path / "summary.csv"
    with caplog.at_level("WARNING"):
        assert main(["collect", "--runs", str(runs_tree), "--out", str(out), "--only", str(kept)]) == 0
    assert pd.read_csv(out)["run_dir"].tolist() == ["rte/full_finetuning/seed0"]
    assert ("ignored 1 finished run(s) under" in caplog.text
            and "rte/structured_diff_pruning/rate0.5/seed0" in caplog.text)
    # a run the config asks for that has not finished is an error, not a silent gap
    with pytest.raises(AnalysisError, match="rte/bitfit/seed0 holds no metrics.json: it is not finished"):
        collect(runs_tree, [kept, runs_tree / "rte" / "bitfit" / "seed0"])
