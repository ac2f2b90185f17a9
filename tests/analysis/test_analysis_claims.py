"""The claims table as a whole: on the paper-shaped run set of ``analysis_synthetic`` every
claim holds (with hand-worked numbers), with full finetuning alone none is testable, its files
and columns, and the table made from runner metrics through collect and the tables verb.
The tests of single claims are in test_analysis_claims_scores / _structure, of what they
share in test_analysis_claims_evidence."""
from __future__ import annotations

import pandas as pd

from analysis_synthetic import paper_shaped_layers, write_metrics
from claims_setup import paper_shaped, through_csv, verdicts
from diffprune.analysis.__main__ import main
from diffprune.analysis.claims import CLAIMS, HOLDS, UNTESTABLE, claims_table
from diffprune.analysis.render import to_markdown


def test_every_claim_holds_on_the_paper_shaped_run_set(tmp_path):
    claims = verdicts(tmp_path, paper_shaped())
    assert list(claims.index) == list(range(1, 11)) == [c.number for c in CLAIMS]
    assert (claims["verdict"] == HOLDS).all(), claims.loc[claims["verdict"] != HOLDS, ["verdict", "ours", "missing"]]
    assert (claims["missing"] == "").all()
    # Hand values: task averages over SST-2 (mean of seeds 0-2: base + 1), CoLA and RTE.
    # Full finetuning (91 + 50 + 65) / 3 = 68.7; structured at 0.5% 0.2 lower.
    assert "68.5 vs full finetuning 68.7: -0.2 points" in claims.loc[1, "ours"]
    assert "avg over SST-2, CoLA, RTE" in claims.loc[1, "ours"]
    assert "gap structured - non-adaptive: 0.1% +9.5, 0.25% +6.5, 0.5% +4.8, 1% +3.1 (widest at 0.1%)" \
        in claims.loc[3, "ours"]
    assert "structured 15.0 vs unstructured 3.0 of 20 groups" in claims.loc[5, "ours"]
    assert "SST-2, structured diff pruning @ 0.5%, 3 seeds: mean pairwise Spearman 1.00" in claims.loc[8, "ours"]


def test_full_finetuning_alone_tests_nothing(tmp_path):
    summary = paper_shaped()
    claims = verdicts(tmp_path, summary[summary["method_key"] == "full_finetuning"], pd.DataFrame())
    assert (claims["verdict"] == UNTESTABLE).all()
    assert (claims["missing"] != "").all()


def test_table_files_and_display(tmp_path):
    summary = through_csv(tmp_path, paper_shaped())
    table = claims_table(summary, paper_shaped_layers(summary))
    assert table.files() == ["claims.csv", "claims.md"]
    assert list(table.display.columns) == ["#", "claim", "where in the paper", "test", "our numbers", "verdict"]
    assert list(table.numeric.columns) == ["claim", "statement", "where", "test", "ours", "verdict", "missing"]
    assert table.caption.startswith("Verdicts: 10 hold, 0 do not hold, 0 not testable here.")
    assert set(table.display["verdict"]) == {"**holds**"}
    # the paper's numbers come from diffprune.analysis.reference
    assert "structured 0.5% 80.6 vs full finetuning 80.6" in table.display.loc[0, "where in the paper"]
    # prose: every Markdown column left-aligned
    assert "| :--- | :--- | :--- | :--- | :--- | :--- |" in to_markdown(table)


def _runner_metrics(task, key, method, phase, rate, score, **extra):
    """metrics.json as the runner writes it: method options under config.method.options."""
    return {"task": task, "method_key": key, "method": method, "phase": phase, "rate": rate, "seed": 0,
            "scores": {task: score}, "model_id": "tiny", "new_params_pct": 100.0 if rate is None else rate,
            "seconds_per_step": 1.0, "peak_memory_bytes": 2**20, "bytes_per_task": 1000, **extra}


def test_claims_from_runner_metrics_through_collect_and_the_tables_verb(tmp_path):
    runs = tmp_path / "runs"
    write_metrics(runs / "rte/full_finetuning/seed0",
                  _runner_metrics("rte", "full_finetuning", "full_finetuning", "train", None, 66.0,
                                  config={"method": {"name": "full_finetuning", "options": {}}}))
    stats = {"per_layer": {"embeddings": {"numel": 1000, "nonzero": 1}, "layer_0": {"numel": 500, "nonzero": 40},
                           "head": {"numel": 5, "nonzero": 5}},
             "layer_order": ["embeddings", "layer_0", "head"], "groups_total": 7, "groups_zero": 3}
    write_metrics(runs / "rte/structured_diff_pruning/rate0.5/seed0",
                  _runner_metrics("rte", "structured_diff_pruning", "diff_pruning", "prune", 0.5, 65.5,
                                  source_scores={"rte": 65.8}, before_finetune={"scores": {"rte": 60.0}},
                                  config={"method": {"name": "diff_pruning", "options": {"structured": True}}}),
                  stats=stats)
    summary, tables = tmp_path / "summary.csv", tmp_path / "tables"
    assert main(["collect", "--runs", str(runs), "--out", str(summary)]) == 0
    assert main(["tables", "--summary", str(summary), "--layers", str(tmp_path / "layers.csv"),
                 "--out-dir", str(tables)]) == 0
    claims = pd.read_csv(tables / "claims.csv", keep_default_na=False).set_index("claim")
    # the structured flag was read from config.method.options.structured
    assert claims.loc[1, "verdict"] == HOLDS
    assert "structured diff pruning @ 0.5% 65.5 vs full finetuning 66.0: -0.5 points (avg over RTE)" \
        in claims.loc[1, "ours"]
    assert claims.loc[6, "verdict"] == HOLDS and "65.8 -> 60.0 -> 65.5 (-0.3)" in claims.loc[6, "ours"]
    assert claims.loc[5, "verdict"] == UNTESTABLE  # no unstructured runs
    # one task: the per-task part of claim 7 is not testable; its embedding part was measured
    assert claims.loc[7, "verdict"] == UNTESTABLE and "embeddings modified at" in claims.loc[7, "ours"]
    assert (tables / "claims.md").read_text().startswith("**The paper's claims, tested on this run set.**")
