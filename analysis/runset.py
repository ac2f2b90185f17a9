"""The run set as data frames: loading ``summary.csv`` / ``layers.csv``, choosing rows,
naming them, and aggregating scores over seeds.

Selection rules (the only places a method is recognised by name):

* full finetuning: ``method == "full_finetuning"``.
* structured diff pruning: ``method == "diff_pruning"`` and a truthy structured flag. The
  flag is read per run from the first of these columns that holds a value for that run:
  ``structured``, ``config.method_options.structured``, ``config.method.options.structured``
  (the last is where the runner records the method entry's options). No value anywhere
  counts as false.
* unstructured diff pruning: ``method == "diff_pruning"`` and the flag is not truthy.
* non-adaptive diff pruning, last layer, adapters (named only by the claims table, which
  tests the paper's statements about them): ``method`` equal to the registry names
  ``nonadaptive_diff_pruning``, ``last_layer``, ``adapters``.

Every other ``method_key`` is shown as it is, one row (or line) per key, with the display
name ``method_key`` with underscores turned into spaces; projected methods (those with
``phase == "prune"`` runs) get one row per rate, named ``"<key> @ <rate>%"``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from diffprune.layers import layer_rank
from diffprune.rungraph import rate_label

FULL_FINETUNING = "full_finetuning"
DIFF_PRUNING = "diff_pruning"
NONADAPTIVE_DIFF_PRUNING = "nonadaptive_diff_pruning"
LAST_LAYER = "last_layer"
ADAPTERS = "adapters"
STRUCTURED_FLAG_COLUMNS = ("structured", "config.method_options.structured", "config.method.options.structured")

# Table columns in the paper's order (Table 1); MNLI reports two columns.
GLUE_COLUMNS = ("qnli", "sst2", "mnli_m", "mnli_mm", "cola", "mrpc", "stsb", "rte", "qqp")
SQUAD_COLUMNS = ("squad_em", "squad_f1")
COLUMN_TITLES = {
    "qnli": "QNLI", "sst2": "SST-2", "mnli_m": "MNLI-m", "mnli_mm": "MNLI-mm", "cola": "CoLA",
    "mrpc": "MRPC", "stsb": "STS-B", "rte": "RTE", "qqp": "QQP",
    "squad_em": "SQuAD EM", "squad_f1": "SQuAD F1",
}
# Table 1's average leaves QNLI out: the paper's GLUE test set for QNLI changed between
# Houlsby et al. and this work, so the paper averages the other eight columns.
TABLE1_AVERAGE_EXCLUDES = ("qnli",)

SUMMARY_REQUIRED = ("run_dir", "task", "method_key", "method", "phase", "rate", "seed")
LAYERS_REQUIRED = ("run_dir", "task", "method_key", "method", "rate", "seed", "layer")


class AnalysisError(Exception):
    """A run set the analysis cannot turn into the requested output; the message says why."""


# ----------------------------------------------------------------------------- loading

def require_columns(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AnalysisError(f"{what} lacks column(s) {', '.join(missing)} "
                            f"(it has: {', '.join(map(str, frame.columns[:40]))}"
                            f"{', ...' if len(frame.columns) > 40 else ''})")


def load_summary(path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"summary file {path} does not exist; run `python -m diffprune.analysis collect` first")
    try:
        summary = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise AnalysisError(f"summary file {path} is empty: the run set has no runs") from None
    if summary.empty:
        raise AnalysisError(f"summary file {path} has no rows: the run set has no runs")
    require_columns(summary, SUMMARY_REQUIRED, f"summary {path}")
    summary["rate"] = pd.to_numeric(summary["rate"], errors="coerce")
    return summary


def load_layers(path) -> pd.DataFrame:
    """``layers.csv``; an absent path or a file with no rows gives an empty frame (the
    per-layer figures then skip with a note)."""
    if path is None or not Path(path).is_file():
        return pd.DataFrame(columns=list(LAYERS_REQUIRED))
    try:
        layers = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=list(LAYERS_REQUIRED))
    require_columns(layers, LAYERS_REQUIRED, f"layers file {path}")
    layers["rate"] = pd.to_numeric(layers["rate"], errors="coerce")
    return layers


# ----------------------------------------------------------------------------- selection

def truthy(values: pd.Series) -> pd.Series:
    """Booleans from a column read back from CSV: True/1/"true"/"yes" -> True, empty -> False."""
    def one(value) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1", "yes", "y", "on")
        return bool(value)
    return values.map(one).astype(bool)


def structured_flag(summary: pd.DataFrame) -> pd.Series:
    """Per run: the first structured flag column with a value (see the module docstring)."""
    flag = pd.Series(np.nan, index=summary.index, dtype=object)
    for column in reversed(STRUCTURED_FLAG_COLUMNS):  # earlier columns overwrite later ones
        if column in summary.columns:
            has_value = summary[column].notna() & (summary[column].astype(str).str.strip() != "")
            flag[has_value] = summary.loc[has_value, column]
    return truthy(flag)


def is_full_finetuning(frame: pd.DataFrame) -> pd.Series:
    return frame["method"] == FULL_FINETUNING


def diff_pruning_variant(summary: pd.DataFrame) -> pd.Series:
    """"structured" / "unstructured" for diff pruning runs, NaN for every other method."""
    is_dp = summary["method"] == DIFF_PRUNING
    flag = structured_flag(summary)
    variant = pd.Series(np.nan, index=summary.index, dtype=object)
    variant[is_dp & flag] = "structured"
    variant[is_dp & ~flag] = "unstructured"
    return variant


def projected_keys(summary: pd.DataFrame) -> list[str]:
    return sorted(summary.loc[summary["phase"] == "prune", "method_key"].unique())


def display_name(method_key: str, rate: float | None = None) -> str:
    name = str(method_key).replace("_", " ")
    if rate is not None and not (isinstance(rate, float) and math.isnan(rate)):
        name += f" @ {rate_label(rate)}%"
    return name


def final_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """The runs whose scores a method reports: prune-phase runs for projected methods (their
    train phase is only the L0 / dense source), train-phase runs for every other method.

    Adds ``row`` (display name; one per method key and rate) and ``row_rank`` (table order:
    full finetuning first, then other dense methods, then projected methods by key and
    rate). Rows within a table are then ``sort_values("row_rank")``.
    """
    projected = set(projected_keys(summary))
    keep = np.where(summary["method_key"].isin(projected), summary["phase"] == "prune",
                    summary["phase"] != "prune")
    runs = summary.loc[keep].copy()
    runs["row"] = [display_name(k, r if k in projected else None)
                   for k, r in zip(runs["method_key"], runs["rate"])]
    dense_keys = sorted(set(runs["method_key"]) - projected,
                        key=lambda k: (not (runs.loc[runs["method_key"] == k, "method"] == FULL_FINETUNING).any(), k))
    order: dict[str, tuple] = {}
    for position, key in enumerate(dense_keys):
        order[display_name(key)] = (0, position, 0.0)
    for position, key in enumerate(sorted(projected)):
        for rate in sorted(runs.loc[runs["method_key"] == key, "rate"].dropna().unique()):
            order[display_name(key, rate)] = (1, position, float(rate))
    ranks = {row: rank for rank, row in enumerate(sorted(order, key=order.get))}
    runs["row_rank"] = runs["row"].map(ranks)
    return runs


# ----------------------------------------------------------------------------- scores

def score_columns(frame: pd.DataFrame, prefix: str = "scores.", include_squad: bool = False) -> list[str]:
    """Score columns present (non-empty) under ``prefix``: GLUE in the paper's order, then any
    other task's columns alphabetically (a new task shows up without code changes)."""
    present = [c[len(prefix):] for c in frame.columns
               if c.startswith(prefix) and "." not in c[len(prefix):] and frame[c].notna().any()]
    glue = [c for c in GLUE_COLUMNS if c in present]
    squad = [c for c in SQUAD_COLUMNS if c in present] if include_squad else []
    others = sorted(c for c in present if c not in GLUE_COLUMNS and c not in SQUAD_COLUMNS)
    return glue + others + squad


def column_title(column: str) -> str:
    return COLUMN_TITLES.get(column, column)


def summarise_scores(runs: pd.DataFrame, columns, average_columns, prefix: str = "scores.",
                     by: str = "row") -> pd.DataFrame:
    """Mean, sample std (ddof=1) and count over seeds for each ``by`` group and column, and an
    average over ``average_columns``.

    The average is the mean of the per-column means the group has (``avg_tasks`` of
    ``avg_tasks_total`` columns; a group missing a column is marked in the tables). Its std
    is the std over seeds of per-seed averages, computed only from seeds that every
    averaged column of the group has, and only when there are at least two such seeds
    (otherwise NaN): that is the spread a reader would see re-running the whole row.
    """
    records = []
    for key, group in runs.groupby(by, sort=False):
        record = {by: key}
        for column in columns:
            values = pd.to_numeric(group.get(prefix + column), errors="coerce").dropna() \
                if prefix + column in group.columns else pd.Series(dtype=float)
            record[column] = values.mean() if len(values) else np.nan
            record[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
            record[f"{column}_n"] = len(values)
        averaged = [c for c in average_columns if record.get(f"{c}_n", 0) > 0]
        record["avg"] = float(np.mean([record[c] for c in averaged])) if averaged else np.nan
        record["avg_tasks"] = len(averaged)
        record["avg_tasks_total"] = len(average_columns)
        record["avg_std"], record["avg_n"] = _std_of_seed_averages(group, averaged, prefix)
        records.append(record)
    return pd.DataFrame.from_records(records)


def _std_of_seed_averages(group: pd.DataFrame, columns, prefix: str) -> tuple[float, int]:
    if not columns:
        return np.nan, 0
    per_seed = group.groupby("seed")[[prefix + c for c in columns]].mean(numeric_only=True)
    complete = per_seed.dropna()
    if len(complete) < 2:
        return np.nan, len(complete)
    return float(complete.mean(axis=1).std(ddof=1)), len(complete)


def format_mean_std(mean, std=np.nan, n: int = 1, digits: int = 1) -> str:
    """"m ± s" when there are several seeds, "m" otherwise, "" for a missing value."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if n and n > 1 and std is not None and not (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def format_percent(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}g}%"


def chosen_rate(rates, preferred: float = 0.5) -> float | None:
    """The paper's figures use 0.5%; take it when the run set has it, else the smallest rate."""
    rates = sorted({float(r) for r in rates if r == r})
    if not rates:
        return None
    return preferred if any(math.isclose(r, preferred) for r in rates) else rates[0]


def layer_counts(layers: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The layers.csv rows of ``runs`` (summary rows) with a numeric ``nonzero`` (rows without
    one dropped). Identity columns come from the summary: it knows the structured flag and
    the phase, layers.csv does not."""
    joined = layers.drop(columns=[c for c in ("task", "method_key", "method", "phase", "rate", "seed")
                                  if c in layers.columns]) \
        .merge(runs[["run_dir", "task", "method_key", "seed", "rate"]], on="run_dir")
    joined["nonzero"] = pd.to_numeric(joined["nonzero"], errors="coerce")
    return joined.dropna(subset=["nonzero"])


def ordered_layers(layers: pd.DataFrame) -> list[str]:
    """The layer labels of ``layers`` by the runs' own order (layers.csv's layer_index), else
    in ``diffprune.layers.layer_rank`` order."""
    labels = list(layers["layer"].dropna().astype(str).unique())
    if "layer_index" in layers.columns and layers["layer_index"].notna().all():
        index = layers.groupby("layer")["layer_index"].median()
        return sorted(labels, key=lambda label: (index.get(label, np.inf), layer_rank(label)))
    return sorted(labels, key=layer_rank)
