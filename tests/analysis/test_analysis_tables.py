"""Tables 1-4 on the synthetic run set; every expected number is worked out by hand from
the scores listed in analysis_synthetic.py."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from diffprune.analysis import reference
from diffprune.analysis.runset import (AnalysisError, final_runs, format_mean_std, load_summary, structured_flag,
                                       summarise_scores)
from diffprune.analysis.tables import Skipped, table1_main, table2_structured_rates, table3_projection, table4_squad


def _ours(table):
    return table.numeric[table.numeric["source"] == "ours"].set_index("row")


def test_table1_average_excludes_qnli_and_matches_hand_values(summary):
    table = table1_main(summary)
    ours = _ours(table)
    # full finetuning means: mnli_m 81, mnli_mm 82, cola 52, rte 71 -> (81+82+52+71)/4
    assert ours.loc["full finetuning", "avg"] == pytest.approx(71.5)
    # adapters: (78 + 79 + 40 + 60) / 4; QNLI (88) left out
    assert ours.loc["adapters 64", "avg"] == pytest.approx(64.25)
    assert ours.loc["structured diff pruning @ 0.5%", "avg"] == pytest.approx((79 + 80 + 50 + 69) / 4)
    assert ours.loc["diff pruning @ 1%", "avg"] == pytest.approx((76 + 77 + 46 + 66) / 4)
    assert ours.loc["full finetuning", "qnli"] == pytest.approx(91.0)
    assert list(table.display.columns) == ["method", "new params / task", "QNLI", "MNLI-m", "MNLI-mm", "CoLA",
                                           "RTE", "avg (w/o QNLI)"]
    assert any("QNLI" in note for note in table.notes)


def test_table1_mean_std_over_seeds(summary):
    table = table1_main(summary)
    ours = _ours(table)
    # rte seeds 70, 72: sample std sqrt(2)
    assert ours.loc["full finetuning", "rte_std"] == pytest.approx(math.sqrt(2))
    assert ours.loc["full finetuning", "rte_n"] == 2
    # per-seed averages w/o QNLI: (80+81+50+70)/4 = 70.25 and (82+83+54+72)/4 = 72.75
    assert ours.loc["full finetuning", "avg_std"] == pytest.approx(np.std([70.25, 72.75], ddof=1))
    row = table.display.set_index("method").loc["full finetuning"]
    assert row["RTE"] == "71.0 ± 1.4"
    assert row["avg (w/o QNLI)"] == "71.5 ± 1.8"
    # one seed: no "±"
    assert table.display.set_index("method").loc["adapters 64", "RTE"] == "60.0"


def test_table1_rows_train_phase_of_projected_methods_hidden_and_paper_rows_marked(summary):
    table = table1_main(summary)
    rows = list(table.display["method"])
    assert rows[:6] == ["full finetuning", "adapters 64", "diff pruning @ 0.5%", "diff pruning @ 1%",
                        "structured diff pruning @ 0.5%", "structured diff pruning @ 1%"]
    assert "structured diff pruning" not in rows  # its L0 (train-phase) runs are not a row
    paper = [r for r in rows if r.startswith(reference.TABLE1_SOURCE)]
    assert len(paper) == len(reference.TABLE1_ROWS)
    structured_paper = table.display[table.display["method"] == f"{reference.TABLE1_SOURCE}: structured diff pruning"]
    assert structured_paper["RTE"].item() == "70.6" and structured_paper["avg (w/o QNLI)"].item() == "80.6"
    assert rows[6] == "majority class (dev)"
    majority = table.numeric.set_index("row").loc["majority class (dev)"]
    assert majority["avg"] == pytest.approx((35 + 36 + 0 + 53) / 4) and majority["rte_n"] == 1
    assert table.rule_before == [6, 7]


def test_latex_is_booktabs_and_markdown_is_a_table(summary, tmp_path):
    table = table1_main(summary)
    written = table.write(tmp_path)
    assert [p.name for p in written] == ["table1_main.csv", "table1_main.md", "table1_main.tex"]
    tex = (tmp_path / "table1_main.tex").read_text()
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"$\pm$", r"\%"):
        assert command in tex
    markdown = (tmp_path / "table1_main.md").read_text()
    assert "| full finetuning | 100% |" in markdown
    assert pd.read_csv(tmp_path / "table1_main.csv")["row"].iloc[0] == "full finetuning"


def test_table2_structured_rates_in_order_full_finetuning_last(summary):
    table = table2_structured_rates(summary)
    # the dense baselines sit between the rates and full finetuning, at their natural budget
    assert list(table.display["method"]) == ["structured diff pruning @ 0.5%", "structured diff pruning @ 1%",
                                             "adapters 64", "full finetuning"]
    assert list(table.display["target rate"]) == ["0.5%", "1%", "(3%)", "100%"]
    numeric = table.numeric.set_index("row")
    # Table 2 averages every column, QNLI included
    assert numeric.loc["structured diff pruning @ 0.5%", "avg"] == pytest.approx((89 + 79 + 80 + 50 + 69) / 5)
    assert numeric.loc["adapters 64", "avg"] == pytest.approx((88 + 78 + 79 + 40 + 60) / 5)
    assert numeric["paper_avg"].tolist()[:2] == [84.8, 85.1] and numeric["paper_avg"].iloc[3] == 85.0
    assert np.isnan(numeric["paper_avg"].iloc[2])
    assert table.rule_before == [2, 3]


def test_structured_flag_prefers_structured_column(summary_frame):
    frame = summary_frame.copy()
    assert structured_flag(frame).sum() == (frame["config.method_options.structured"] == True).sum()  # noqa: E712
    frame["structured"] = "False"  # an explicit column wins over the config's option
    assert not structured_flag(frame).any()
    with pytest.raises(Skipped, match="structured"):
        table2_structured_rates(frame)
    frame["structured"] = np.where(frame["method_key"] == "diff_pruning", "true", "false")
    assert set(final_runs(frame[structured_flag(frame)])["method_key"]) == {"diff_pruning"}


def test_structured_flag_where_the_runner_records_it(summary_frame):
    """The runner writes the method entry's options under config.method.options."""
    frame = summary_frame.rename(columns={"config.method_options.structured": "config.method.options.structured"})
    frame["structured"] = np.nan  # a column with no value for a run falls through to the next
    table = table2_structured_rates(frame)
    assert list(table.display["method"])[:2] == ["structured diff pruning @ 0.5%", "structured diff pruning @ 1%"]


def test_table3_stages(summary):
    table = table3_projection(summary)
    numeric = table.numeric
    at_half = numeric[numeric["row"] == "structured diff pruning @ 0.5%"].set_index("stage")
    # synthetic projection drops 10 points before fixed-mask finetuning
    assert at_half.loc["after projection, no finetuning", "rte"] == pytest.approx(69.0 - 10.0)
    assert at_half.loc["after projection + fixed-mask finetuning", "rte"] == pytest.approx(69.0)
    source = numeric[(numeric["row"] == "structured diff pruning")].set_index("stage")
    # source rte scores 69, 71 (each counted once although two rates share them)
    assert source.loc["source (L0 / dense), before projection", "rte"] == pytest.approx(70.0)
    assert source.loc["source (L0 / dense), before projection", "rte_n"] == 2
    assert source.loc["source nonzero diff (% of diffed params)", "cola"] == pytest.approx(0.5)


def test_table4_squad_with_paper_reference(summary):
    table = table4_squad(summary)
    ours = _ours(table)
    assert list(ours.index) == ["full finetuning", "structured diff pruning @ 0.5%"]
    assert ours.loc["full finetuning", "squad_f1"] == pytest.approx(81.0)
    assert ours.loc["full finetuning", "squad_em_std"] == pytest.approx(math.sqrt(2))
    paper = table.numeric[table.numeric["source"] == reference.TABLE4_SOURCE]
    assert list(paper["squad_f1"]) == [90.8, 92.1, 93.2, 90.4]
    assert "article split" in table.caption


def test_table4_skipped_without_squad(summary):
    with pytest.raises(Skipped, match="SQuAD"):
        table4_squad(summary[summary["task"] != "squad"])


def test_missing_column_is_named(summary):
    with pytest.raises(AnalysisError, match="new_params_pct"):
        table1_main(summary.drop(columns=["new_params_pct"]))
    with pytest.raises(AnalysisError, match="before_finetune.scores"):
        table3_projection(summary.drop(columns=[c for c in summary.columns if c.startswith("before_finetune.")]))


def test_summary_missing_identity_column_or_rows_is_an_error(tmp_path, summary_frame):
    path = tmp_path / "summary.csv"
    summary_frame.drop(columns=["method_key"]).to_csv(path, index=False)
    with pytest.raises(AnalysisError, match="method_key"):
        load_summary(path)
    summary_frame.iloc[:0].to_csv(path, index=False)
    with pytest.raises(AnalysisError, match="no rows"):
        load_summary(path)
    with pytest.raises(AnalysisError, match="does not exist"):
        load_summary(tmp_path / "absent.csv")


def test_new_baseline_shows_up_without_code_changes(summary_frame):
    extra = summary_frame[summary_frame["method_key"] == "adapters_64"].copy()
    extra["method_key"], extra["method"] = "bit_fit", "bitfit"
    table = table1_main(pd.concat([summary_frame, extra], ignore_index=True))
    assert "bit fit" in list(table.display["method"])


def test_incomplete_row_average_is_marked(summary_frame):
    partial = summary_frame[~((summary_frame["method_key"] == "adapters_64") & (summary_frame["task"] == "cola"))]
    table = table1_main(partial)
    cell = table.display.set_index("method").loc["adapters 64", "avg (w/o QNLI)"]
    assert cell.endswith("†")
    assert _ours(table).loc["adapters 64", "avg"] == pytest.approx((78 + 79 + 60) / 3)


def test_summarise_scores_common_seed_std():
    runs = pd.DataFrame({"row": ["a"] * 4, "seed": [0, 1, 0, 1],
                         "scores.x": [1.0, 3.0, np.nan, np.nan], "scores.y": [np.nan, np.nan, 5.0, 9.0]})
    stats = summarise_scores(runs, ["x", "y"], ["x", "y"]).iloc[0]
    assert stats["avg"] == pytest.approx((2.0 + 7.0) / 2)
    assert stats["avg_std"] == pytest.approx(np.std([(1 + 5) / 2, (3 + 9) / 2], ddof=1))
    assert format_mean_std(2.0, 1.0, 2) == "2.0 ± 1.0" and format_mean_std(np.nan) == ""
