"""Claims 5, 7 and 8 of the claims table: where the modified entries sit, as the paper's
Figures 1 (right), 2 and 3 show it: groups left entirely zero (``groups_zero`` in
summary.csv) and per-layer profiles of the modified entries (layers.csv).
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np
import pandas as pd

from diffprune.analysis.claims_evidence import (STRUCTURED, UNSTRUCTURED, Evidence, Outcome, combine, judge,
                                                untestable, with_notes)
from diffprune.analysis.runset import chosen_rate, column_title, layer_counts
from diffprune.rungraph import rate_label

# Claim 7: tasks "modify different layers" when, on average over pairs of tasks, at least
# this many percentage points of the modified entries sit in other layers (half the L1
# distance between the two per-layer share profiles).
DIFFERENT_PROFILES_POINTS = 10.0
# Claim 7: the embeddings are "barely modified" when their density of modified entries is
# at most this fraction of the whole diff's density. A ratio, not a share of the modified
# entries, because the embeddings' size relative to the model differs by model (about 9% of
# BERT-large, half of MiniLM-L6).
EMBEDDING_BARELY_RATIO = 0.2
# Claim 8: "partly consistent" = mean pairwise Spearman correlation of the seeds' per-layer
# shares at least this.
PARTLY_CONSISTENT_SPEARMAN = 0.5
SEED_TASK = "sst2"      # Figure 3
# The head is trained densely by every method (stats.json counts it fully modified): it is
# not part of where a diff chooses to spend its budget, so the layer profiles leave it out.
HEAD_LAYER = "head"


# ----------------------------------------------------------------------------- claim 5: zero groups

def claim_structured_more_zero_groups(ev: Evidence) -> Outcome:
    selected = {v: ev.variant_runs(v) for v in (STRUCTURED, UNSTRUCTURED)}
    if any(runs.empty for runs in selected.values()):
        return untestable("needs prune runs of both structured and unstructured diff pruning")
    if "groups_zero" not in ev.runs.columns:
        return untestable("needs groups_zero in summary.csv (the runs' stats.json)")
    cells = {}
    for variant, runs in selected.items():
        zero = runs.assign(groups_zero=pd.to_numeric(runs["groups_zero"], errors="coerce"))
        zero = zero.dropna(subset=["groups_zero"])
        cells[variant] = zero.groupby(["task", "rate"])["groups_zero"].agg(["mean", "std", "size"])
    pairs = cells[STRUCTURED].index.intersection(cells[UNSTRUCTURED].index)
    if pairs.empty:
        return untestable("needs groups_zero of structured and unstructured runs on the same task and rate")
    structured, unstructured = cells[STRUCTURED].loc[pairs], cells[UNSTRUCTURED].loc[pairs]
    more = structured["mean"] > unstructured["mean"]
    total = ""
    if "groups_total" in ev.runs.columns:
        groups_total = pd.to_numeric(ev.runs["groups_total"], errors="coerce").dropna()
        total = f" of {int(groups_total.max())}" if len(groups_total) else ""
    ours = (f"structured leaves more groups entirely zero in {int(more.sum())} of {len(pairs)} (task, rate) pairs; "
            f"mean over the pairs: structured {structured['mean'].mean():.1f} vs unstructured "
            f"{unstructured['mean'].mean():.1f}{total} groups")
    several = (structured["size"] > 1) & (unstructured["size"] > 1)
    notes = []
    if several.any():
        spread = np.maximum(structured["std"], unstructured["std"])[several]
        beyond = ((structured["mean"] - unstructured["mean"]).abs()[several] > spread).sum()
        notes.append(f"difference exceeds the seed spread (larger std) in {int(beyond)} of {int(several.sum())} "
                     "pairs with several seeds")
    return judge(bool(more.all()), with_notes(ours, *notes))


# ----------------------------------------------------------------------------- claims 7, 8: layers

def _layer_profiles(ev: Evidence) -> tuple[pd.DataFrame, float | None, str]:
    """Per structured run at the chosen rate (0.5% when present) and layer other than the
    head: nonzero, numel and the share (%) of the run's modified entries in that layer.
    Returns (profiles, rate, what is missing when empty)."""
    runs = ev.variant_runs(STRUCTURED)
    if runs.empty:
        return pd.DataFrame(), None, "needs structured diff pruning prune runs"
    if ev.layers.empty or "nonzero" not in ev.layers.columns:
        return pd.DataFrame(), None, "needs layers.csv with per-layer nonzero counts (the runs' stats.json)"
    rate = chosen_rate(runs["rate"])
    counts = layer_counts(ev.layers, runs[np.isclose(runs["rate"].astype(float), rate)])
    counts = counts[counts["layer"].astype(str) != HEAD_LAYER]
    if counts.empty:
        return counts, rate, f"needs per-layer nonzero counts of structured diff pruning at {rate_label(rate)}%"
    counts = counts.assign(share_pct=100.0 * counts["nonzero"]
                           / counts.groupby("run_dir")["nonzero"].transform("sum").replace(0, np.nan))
    return counts, rate, ""


def _profile_matrix(profiles: pd.DataFrame, by: str) -> pd.DataFrame:
    """Rows: values of ``by`` (mean over the other runs); columns: layers; missing -> 0."""
    return profiles.pivot_table(index=by, columns="layer", values="share_pct", aggfunc="mean").fillna(0.0)


def _profile_distance(a: pd.Series, b: pd.Series) -> float:
    """Percentage points of the modified entries that sit in other layers (half L1)."""
    return 0.5 * float((a - b).abs().sum())


def _spearman(a: pd.Series, b: pd.Series) -> float:
    ranks_a, ranks_b = a.rank().to_numpy(), b.rank().to_numpy()
    if np.std(ranks_a) == 0 or np.std(ranks_b) == 0:
        return float("nan")
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def _mean_pairwise(matrix: pd.DataFrame, measure: Callable) -> float:
    values = [measure(matrix.loc[a], matrix.loc[b]) for a, b in itertools.combinations(matrix.index, 2)]
    return float(np.nanmean(values)) if values and not all(math.isnan(v) for v in values) else float("nan")


def claim_tasks_modify_different_layers(ev: Evidence) -> Outcome:
    profiles, rate, missing = _layer_profiles(ev)
    if profiles.empty:
        return untestable(missing)
    at = f"{ev.label(STRUCTURED, rate)}"
    by_task = _profile_matrix(profiles, "task")
    parts = []
    if len(by_task) < 2:
        parts.append(untestable(f"needs per-layer counts of {at} on at least 2 tasks"))
    else:
        between = _mean_pairwise(by_task, _profile_distance)
        top = ", ".join(f"{task} {row.idxmax()}" for task, row in by_task.iterrows())
        note = ""
        within = [_mean_pairwise(_profile_matrix(runs, "seed"), _profile_distance)
                  for _, runs in profiles.groupby("task") if runs["seed"].nunique() > 1]
        if within:
            across_seeds = float(np.mean(within))
            note = (f"{'exceeds' if between > across_seeds else 'is within'} the distance between seeds of "
                    f"one task ({across_seeds:.1f} points)")
        parts.append(judge(between >= DIFFERENT_PROFILES_POINTS,
                            with_notes(f"{at}: tasks' per-layer profiles differ by {between:.1f} points on average "
                                        f"over {len(by_task)} tasks; most-modified layer: {top}", note)))
    embeddings = profiles[profiles["layer"].astype(str) == "embeddings"]
    if (embeddings.empty or "numel" not in profiles.columns
            or pd.to_numeric(profiles["numel"], errors="coerce").isna().any()):
        parts.append(untestable("needs the embeddings' nonzero and numel counts in layers.csv"))
    else:
        numel = pd.to_numeric(profiles["numel"], errors="coerce")
        overall = profiles.assign(numel=numel).groupby("run_dir")[["nonzero", "numel"]].sum()
        emb = embeddings.assign(numel=pd.to_numeric(embeddings["numel"])).set_index("run_dir")
        ratio = (emb["nonzero"] / emb["numel"]) / (overall.loc[emb.index, "nonzero"] / overall.loc[emb.index, "numel"])
        per_task = ratio.groupby(emb["task"]).mean()
        share = emb.groupby("task")["share_pct"].mean()
        worst = per_task.idxmax()
        parts.append(judge(bool(per_task.max() <= EMBEDDING_BARELY_RATIO),
                            f"embeddings modified at {per_task.max():.2f}x the whole diff's density at most "
                            f"({worst}; {share[worst]:.1f}% of its modified entries)"))
    return combine(parts)


def claim_seed_profiles_consistent(ev: Evidence) -> Outcome:
    profiles, rate, missing = _layer_profiles(ev)
    if profiles.empty:
        return untestable(missing)
    seeds = profiles.groupby("task")["seed"].nunique()
    several = seeds[seeds > 1]
    if several.empty:
        return untestable(f"needs at least 2 seeds of {ev.label(STRUCTURED, rate)} on SST-2 "
                           "(or on another task), with per-layer counts")
    task = SEED_TASK if SEED_TASK in several.index else min(several.index, key=lambda t: (-several[t], t))
    by_seed = _profile_matrix(profiles[profiles["task"] == task], "seed")
    correlation = _mean_pairwise(by_seed, _spearman)
    tops = by_seed.idxmax(axis=1)
    top, agreeing = tops.mode().iloc[0], int((tops == tops.mode().iloc[0]).sum())
    holds = not math.isnan(correlation) and correlation >= PARTLY_CONSISTENT_SPEARMAN and agreeing == len(tops)
    where = column_title(task) + ("" if task == SEED_TASK else " (SST-2 has fewer than 2 seeds)")
    return judge(holds, f"{where}, {ev.label(STRUCTURED, rate)}, {len(by_seed)} seeds: mean pairwise Spearman "
                         f"{correlation:.2f} of the per-layer shares; most-modified layer {top} in {agreeing} of "
                         f"{len(tops)} seeds")
