"""What every claim of the claims table is tested with: the run set's final runs selected by
diff pruning variant (``Evidence``), task averages of several rows over the columns they
all have (``averages``), the wording of our numbers (seed spreads, averaged columns), and a
claim's outcome: ``holds``, ``does not hold`` or ``not testable here`` (``Outcome``).

The conventions these implement are listed in ``claims`` (and in the table's notes).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from diffprune.analysis.runset import (NONADAPTIVE_DIFF_PRUNING, column_title, diff_pruning_variant, display_name,
                                       final_runs, format_mean_std, score_columns, summarise_scores)
from diffprune.rungraph import rate_label

HOLDS = "holds"
FAILS = "does not hold"
UNTESTABLE = "not testable here"

STRUCTURED, UNSTRUCTURED, NONADAPTIVE = "structured", "unstructured", "non-adaptive"
VARIANT_NAMES = {STRUCTURED: "structured diff pruning", UNSTRUCTURED: "diff pruning (unstructured)",
                 NONADAPTIVE: "non-adaptive diff pruning"}


# ----------------------------------------------------------------------------- outcomes

@dataclass
class Outcome:
    verdict: str
    ours: str = ""
    missing: str = ""   # what the run set lacks (verdict "not testable here" only)


def judge(holds: bool, ours: str) -> Outcome:
    return Outcome(HOLDS if holds else FAILS, ours)


def untestable(missing: str, ours: str = "") -> Outcome:
    return Outcome(UNTESTABLE, ours, missing)


def combine(parts: list[Outcome]) -> Outcome:
    """A claim of several parts: it fails when any part fails, is testable only when every
    part is, and holds when every part holds."""
    ours = "; ".join(p.ours for p in parts if p.ours)
    missing = "; ".join(p.missing for p in parts if p.verdict == UNTESTABLE)
    if any(p.verdict == FAILS for p in parts):
        # One failing part decides; say what the other part would have needed.
        return Outcome(FAILS, ours + (f"; other part not testable: {missing}" if missing else ""))
    if missing:
        return Outcome(UNTESTABLE, ours, missing)
    return Outcome(HOLDS, ours)


# ----------------------------------------------------------------------------- the run set

@dataclass
class Stat:
    """A row's task average: mean, std over seeds of per-seed averages, complete seeds."""
    mean: float
    std: float
    seeds: int

    def text(self) -> str:
        return format_mean_std(self.mean, self.std, self.seeds) + (f" ({self.seeds} seeds)" if self.seeds > 1 else "")


def _most_runs_key(runs: pd.DataFrame) -> str | None:
    if runs.empty:
        return None
    counts = runs.groupby("method_key").size()
    return min(counts.index, key=lambda key: (-counts[key], key))


class Evidence:
    """The final runs of a run set (plus layers.csv), with the selections the claims use."""

    def __init__(self, summary: pd.DataFrame, layers: pd.DataFrame):
        self.layers = layers
        runs = final_runs(summary)
        variant = diff_pruning_variant(runs)
        variant[runs["method"] == NONADAPTIVE_DIFF_PRUNING] = NONADAPTIVE
        self.runs = runs.assign(variant=variant)

    def variant_key(self, variant: str) -> str | None:
        runs = self.runs
        return _most_runs_key(runs[(runs["variant"] == variant) & (runs["phase"] == "prune")])

    def variant_runs(self, variant: str, rate: float | None = None) -> pd.DataFrame:
        key = self.variant_key(variant)
        runs = self.runs[(self.runs["method_key"] == key) & (self.runs["phase"] == "prune")]
        if rate is not None:
            runs = runs[np.isclose(runs["rate"].astype(float), rate)]
        return runs

    def variant_rates(self, variant: str) -> list[float]:
        return sorted(float(r) for r in self.variant_runs(variant)["rate"].dropna().unique())

    def dense_keys(self, method: str) -> list[str]:
        runs = self.runs[(self.runs["method"] == method) & (self.runs["phase"] != "prune")]
        return sorted(runs["method_key"].unique())

    def dense_runs(self, method: str, key: str | None = None) -> pd.DataFrame:
        runs = self.runs[(self.runs["method"] == method) & (self.runs["phase"] != "prune")]
        key = key if key is not None else _most_runs_key(runs)
        return runs[runs["method_key"] == key]

    def label(self, variant: str, rate: float | None = None) -> str:
        key = self.variant_key(variant)
        name = display_name(key) if key else VARIANT_NAMES[variant]
        return name + (f" @ {rate_label(rate)}%" if rate is not None else "")


def averages(entries: list[tuple[str, pd.DataFrame, str]],
             columns=None) -> tuple[dict[str, Stat], list[str], list[str]]:
    """Task averages of several rows over the columns they all have.

    ``entries``: (label, runs, score prefix). ``columns``: the candidate columns (default: the
    GLUE, non-SQuAD, columns). Returns ({label: Stat}, averaged columns, columns left out
    because some row lacks them); no averaged column gives ({}, [], left out)."""
    present = []
    for _, runs, prefix in entries:
        candidates = score_columns(runs, prefix) if columns is None else \
            [c for c in columns if prefix + c in runs.columns and runs[prefix + c].notna().any()]
        present.append(candidates)
    union = list(dict.fromkeys(itertools.chain.from_iterable(present)))
    common = [c for c in union if all(c in cols for cols in present)]
    left_out = [c for c in union if c not in common]
    if not common or any(runs.empty for _, runs, _ in entries):
        return {}, [], left_out
    stats = {}
    for label, runs, prefix in entries:
        record = summarise_scores(runs.assign(row=label), common, common, prefix).iloc[0]
        stats[label] = Stat(float(record["avg"]), float(record["avg_std"]), int(record["avg_n"]))
    return stats, common, left_out


def columns_text(common, left_out) -> str:
    text = "avg over " + ", ".join(map(column_title, common))
    if left_out:
        text += f"; left out, not run by every row: {', '.join(map(column_title, left_out))}"
    return text


def spread_note(difference: float, stats) -> str:
    """'difference +0.3 is within the seed spread (std 1.0)', or '' without several seeds."""
    spreads = [s.std for s in stats if s.seeds > 1 and not math.isnan(s.std)]
    if not spreads:
        return ""
    spread = max(spreads)
    word = "exceeds" if abs(difference) > spread else "is within"
    return f"difference {difference:+.1f} {word} the seed spread (std {spread:.1f})"


def with_notes(main: str, *notes: str) -> str:
    notes = [n for n in notes if n]
    return main + (f" ({'; '.join(notes)})" if notes else "")


def compare_sign(a: float, b: float) -> str:
    return ">" if a > b else ("=" if a == b else "<")
