"""The claims table on synthetic run sets whose verdicts are known: the paper-shaped run set of
``analysis_synthetic`` (every claim holds), the same with one thing changed (one claim fails),
and with runs or fields taken away (the claim is not testable, naming what is missing)."""
from __future__ import annotations

import pandas as pd
import pytest

from diffprune.analysis.__main__ import main
from diffprune.analysis.claims import CLAIMS, FAILS, HOLDS, UNTESTABLE, claims_table
from diffprune.analysis.render import to_markdown
from diffprune.analysis.runset import load_summary
from analysis_synthetic import paper_shaped_layers, paper_shaped_rows, write_metrics


def _through_csv(tmp_path, summary: pd.DataFrame) -> pd.DataFrame:
    """As the CLI reads it: booleans and empty cells come back from CSV as strings / NaN."""
    path = tmp_path / "summary.csv"
    summary.to_csv(path, index=False)
    return load_summary(path)


def _claims(tmp_path, summary: pd.DataFrame, layers: pd.DataFrame | None = None) -> pd.DataFrame:
    summary = _through_csv(tmp_path, summary)
    layers = paper_shaped_layers(summary) if layers is None else layers
    return claims_table(summary, layers).numeric.set_index("claim")


def _paper_shaped(offsets=None) -> pd.DataFrame:
    return pd.DataFrame(paper_shaped_rows(offsets))


def test_every_claim_holds_on_the_paper_shaped_run_set(tmp_path):
    claims = _claims(tmp_path, _paper_shaped())
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


def _set_groups_zero(summary, layers):
    summary.loc[summary["method_key"] == "structured_diff_pruning", "groups_zero"] = 2  # unstructured: 3
    return summary, layers


def _lower_after_projection(summary, layers):
    # the source scores 1.5 points above the final ones for one variant: projection costs 1.5
    rows = summary["method_key"] == "diff_pruning"
    for column in [c for c in summary.columns if c.startswith("source_scores.")]:
        summary.loc[rows, column] += 1.0
    return summary, layers


def _embeddings_modified(summary, layers):
    # 100 of 1000 entries: denser than the whole diff (e.g. RTE 0.1 vs 180 / 2000 = 0.09), while
    # the tasks' profiles still differ by 14.8 points on average: only this part fails.
    layers.loc[layers["layer"] == "embeddings", "nonzero"] = 100
    return summary, layers


def _tasks_alike(summary, layers):
    for layer, nonzero in {"embeddings": 1, "layer_0": 60, "layer_1": 20}.items():
        layers.loc[layers["layer"] == layer, "nonzero"] = nonzero
    return summary, layers


def _seeds_disagree(summary, layers):
    rows = (layers["task"] == "sst2") & (layers["seed"] == 1) & (layers["layer"] == "layer_1")
    layers.loc[rows, "nonzero"] = 90  # above layer_0's 61: another most-modified layer
    return summary, layers


def _squad_below_full(summary, layers):
    rows = ((summary["task"] == "squad") & (summary["method_key"] == "structured_diff_pruning")
            & (summary["rate"] == 1.0))
    summary.loc[rows, "scores.squad_f1"] = 79.0  # full finetuning: 80
    return summary, layers


FAILING = {
    "1: structured 1.5 below full finetuning at 0.5%": (1, {("structured_diff_pruning", 0.5): -1.5}, None),
    "2: unstructured below non-adaptive at 0.5%": (2, {("diff_pruning", 0.5): -6.0}, None),
    # order still holds at 0.1% (-2.5 > -4 > -4.5), but the gap there (2.0) is the narrowest
    "3: gap not widest at 0.1%": (3, {("nonadaptive_diff_pruning", 0.1): -4.5}, None),
    "4: structured falls from 0.5% to 1%": (4, {("structured_diff_pruning", 1.0): -0.4}, None),
    "4: structured at 1% 1.9 below full finetuning": (4, {("full_finetuning", None): 2.0}, None),
    "5: structured leaves fewer zero groups": (5, None, _set_groups_zero),
    "6: projection costs 1.5 points": (6, None, _lower_after_projection),
    "7: embeddings modified densely": (7, None, _embeddings_modified),
    "7: every task modifies the same layers": (7, None, _tasks_alike),
    "8: seeds disagree on the most-modified layer": (8, None, _seeds_disagree),
    "9: structured 1% below full finetuning on SQuAD": (9, None, _squad_below_full),
    "10: last layer as good as full finetuning": (10, {("last_layer", None): 0.0}, None),
    "10: adapters 1.5 below full finetuning": (10, {("adapters_64", None): -1.5}, None),
}


@pytest.mark.parametrize("claim, offsets, edit", FAILING.values(), ids=FAILING.keys())
def test_one_change_makes_the_claim_fail(tmp_path, claim, offsets, edit):
    summary = _through_csv(tmp_path, _paper_shaped(offsets))
    layers = paper_shaped_layers(summary)
    if edit is not None:
        summary, layers = edit(summary, layers)
    claims = claims_table(summary, layers).numeric.set_index("claim")
    assert claims.loc[claim, "verdict"] == FAILS, claims.loc[claim, "ours"]
    assert claims.loc[claim, "missing"] == ""


def _without(**conditions):
    def drop(summary, layers):
        rows = pd.Series(True, index=summary.index)
        for column, value in conditions.items():
            rows &= summary[column].isin(value if isinstance(value, (list, tuple)) else [value])
        return summary[~rows], layers[layers["run_dir"].isin(summary.loc[~rows, "run_dir"])]
    return drop


def _without_columns(prefix):
    def drop(summary, layers):
        return summary.drop(columns=[c for c in summary.columns if c.startswith(prefix)]), layers
    return drop


def _no_layers(summary, layers):
    return summary, layers.iloc[0:0]


def _layers_of_one_task(summary, layers):
    return summary, layers[layers["task"] == "sst2"]


UNTESTABLE_CASES = {
    "1: no structured 0.5%": (1, _without(method_key="structured_diff_pruning", rate=0.5),
                              "structured diff pruning at 0.5%"),
    "2: no non-adaptive": (2, _without(method_key="nonadaptive_diff_pruning"),
                           "needs rate 0.5 for all three variants (structured, unstructured, non-adaptive); "
                           "lacking: non-adaptive diff pruning"),
    "3: no rate 0.1": (3, _without(rate=0.1), "needs rate 0.1 and at least one larger rate for all three "
                                              "variants (structured, unstructured, non-adaptive); rates all three "
                                              "have here: 0.25, 0.5, 1"),
    "3: no non-adaptive": (3, _without(method_key="nonadaptive_diff_pruning"), "no runs of non-adaptive"),
    "4: no structured 1%": (4, _without(method_key="structured_diff_pruning", rate=1.0),
                            "needs structured diff pruning at 1% and at least one smaller rate"),
    "5: no groups_zero": (5, _without_columns("groups_zero"), "groups_zero"),
    "6: no scores before projection": (6, _without_columns("source_scores."), "source_scores"),
    "7: no layers.csv": (7, _no_layers, "layers.csv"),
    "7: one task with layer counts": (7, _layers_of_one_task, "on at least 2 tasks"),
    "8: one seed": (8, _without(seed=[1, 2]), "needs at least 2 seeds"),
    "9: no SQuAD": (9, _without(task="squad"), "needs SQuAD runs"),
    "10: no last layer, no adapters": (10, _without(method_key=["last_layer", "adapters_64"]),
                                       "needs last-layer finetuning and adaptive diff pruning at 0.5%; "
                                       "needs adapters and full finetuning"),
}


@pytest.mark.parametrize("claim, edit, missing", UNTESTABLE_CASES.values(), ids=UNTESTABLE_CASES.keys())
def test_missing_runs_make_the_claim_untestable_and_say_what_is_needed(tmp_path, claim, edit, missing):
    summary = _through_csv(tmp_path, _paper_shaped())
    summary, layers = edit(summary, paper_shaped_layers(summary))
    claims = claims_table(summary.reset_index(drop=True), layers).numeric.set_index("claim")
    assert claims.loc[claim, "verdict"] == UNTESTABLE
    assert missing in claims.loc[claim, "missing"]


def test_one_task_profile_leaves_the_tested_part_in_our_numbers(tmp_path):
    summary = _through_csv(tmp_path, _paper_shaped())
    _, layers = _layers_of_one_task(summary, paper_shaped_layers(summary))
    claim = claims_table(summary, layers).numeric.set_index("claim").loc[7]
    assert claim["verdict"] == UNTESTABLE
    # SST-2 seed 0: embeddings 1 / 1000 against (1 + 60 + 20) / 2000 -> 0.025x (0.024 over seeds);
    # 1 of 81 modified entries -> 1.2%.
    assert "embeddings modified at 0.02x the whole diff's density at most (sst2; 1.2%" in claim["ours"]


def test_a_failing_part_decides_a_two_part_claim(tmp_path):
    # adapters fail (part 2), last layer is absent (part 1 untestable): the claim does not hold
    summary = _paper_shaped({("adapters_64", None): -1.5})
    claims = _claims(tmp_path, summary[summary["method_key"] != "last_layer"])
    assert claims.loc[10, "verdict"] == FAILS
    assert "other part not testable: needs last-layer finetuning" in claims.loc[10, "ours"]


def test_full_finetuning_alone_tests_nothing(tmp_path):
    summary = _paper_shaped()
    claims = _claims(tmp_path, summary[summary["method_key"] == "full_finetuning"], pd.DataFrame())
    assert (claims["verdict"] == UNTESTABLE).all()
    assert (claims["missing"] != "").all()


def _sst2_only(offsets=None) -> pd.DataFrame:
    summary = _paper_shaped(offsets)
    return summary[summary["task"] == "sst2"]


def test_seed_spread_within(tmp_path):
    # Three seeds; every row's per-seed averages 0, 1, 2 above its mean: std 1.0.
    claim = _claims(tmp_path, _sst2_only()).loc[1]
    assert claim["verdict"] == HOLDS
    assert "91.0 ± 1.0 (3 seeds)" in claim["ours"]
    assert "difference -0.2 is within the seed spread (std 1.0)" in claim["ours"]


def test_seed_spread_exceeded(tmp_path):
    claim = _claims(tmp_path, _sst2_only({("structured_diff_pruning", 0.5): -1.5})).loc[1]
    assert claim["verdict"] == FAILS
    assert "difference -1.5 exceeds the seed spread (std 1.0)" in claim["ours"]


def test_variant_with_several_keys_is_tested_on_the_key_with_most_runs(tmp_path):
    summary = _paper_shaped()
    # A second structured entry with one poor run: not the one the claims test.
    extra = summary[(summary["method_key"] == "structured_diff_pruning") & (summary["rate"] == 0.5)].iloc[:1].copy()
    extra["method_key"], extra["run_dir"], extra["scores.sst2"] = "structured_tiny", "sst2/structured_tiny/x", 10.0
    claims = _claims(tmp_path, pd.concat([summary, extra], ignore_index=True))
    assert claims.loc[1, "verdict"] == HOLDS
    assert claims.loc[1, "ours"].startswith("structured diff pruning @ 0.5%")


def test_table_files_and_display(tmp_path):
    summary = _through_csv(tmp_path, _paper_shaped())
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
