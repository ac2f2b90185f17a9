"""The paper's tables 1-4 from ``summary.csv``, and ``TABLE_BUILDERS``: those and our cost
table (``cost_table``), in the order the ``tables`` verb writes them.

Each builder returns a :class:`~diffprune.analysis.render.Table`, raises :class:`Skipped` when
the run set has nothing the table is about (e.g. no SQuAD runs: no Table 4), and raises
:class:`~diffprune.analysis.runset.AnalysisError` naming the missing column when the runs it
needs are there but a field is not.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from diffprune.analysis import reference
from diffprune.analysis.cost_table import table5_cost
from diffprune.analysis.render import Table
from diffprune.analysis.runset import (FULL_FINETUNING, SQUAD_COLUMNS, TABLE1_AVERAGE_EXCLUDES, AnalysisError,
                                       column_title, diff_pruning_variant, display_name, final_runs,
                                       format_mean_std, format_percent, is_full_finetuning,
                                       require_columns, score_columns, summarise_scores)
from diffprune.rungraph import rate_label


class Skipped(Exception):
    """The run set has nothing this output is about; the message says what is absent."""


# ----------------------------------------------------------------------------- helpers

def _require_scores(summary: pd.DataFrame, prefix: str = "scores.") -> None:
    if not any(c.startswith(prefix) for c in summary.columns):
        raise AnalysisError(f"summary lacks {prefix}<column> columns (e.g. {prefix}rte): no scores to tabulate")


def _row_meta(runs: pd.DataFrame) -> pd.DataFrame:
    meta = runs.groupby("row", sort=False).agg(
        method_key=("method_key", "first"), method=("method", "first"),
        rate=("rate", "first"), row_rank=("row_rank", "first"))
    if "new_params_pct" in runs.columns:
        meta["new_params_pct"] = runs.groupby("row", sort=False)["new_params_pct"].mean()
    return meta.reset_index()


def _score_cells(stats: pd.Series, columns) -> list[str]:
    return [format_mean_std(stats[c], stats[f"{c}_std"], stats[f"{c}_n"]) for c in columns]


def _average_cell(stats: pd.Series) -> str:
    cell = format_mean_std(stats["avg"], stats["avg_std"], stats["avg_n"])
    if cell and stats["avg_tasks"] < stats["avg_tasks_total"]:
        cell += " †"
    return cell


INCOMPLETE_NOTE = "† average over only the columns this row has; not comparable with complete rows."
SEEDS_NOTE = "Cells with several seeds show mean ± sample std over seeds; the average's std is over per-seed averages."


def _numeric_frame(stats: pd.DataFrame, meta: pd.DataFrame, source: str) -> pd.DataFrame:
    frame = meta.merge(stats, on="row").sort_values("row_rank")
    frame.insert(0, "source", source)
    return frame.drop(columns=["row_rank"])


# ----------------------------------------------------------------------------- Table 1

def table1_main(summary: pd.DataFrame) -> Table:
    """Main results: one row per dense method and per projected method and rate (final,
    fixed-mask scores), GLUE columns in the paper's order, average without QNLI."""
    _require_scores(summary)
    require_columns(summary, ["new_params_pct"], "summary (Table 1's new params / task column)")
    runs = final_runs(summary)
    columns = score_columns(runs)
    if not columns:
        raise Skipped("no GLUE (non-SQuAD) score columns in the run set")
    runs = runs[runs[[f"scores.{c}" for c in columns]].notna().any(axis=1)]
    average_columns = [c for c in columns if c not in TABLE1_AVERAGE_EXCLUDES]
    stats = summarise_scores(runs, columns, average_columns)
    numeric = _numeric_frame(stats, _row_meta(runs), "ours")

    header = ["method", "new params / task"] + [column_title(c) for c in columns] + ["avg (w/o QNLI)"]
    cells = [[row["row"], format_percent(row["new_params_pct"])] + _score_cells(row, columns)
             + [_average_cell(row)] for _, row in numeric.iterrows()]
    ours = len(cells)
    rules = [ours]

    # The majority-class baseline the runner records: a method below it has not learned.
    majority = _majority_row(runs, columns, average_columns)
    if majority is not None:
        cells.append([majority["row"], ""] + _score_cells(majority, columns) + [_average_cell(majority)])
        numeric = pd.concat([numeric, pd.DataFrame([{"source": "majority class", **majority.to_dict()}])],
                            ignore_index=True)
        rules.append(len(cells))

    paper_rows = []
    for label, params, scores, average in reference.TABLE1_ROWS:
        cells.append([f"{reference.TABLE1_SOURCE}: {label}", format_percent(params)]
                     + [f"{scores[c]:.1f}" if c in scores else "" for c in columns] + [f"{average:.1f}"])
        paper_rows.append({"source": reference.TABLE1_SOURCE, "row": label, "new_params_pct": params,
                           **{c: scores.get(c, np.nan) for c in columns}, "avg": average})
    numeric = pd.concat([numeric, pd.DataFrame(paper_rows)], ignore_index=True)

    notes = ["The average leaves QNLI out, as the paper's Table 1 does (its QNLI test set changed "
             "between the adapter paper and this one).",
             f"Rows marked {reference.TABLE1_SOURCE} are the paper's BERT-large GLUE test-server "
             "numbers (average over 8 tasks); ours are dev-set scores of the configured model, "
             "averaged over the tasks this run set has.",
             "Projected methods: scores after projection and fixed-mask finetuning "
             "(their L0 / dense source phase is in Table 3).", SEEDS_NOTE]
    if (stats["avg_tasks"] < stats["avg_tasks_total"]).any():
        notes.append(INCOMPLETE_NOTE)
    return Table("table1_main", "Table 1: main results",
                 "Scores (%) per task and new parameters per task (% of the pretrained model).",
                 pd.DataFrame(cells, columns=header), numeric, notes, rule_before=rules)


MAJORITY_ROW = "majority class (dev)"


def _majority_row(runs: pd.DataFrame, columns, average_columns) -> pd.Series | None:
    present = [c for c in columns if f"majority_scores.{c}" in runs.columns]
    if not present or runs[[f"majority_scores.{c}" for c in present]].isna().all().all():
        return None
    # One value per task (it depends on the task's data, not on the method or seed).
    per_task = runs.drop_duplicates("task").assign(row=MAJORITY_ROW)
    return summarise_scores(per_task, columns, average_columns, "majority_scores.").iloc[0]


# ----------------------------------------------------------------------------- Table 2

def table2_structured_rates(summary: pd.DataFrame) -> Table:
    """Structured diff pruning at each target rate (rates ascending, one block per method key)
    and full finetuning last, average over every column (QNLI included, as in the paper's
    Table 2), with the paper's Table 2 averages beside ours."""
    _require_scores(summary)
    runs = final_runs(summary)
    variant = diff_pruning_variant(runs)
    structured = runs[(variant == "structured") & (runs["phase"] == "prune")]
    if structured.empty:
        raise Skipped("no structured diff pruning prune-phase runs (method diff_pruning with a "
                      "truthy structured flag)")
    full = runs[is_full_finetuning(runs)]
    # Every other dense method sits at its natural budget (its new parameters per task), so
    # the rates can be read against e.g. BitFit's 0.1% or adapters' ~1%.
    baselines = runs[(runs["phase"] == "train") & ~is_full_finetuning(runs)]
    selected = pd.concat([structured, baselines, full])
    columns = score_columns(selected)
    if not columns:
        raise Skipped("no GLUE (non-SQuAD) score columns for structured diff pruning")
    # GLUE runs only (a SQuAD run's head has another size: it would shift the budgets).
    selected = selected[selected[[f"scores.{c}" for c in columns]].notna().any(axis=1)]
    stats = summarise_scores(selected, columns, columns)
    meta = _row_meta(selected)
    is_baseline = meta["method_key"].isin(set(baselines["method_key"]))
    if "new_params_pct" not in meta.columns:
        meta["new_params_pct"] = np.nan
    # Rates first, then the baselines by budget, then full finetuning last, as in the paper.
    budget_rank = meta["new_params_pct"].rank(method="first").fillna(0)
    meta["row_rank"] = np.where(meta["method"] == FULL_FINETUNING, meta["row_rank"] + 20_000,
                                np.where(is_baseline, 10_000 + budget_rank, meta["row_rank"]))
    meta["natural_budget"] = is_baseline
    numeric = _numeric_frame(stats, meta, "ours")

    def paper_average(row) -> float:
        if row["method"] == FULL_FINETUNING:
            return reference.TABLE2_FULL_FINETUNING_AVERAGE
        for rate, average in reference.TABLE2_STRUCTURED_AVERAGE.items():
            if not math.isnan(row["rate"]) and math.isclose(rate, row["rate"]):
                return average
        return np.nan
    numeric["paper_avg"] = [paper_average(row) for _, row in numeric.iterrows()]

    header = (["method", "target rate"] + [column_title(c) for c in columns]
              + ["avg", f"{reference.TABLE2_SOURCE} avg"])
    def budget_cell(row) -> str:
        if row["method"] == FULL_FINETUNING:
            return "100%"
        if row["natural_budget"]:
            return f"({format_percent(row['new_params_pct'])})"
        return f"{rate_label(row['rate'])}%"

    cells = [[row["row"], budget_cell(row)]
             + _score_cells(row, columns) + [_average_cell(row),
                                             "" if math.isnan(row["paper_avg"]) else f"{row['paper_avg']:.1f}"]
             for _, row in numeric.iterrows()]
    notes = ["Structured diff pruning = method diff_pruning with the structured option on; scores "
             "after projection and fixed-mask finetuning.",
             "Rates in parentheses: the other methods at their natural budget (new parameters per "
             "task, % of the pretrained model), not a target they were pruned to.",
             "The average includes QNLI (all columns), as the paper's Table 2 does; the paper's "
             "averages are over all 9 GLUE dev columns with BERT-large.", SEEDS_NOTE]
    if (stats["avg_tasks"] < stats["avg_tasks_total"]).any():
        notes.append(INCOMPLETE_NOTE)
    first_full = [i for i, m in enumerate(numeric["method"]) if m == FULL_FINETUNING]
    first_baseline = [i for i, b in enumerate(numeric["natural_budget"]) if b]
    return Table("table2_structured_rates", "Table 2: structured diff pruning across target sparsity rates",
                 "Dev scores (%) per task at each target rate (% of pretrained parameters changed).",
                 pd.DataFrame(cells, columns=header), numeric, notes,
                 rule_before=first_baseline[:1] + first_full[:1])


# ----------------------------------------------------------------------------- Table 3

STAGE_SOURCE = "source (L0 / dense), before projection"
STAGE_SOURCE_NONZERO = "source nonzero diff (% of diffed params)"
STAGE_PROJECTED = "after projection, no finetuning"
STAGE_FINETUNED = "after projection + fixed-mask finetuning"


def table3_projection(summary: pd.DataFrame) -> Table:
    """Scores of projected methods before projection (the L0 / dense source run), right after
    magnitude projection onto the L0 ball, and after fixed-mask finetuning; plus, where the
    method has its own train-phase runs, the share of nonzero diff entries of the source."""
    prune = summary[summary["phase"] == "prune"]
    if prune.empty:
        raise Skipped("no prune-phase runs (no projected method)")
    for prefix in ("scores.", "before_finetune.scores.", "source_scores."):
        _require_scores(prune.dropna(axis=1, how="all"), prefix)
    columns = [c for c in score_columns(prune, include_squad=True)
               if any(f"{p}{c}" in prune.columns for p in ("before_finetune.scores.", "source_scores."))]
    average_columns = [c for c in columns if c not in SQUAD_COLUMNS]
    runs = final_runs(summary)
    runs = runs[runs["phase"] == "prune"]

    blocks = []
    for key in sorted(runs["method_key"].unique()):
        key_runs = runs[runs["method_key"] == key]
        # The source run is shared by every rate: count each (task, seed) once.
        sources = key_runs.drop_duplicates(subset=["task", "seed"]).assign(row=display_name(key))
        blocks.append((STAGE_SOURCE, summarise_scores(sources, columns, average_columns, "source_scores.")))
        density = _source_density(summary, key, columns)
        if density is not None:
            blocks.append((STAGE_SOURCE_NONZERO, density))
        for rate in sorted(key_runs["rate"].dropna().unique()):
            at_rate = key_runs[key_runs["rate"] == rate]
            blocks.append((STAGE_PROJECTED, summarise_scores(at_rate, columns, average_columns,
                                                             "before_finetune.scores.")))
            blocks.append((STAGE_FINETUNED, summarise_scores(at_rate, columns, average_columns)))

    header = ["method", "stage"] + [column_title(c) for c in columns] + ["avg"]
    cells, numeric, rules, previous_key = [], [], [], None
    for stage, stats in blocks:
        for _, row in stats.iterrows():
            key = row["row"].split(" @ ")[0]
            if previous_key is not None and key != previous_key:
                rules.append(len(cells))
            previous_key = key
            digits = 2 if stage == STAGE_SOURCE_NONZERO else 1
            cells.append([row["row"], stage]
                         + [format_mean_std(row[c], row[f"{c}_std"], row[f"{c}_n"], digits) for c in columns]
                         + [_average_cell(row) if stage != STAGE_SOURCE_NONZERO else ""])
            numeric.append({"stage": stage, **row.to_dict()})
    notes = ["The source row is the run each projection starts from (the L0 phase for adaptive diff "
             "pruning, the reused dense run for methods that reuse one); it is shared by all rates.",
             "The average covers every GLUE column (QNLI included) and leaves SQuAD out.", SEEDS_NOTE]
    return Table("table3_projection", "Table 3: effect of magnitude projection onto the L0 ball",
                 "Dev scores (%) before projection, right after it, and after fixed-mask finetuning.",
                 pd.DataFrame(cells, columns=header), pd.DataFrame(numeric), notes, rule_before=rules)


def _source_density(summary: pd.DataFrame, key: str, columns) -> pd.DataFrame | None:
    train = summary[(summary["method_key"] == key) & (summary["phase"] != "prune")]
    if train.empty or not {"nonzeros", "diffed_params"} <= set(summary.columns):
        return None
    share = 100.0 * pd.to_numeric(train["nonzeros"], errors="coerce") / pd.to_numeric(train["diffed_params"], errors="coerce")
    if share.isna().all():
        return None
    # Put the run's density under every score column its task reports (MNLI: both columns).
    frame = train[["seed"]].copy()
    for column in columns:
        scored = train[f"scores.{column}"].notna() if f"scores.{column}" in train.columns else False
        frame[f"density.{column}"] = share.where(scored)
    frame["row"] = display_name(key)
    return summarise_scores(frame, columns, [], "density.")


# ----------------------------------------------------------------------------- Table 4

def table4_squad(summary: pd.DataFrame) -> Table:
    """SQuAD v1.1 exact match and F1 per method (and rate), with the paper's F1 values."""
    runs = final_runs(summary)
    present = [c for c in SQUAD_COLUMNS if f"scores.{c}" in runs.columns]
    if not present or runs[[f"scores.{c}" for c in present]].isna().all().all():
        raise Skipped("no SQuAD runs (no scores.squad_em / scores.squad_f1)")
    require_columns(runs, [f"scores.{c}" for c in SQUAD_COLUMNS], "summary (Table 4)")
    runs = runs[runs[[f"scores.{c}" for c in SQUAD_COLUMNS]].notna().any(axis=1)]
    require_columns(runs, ["new_params_pct"], "summary (Table 4's new params / task column)")
    stats = summarise_scores(runs, SQUAD_COLUMNS, [])
    numeric = _numeric_frame(stats, _row_meta(runs), "ours").drop(
        columns=["avg", "avg_std", "avg_n", "avg_tasks", "avg_tasks_total"])
    header = ["method", "new params / task", "EM", "F1"]
    cells = [[row["row"], format_percent(row["new_params_pct"])] + _score_cells(row, SQUAD_COLUMNS)
             for _, row in numeric.iterrows()]
    ours = len(cells)
    paper = []
    for label, params, f1 in reference.TABLE4_ROWS:
        cells.append([f"{reference.TABLE4_SOURCE}: {label}", format_percent(params), "", f"{f1:.1f}"])
        paper.append({"source": reference.TABLE4_SOURCE, "row": label, "new_params_pct": params, "squad_f1": f1})
    numeric = pd.concat([numeric, pd.DataFrame(paper)], ignore_index=True)
    notes_on_data = sorted({str(n) for n in runs.get("dataset_note", pd.Series(dtype=object)).dropna() if str(n).strip()})
    caption = "Exact match and F1 (%) on SQuAD v1.1" + (f" ({'; '.join(notes_on_data)})" if notes_on_data else "") + "."
    notes = ["The paper's rows are BERT-large F1 on the official SQuAD v1.1 dev set.", SEEDS_NOTE]
    return Table("table4_squad", "Table 4: SQuAD v1.1", caption,
                 pd.DataFrame(cells, columns=header), numeric, notes, rule_before=[ours])


TABLE_BUILDERS = (table1_main, table2_structured_rates, table3_projection, table4_squad, table5_cost)
TABLE_NAMES = ("table1_main", "table2_structured_rates", "table3_projection", "table4_squad", "table5_cost")
