"""Table 5 (cost, ours): step time relative to full finetuning, peak memory, bytes stored per
task and the storage of N task models, from ``summary.csv``.

The paper has no such table; it rests on the cost fields the runner records for every run
(``seconds_per_step``, ``peak_memory_bytes``, ``bytes_per_task``) rather than on scores, and
raises :class:`~diffprune.analysis.runset.AnalysisError` naming them when they are missing.
Its serving counterpart (N tasks resident on one base) is ``serving_table``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from diffprune.analysis.render import Table
from diffprune.analysis.runset import (FULL_FINETUNING, display_name, final_runs, format_mean_std, format_percent,
                                       is_full_finetuning, require_columns)

PAPER_TASK_COUNT = 9  # GLUE tasks in the paper: the "N = 9" storage column of Table 5
COST_COLUMNS = ("seconds_per_step", "peak_memory_bytes", "bytes_per_task")
DIFF_VS_LIMIT = "diff_file.file_vs_limit"


def _cost_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Every run gets a cost row label: dense methods by key; projected methods split into
    their L0 / source phase (train runs) and one fixed-mask row per rate (prune runs)."""
    ranked = final_runs(summary)[["row", "row_rank", "method_key"]].drop_duplicates("row")
    rank_of_row = dict(zip(ranked["row"], ranked["row_rank"].astype(float)))
    first_rank_of_key = ranked.groupby("method_key")["row_rank"].min().astype(float).to_dict()
    projected = set(summary.loc[summary["phase"] == "prune", "method_key"])
    runs = summary.copy()
    labels, ranks = [], []
    for key, phase, rate in zip(runs["method_key"], runs["phase"], runs["rate"]):
        if key not in projected:
            label = display_name(key)
            rank = rank_of_row.get(label, np.inf)
        elif phase == "prune":
            label = f"{display_name(key, rate)} (fixed-mask phase)"
            rank = rank_of_row.get(display_name(key, rate), np.inf)
        else:
            label = f"{display_name(key)} (L0 / source phase)"
            # Just above the key's first rate row.
            rank = first_rank_of_key.get(key, np.inf) - 0.5
        labels.append(label)
        ranks.append(rank)
    runs["row"], runs["row_rank"] = labels, ranks
    return runs


def table5_cost(summary: pd.DataFrame) -> Table:
    """Cost per method: seconds per optimizer step relative to full finetuning on the same
    task (per-task ratio of mean step times, then mean ± std over tasks), peak memory, bytes
    stored per task, and the storage of N task models: one shared base plus N stored diffs
    (full finetuning: N full models), against N full models."""
    require_columns(summary, COST_COLUMNS, "summary (Table 5: cost)")
    runs = _cost_rows(summary)
    for column in COST_COLUMNS:
        runs[column] = pd.to_numeric(runs[column], errors="coerce")
    full = runs[is_full_finetuning(runs) & (runs["phase"] != "prune")]
    full_step = full.groupby("task")["seconds_per_step"].mean()
    notes = []
    if full.empty:
        notes.append("No full finetuning runs: step times relative to full finetuning cannot be given.")

    full_model_bytes = full["bytes_per_task"].mean() if not full.empty else np.nan
    if math.isnan(full_model_bytes) and "pretrained_params" in runs.columns:
        full_model_bytes = 4.0 * pd.to_numeric(runs["pretrained_params"], errors="coerce").mean()
        notes.append("Full model size taken as 4 bytes (fp32) x pretrained parameters (no full finetuning runs).")
    task_count = int(summary["task"].nunique())
    projected = set(summary.loc[summary["phase"] == "prune", "method_key"])
    counts = sorted({task_count, PAPER_TASK_COUNT})

    records = []
    for row, group in runs.groupby("row", sort=False):
        per_task = group.groupby("task")["seconds_per_step"].mean()
        ratios = (per_task / full_step.reindex(per_task.index)).dropna()
        stored = group["bytes_per_task"].mean()
        is_full = (group["method"] == FULL_FINETUNING).all()
        record = {"row": row, "row_rank": group["row_rank"].iloc[0],
                  "method_key": group["method_key"].iloc[0], "method": group["method"].iloc[0],
                  "phase": group["phase"].iloc[0], "rate": group["rate"].iloc[0],
                  "step_vs_full": ratios.mean() if len(ratios) else np.nan,
                  "step_vs_full_std": ratios.std(ddof=1) if len(ratios) > 1 else np.nan,
                  "step_vs_full_n": len(ratios),
                  "seconds_per_step": group["seconds_per_step"].mean(),
                  "peak_memory_mib": group["peak_memory_bytes"].mean() / 2**20,
                  "peak_memory_mib_std": group["peak_memory_bytes"].std(ddof=1) / 2**20 if len(group) > 1 else np.nan,
                  "peak_memory_mib_n": len(group),
                  "bytes_per_task": stored,
                  # The stored diff file against log2 C(d, k) / 8 + values + head (collect reads the files).
                  "stored_vs_limit": (pd.to_numeric(group[DIFF_VS_LIMIT], errors="coerce").mean()
                                      if DIFF_VS_LIMIT in group.columns else np.nan)}
        # A projected method's L0 / source phase stores only the dense hand-over to its prune
        # runs; what a task keeps is the projected diff, so N-task storage is left blank.
        is_source_phase = group["method_key"].iloc[0] in projected and (group["phase"] != "prune").all()
        for n in counts:
            total = np.nan if is_source_phase else (n * stored if is_full else full_model_bytes + n * stored)
            record[f"storage_{n}_tasks_bytes"] = total
            record[f"storage_{n}_tasks_vs_full_models"] = total / (n * full_model_bytes)
        records.append(record)
    numeric = pd.DataFrame.from_records(records).sort_values("row_rank").drop(columns=["row_rank"])

    header = ["method", "s / step (x full FT)", "s / step", "peak memory (MiB)", "stored / task (MB)",
              "stored / limit"]
    for n in counts:
        tasks = "task" if n == 1 else "tasks"
        header += [f"{n} {tasks} (MB)", f"{n} {tasks} / {n} full models"]
    cells = []
    for _, row in numeric.iterrows():
        line = [row["row"],
                format_mean_std(row["step_vs_full"], row["step_vs_full_std"], row["step_vs_full_n"], 2),
                f"{row['seconds_per_step']:.3g}",
                format_mean_std(row["peak_memory_mib"], row["peak_memory_mib_std"], row["peak_memory_mib_n"], 0),
                f"{row['bytes_per_task'] / 1e6:.3g}",
                "" if math.isnan(row["stored_vs_limit"]) else f"{row['stored_vs_limit']:.3f}x"]
        for n in counts:
            total = row[f"storage_{n}_tasks_bytes"]
            line += ["" if math.isnan(total) else f"{total / 1e6:.4g}",
                     format_percent(100 * row[f"storage_{n}_tasks_vs_full_models"])]
        cells.append(line)
    devices = sorted({str(d) for d in summary.get("device", pd.Series(dtype=object)).dropna()})
    notes += ["Step-time ratio: per task, mean seconds per optimizer step of the row over that of "
              "full finetuning; then mean ± std over tasks. The paper reports 1.5-2x for diff pruning's L0 phase.",
              f"Storage for N tasks: one shared pretrained base plus N stored task files (full "
              f"finetuning: N full models), against N full models; N = {task_count} is this run "
              f"set's task count, N = {PAPER_TASK_COUNT} the paper's GLUE tasks. MB = 10^6 bytes.",
              "Stored / limit: the diff file's bytes (header included) over log2 C(d, k) / 8 + k x the bytes "
              "of a stored value + the head's bytes (d diffed entries, k kept): 1.00x is the least any file can "
              "hold; version-3 files code positions with Elias-Fano.",
              "Peak memory: mean ± std over runs" + (f", measured on {', '.join(devices)}." if devices else ".")]
    return Table("table5_cost", "Table 5: cost per method (ours)",
                 "Training step time, peak memory and storage per task.",
                 pd.DataFrame(cells, columns=header), numeric, notes)
