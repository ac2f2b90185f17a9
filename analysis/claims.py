"""The paper's claims, each tested on this run set: ``tables/claims.{csv,md}``, also the first
section of the run set's README.

One row per claim of Guo, Rush & Kim: the claim in one line, where the paper makes it (with
its BERT-large numbers), the test (which numbers are compared, with what tolerance), our
numbers, and a verdict: ``holds``, ``does not hold``, or ``not testable here`` together with
what the run set would need.

Conventions every claim shares (they are repeated in the table's notes):

* Scores are those of the final runs (after projection and fixed-mask finetuning for
  projected methods); per score column the mean over seeds.
* A task average is the mean over the GLUE (non-SQuAD) score columns that *every* row of
  the comparison has, QNLI included (these are dev scores, not Table 1's test server).
* With several seeds, a row's spread is the std over seeds of its per-seed averages; each
  difference is said to be within or beyond the larger spread of the rows compared. The
  verdict itself compares means, as the paper does.
* A variant with several method keys (e.g. two structured entries) is tested on the key
  with the most runs, which the row names.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from diffprune.analysis import reference
from diffprune.analysis.render import Table
from diffprune.analysis.runset import (ADAPTERS, FULL_FINETUNING, LAST_LAYER, NONADAPTIVE_DIFF_PRUNING, chosen_rate,
                             column_title, diff_pruning_variant, display_name, final_runs, format_mean_std,
                             layer_counts, score_columns, summarise_scores)
from diffprune.rungraph import rate_label

HOLDS = "holds"
FAILS = "does not hold"
UNTESTABLE = "not testable here"

# "Within 1 point": the paper's own wording (claims 1, 4, 6 and 10).
TOLERANCE_POINTS = 1.0
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
PAPER_RATE = 0.5        # the rate of Table 1 and of Figures 1 right, 2 and 3
SQUAD_RATE = 1.0        # Table 4
SMALLEST_PAPER_RATE = 0.1
SEED_TASK = "sst2"      # Figure 3

STRUCTURED, UNSTRUCTURED, NONADAPTIVE = "structured", "unstructured", "non-adaptive"
VARIANT_NAMES = {STRUCTURED: "structured diff pruning", UNSTRUCTURED: "diff pruning (unstructured)",
                 NONADAPTIVE: "non-adaptive diff pruning"}
# The head is trained densely by every method (stats.json counts it fully modified): it is
# not part of where a diff chooses to spend its budget, so the layer profiles leave it out.
HEAD_LAYER = "head"


# ----------------------------------------------------------------------------- outcomes

@dataclass
class Outcome:
    verdict: str
    ours: str = ""
    missing: str = ""   # what the run set lacks (verdict "not testable here" only)


def _judge(holds: bool, ours: str) -> Outcome:
    return Outcome(HOLDS if holds else FAILS, ours)


def _untestable(missing: str, ours: str = "") -> Outcome:
    return Outcome(UNTESTABLE, ours, missing)


def _combine(parts: list[Outcome]) -> Outcome:
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


def _columns_text(common, left_out) -> str:
    text = "avg over " + ", ".join(map(column_title, common))
    if left_out:
        text += f"; left out, not run by every row: {', '.join(map(column_title, left_out))}"
    return text


def _spread_note(difference: float, stats) -> str:
    """'difference +0.3 is within the seed spread (std 1.0)', or '' without several seeds."""
    spreads = [s.std for s in stats if s.seeds > 1 and not math.isnan(s.std)]
    if not spreads:
        return ""
    spread = max(spreads)
    word = "exceeds" if abs(difference) > spread else "is within"
    return f"difference {difference:+.1f} {word} the seed spread (std {spread:.1f})"


def _with_notes(main: str, *notes: str) -> str:
    notes = [n for n in notes if n]
    return main + (f" ({'; '.join(notes)})" if notes else "")


def _compare_sign(a: float, b: float) -> str:
    return ">" if a > b else ("=" if a == b else "<")


# ----------------------------------------------------------------------------- claims 1-4, 10

def claim_structured_near_full(ev: Evidence) -> Outcome:
    structured = ev.variant_runs(STRUCTURED, PAPER_RATE)
    full = ev.dense_runs(FULL_FINETUNING)
    need = [what for what, runs in (("structured diff pruning at 0.5%", structured),
                                    ("full finetuning", full)) if runs.empty]
    if need:
        return _untestable("needs GLUE runs of " + " and of ".join(need))
    label = ev.label(STRUCTURED, PAPER_RATE)
    stats, common, left_out = averages([(label, structured, "scores."), ("full finetuning", full, "scores.")])
    if not common:
        return _untestable("needs a GLUE task run by both structured diff pruning at 0.5% and full finetuning")
    difference = stats[label].mean - stats["full finetuning"].mean
    ours = _with_notes(f"{label} {stats[label].text()} vs full finetuning {stats['full finetuning'].text()}: "
                       f"{difference:+.1f} points", _spread_note(difference, stats.values()),
                       _columns_text(common, left_out))
    return _judge(difference >= -TOLERANCE_POINTS, ours)


def _ordering(ev: Evidence, rates: list[float]) -> tuple[dict, list[str], list[str]]:
    """Averages of the three variants at each rate, over the columns all of them have."""
    entries = [(f"{variant}@{rate_label(rate)}", ev.variant_runs(variant, rate), "scores.")
               for rate in rates for variant in (STRUCTURED, UNSTRUCTURED, NONADAPTIVE)]
    return averages(entries)


def _order_text(stats: dict, rate: float) -> tuple[bool, str, list[str]]:
    s, u, n = (stats[f"{v}@{rate_label(rate)}"] for v in (STRUCTURED, UNSTRUCTURED, NONADAPTIVE))
    holds = s.mean > u.mean > n.mean
    text = (f"{rate_label(rate)}%: structured {s.text()} {_compare_sign(s.mean, u.mean)} unstructured "
            f"{u.text()} {_compare_sign(u.mean, n.mean)} non-adaptive {n.text()}")
    notes = []
    for name, high, low in (("structured - unstructured", s, u), ("unstructured - non-adaptive", u, n)):
        note = _spread_note(high.mean - low.mean, (high, low))
        if note:
            notes.append(f"{name}: {note}")
    return holds, text, notes


def _missing_variants(ev: Evidence, rate: float | None = None) -> list[str]:
    return [VARIANT_NAMES[v] for v in (STRUCTURED, UNSTRUCTURED, NONADAPTIVE)
            if ev.variant_runs(v, rate).empty]


def claim_variant_order(ev: Evidence) -> Outcome:
    missing = _missing_variants(ev, PAPER_RATE)
    if missing:
        return _untestable("needs rate 0.5 for all three variants (structured, unstructured, non-adaptive); "
                           f"lacking: {', '.join(missing)}")
    stats, common, left_out = _ordering(ev, [PAPER_RATE])
    if not common:
        return _untestable("needs a GLUE task run by all three variants at 0.5%")
    holds, text, notes = _order_text(stats, PAPER_RATE)
    return _judge(holds, _with_notes(text, *notes, _columns_text(common, left_out)))


def claim_order_every_rate(ev: Evidence) -> Outcome:
    shared = sorted(set.intersection(*(set(ev.variant_rates(v)) for v in (STRUCTURED, UNSTRUCTURED, NONADAPTIVE))))
    has_smallest = any(math.isclose(r, SMALLEST_PAPER_RATE) for r in shared)
    if not has_smallest or len(shared) < 2:
        here = ", ".join(rate_label(r) for r in shared) or "none"
        lacking = _missing_variants(ev)
        return _untestable("needs rate 0.1 and at least one larger rate for all three variants (structured, "
                           f"unstructured, non-adaptive); rates all three have here: {here}"
                           + (f"; no runs of {', '.join(lacking)}" if lacking else ""))
    stats, common, left_out = _ordering(ev, shared)
    if not common:
        return _untestable("needs a GLUE task run by all three variants at every shared rate")
    ordered, texts, spread_notes, gaps = True, [], [], {}
    for rate in shared:
        holds, text, notes = _order_text(stats, rate)
        ordered &= holds
        texts.append(text)
        spread_notes += [f"{rate_label(rate)}% {n}" for n in notes]
        gaps[rate] = stats[f"{STRUCTURED}@{rate_label(rate)}"].mean - stats[f"{NONADAPTIVE}@{rate_label(rate)}"].mean
    smallest = shared[0]
    widest = all(gaps[smallest] > gap for rate, gap in gaps.items() if rate != smallest)
    gap_text = ("gap structured - non-adaptive: " + ", ".join(f"{rate_label(r)}% {g:+.1f}" for r, g in gaps.items())
                + f" ({'widest' if widest else 'not widest'} at {rate_label(smallest)}%)")
    ours = _with_notes("; ".join(texts) + f"; {gap_text}", *spread_notes, _columns_text(common, left_out))
    return _judge(ordered and widest, ours)


def claim_structured_rises_with_rate(ev: Evidence) -> Outcome:
    rates = ev.variant_rates(STRUCTURED)
    full = ev.dense_runs(FULL_FINETUNING)
    if not any(math.isclose(r, 1.0) for r in rates) or len(rates) < 2 or full.empty:
        here = ", ".join(rate_label(r) for r in rates) or "none"
        return _untestable("needs structured diff pruning at 1% and at least one smaller rate, and full "
                           f"finetuning (structured rates here: {here}"
                           f"{'' if not full.empty else '; no full finetuning'})")
    entries = [(rate_label(rate), ev.variant_runs(STRUCTURED, rate), "scores.") for rate in rates]
    stats, common, left_out = averages(entries + [("full", full, "scores.")])
    if not common:
        return _untestable("needs a GLUE task run at every structured rate and by full finetuning")
    means = [stats[rate_label(rate)].mean for rate in rates]
    rises = all(later >= earlier for earlier, later in zip(means, means[1:]))
    at_one = stats[rate_label(1.0)]
    difference = at_one.mean - stats["full"].mean
    reaches = difference >= -TOLERANCE_POINTS
    ours = f"{rate_label(rates[0])}% {stats[rate_label(rates[0])].text()}"
    for earlier, later in zip(rates, rates[1:]):
        ours += (f" {_compare_sign(stats[rate_label(earlier)].mean, stats[rate_label(later)].mean)} "
                 f"{rate_label(later)}% {stats[rate_label(later)].text()}")
    ours = _with_notes(f"{ev.label(STRUCTURED)}: {ours} ({'rises' if rises else 'does not rise'} with the rate); "
                       f"at 1% vs full finetuning {stats['full'].text()}: {difference:+.1f} points",
                       _spread_note(difference, (at_one, stats["full"])), _columns_text(common, left_out))
    return _judge(rises and reaches, ours)


def claim_beats_last_layer_adapters_near_full(ev: Evidence) -> Outcome:
    parts = []
    last_layer = ev.dense_runs(LAST_LAYER)
    variants = [v for v in (STRUCTURED, UNSTRUCTURED) if not ev.variant_runs(v, PAPER_RATE).empty]
    if last_layer.empty or not variants:
        parts.append(_untestable("needs last-layer finetuning and adaptive diff pruning at 0.5%"))
    else:
        labels = {v: ev.label(v, PAPER_RATE) for v in variants}
        stats, common, left_out = averages([(labels[v], ev.variant_runs(v, PAPER_RATE), "scores.") for v in variants]
                                           + [("last layer", last_layer, "scores.")])
        if not common:
            parts.append(_untestable("needs a GLUE task run by last layer and diff pruning at 0.5%"))
        else:
            base = stats["last layer"]
            beats = all(stats[labels[v]].mean > base.mean for v in variants)
            texts = [f"{labels[v]} {stats[labels[v]].text()} {_compare_sign(stats[labels[v]].mean, base.mean)} "
                     f"last layer {base.text()}" for v in variants]
            notes = [_spread_note(stats[labels[v]].mean - base.mean, (stats[labels[v]], base)) for v in variants]
            parts.append(_judge(beats, _with_notes("; ".join(texts), *notes, _columns_text(common, left_out))))
    full = ev.dense_runs(FULL_FINETUNING)
    adapter_keys = ev.dense_keys(ADAPTERS)
    if full.empty or not adapter_keys:
        parts.append(_untestable("needs adapters and full finetuning"))
    else:
        entries = [(display_name(k), ev.dense_runs(ADAPTERS, k), "scores.") for k in adapter_keys]
        stats, common, left_out = averages(entries + [("full finetuning", full, "scores.")])
        if not common:
            parts.append(_untestable("needs a GLUE task run by adapters and full finetuning"))
        else:
            base = stats["full finetuning"]
            differences = {label: stats[label].mean - base.mean for label, _, _ in entries}
            near = all(d >= -TOLERANCE_POINTS for d in differences.values())
            texts = [f"{label} {stats[label].text()} vs full finetuning {base.text()}: {d:+.1f} points"
                     for label, d in differences.items()]
            notes = [_spread_note(d, (stats[label], base)) for label, d in differences.items()]
            parts.append(_judge(near, _with_notes("; ".join(texts), *notes, _columns_text(common, left_out))))
    return _combine(parts)


# ----------------------------------------------------------------------------- claim 5: zero groups

def claim_structured_more_zero_groups(ev: Evidence) -> Outcome:
    selected = {v: ev.variant_runs(v) for v in (STRUCTURED, UNSTRUCTURED)}
    if any(runs.empty for runs in selected.values()):
        return _untestable("needs prune runs of both structured and unstructured diff pruning")
    if "groups_zero" not in ev.runs.columns:
        return _untestable("needs groups_zero in summary.csv (the runs' stats.json)")
    cells = {}
    for variant, runs in selected.items():
        zero = runs.assign(groups_zero=pd.to_numeric(runs["groups_zero"], errors="coerce"))
        zero = zero.dropna(subset=["groups_zero"])
        cells[variant] = zero.groupby(["task", "rate"])["groups_zero"].agg(["mean", "std", "size"])
    pairs = cells[STRUCTURED].index.intersection(cells[UNSTRUCTURED].index)
    if pairs.empty:
        return _untestable("needs groups_zero of structured and unstructured runs on the same task and rate")
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
    return _judge(bool(more.all()), _with_notes(ours, *notes))


# ----------------------------------------------------------------------------- claim 6: projection

def claim_projection_costs_little(ev: Evidence) -> Outcome:
    blocks, columns_texts, holds, shows_projected = [], set(), True, False
    for variant in (STRUCTURED, UNSTRUCTURED):
        steps = []
        for rate in ev.variant_rates(variant):
            runs = ev.variant_runs(variant, rate)
            # Paired: the same runs' scores before projection (their source) and after.
            stats, common, _ = averages([("after", runs, "scores."), ("before", runs, "source_scores.")])
            if not common:
                continue
            difference = stats["after"].mean - stats["before"].mean
            holds &= difference >= -TOLERANCE_POINTS
            projected, projected_common, _ = averages([("projected", runs, "before_finetune.scores.")], common)
            middle = f" -> {projected['projected'].text()}" if projected_common == common else ""
            shows_projected |= bool(middle)
            steps.append(_with_notes(f"{rate_label(rate)}% {stats['before'].text()}{middle} -> "
                                     f"{stats['after'].text()} ({difference:+.1f})",
                                     _spread_note(difference, stats.values())))
            columns_texts.add(_columns_text(common, []))
        if steps:
            blocks.append(f"{ev.label(variant)}: " + ", ".join(steps))
    if not blocks:
        return _untestable("needs adaptive diff pruning prune runs with GLUE scores before projection "
                           "(source_scores in metrics.json)")
    stages = ("before projection -> right after it -> after fixed-mask finetuning" if shows_projected
              else "before projection -> after fixed-mask finetuning")
    return _judge(holds, f"{stages} (difference): " + "; ".join(blocks)
                  + f" ({' / '.join(sorted(columns_texts))})")


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
        return _untestable(missing)
    at = f"{ev.label(STRUCTURED, rate)}"
    by_task = _profile_matrix(profiles, "task")
    parts = []
    if len(by_task) < 2:
        parts.append(_untestable(f"needs per-layer counts of {at} on at least 2 tasks"))
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
        parts.append(_judge(between >= DIFFERENT_PROFILES_POINTS,
                            _with_notes(f"{at}: tasks' per-layer profiles differ by {between:.1f} points on average "
                                        f"over {len(by_task)} tasks; most-modified layer: {top}", note)))
    embeddings = profiles[profiles["layer"].astype(str) == "embeddings"]
    if (embeddings.empty or "numel" not in profiles.columns
            or pd.to_numeric(profiles["numel"], errors="coerce").isna().any()):
        parts.append(_untestable("needs the embeddings' nonzero and numel counts in layers.csv"))
    else:
        numel = pd.to_numeric(profiles["numel"], errors="coerce")
        overall = profiles.assign(numel=numel).groupby("run_dir")[["nonzero", "numel"]].sum()
        emb = embeddings.assign(numel=pd.to_numeric(embeddings["numel"])).set_index("run_dir")
        ratio = (emb["nonzero"] / emb["numel"]) / (overall.loc[emb.index, "nonzero"] / overall.loc[emb.index, "numel"])
        per_task = ratio.groupby(emb["task"]).mean()
        share = emb.groupby("task")["share_pct"].mean()
        worst = per_task.idxmax()
        parts.append(_judge(bool(per_task.max() <= EMBEDDING_BARELY_RATIO),
                            f"embeddings modified at {per_task.max():.2f}x the whole diff's density at most "
                            f"({worst}; {share[worst]:.1f}% of its modified entries)"))
    return _combine(parts)


def claim_seed_profiles_consistent(ev: Evidence) -> Outcome:
    profiles, rate, missing = _layer_profiles(ev)
    if profiles.empty:
        return _untestable(missing)
    seeds = profiles.groupby("task")["seed"].nunique()
    several = seeds[seeds > 1]
    if several.empty:
        return _untestable(f"needs at least 2 seeds of {ev.label(STRUCTURED, rate)} on SST-2 "
                           "(or on another task), with per-layer counts")
    task = SEED_TASK if SEED_TASK in several.index else min(several.index, key=lambda t: (-several[t], t))
    by_seed = _profile_matrix(profiles[profiles["task"] == task], "seed")
    correlation = _mean_pairwise(by_seed, _spearman)
    tops = by_seed.idxmax(axis=1)
    top, agreeing = tops.mode().iloc[0], int((tops == tops.mode().iloc[0]).sum())
    holds = not math.isnan(correlation) and correlation >= PARTLY_CONSISTENT_SPEARMAN and agreeing == len(tops)
    where = column_title(task) + ("" if task == SEED_TASK else " (SST-2 has fewer than 2 seeds)")
    return _judge(holds, f"{where}, {ev.label(STRUCTURED, rate)}, {len(by_seed)} seeds: mean pairwise Spearman "
                         f"{correlation:.2f} of the per-layer shares; most-modified layer {top} in {agreeing} of "
                         f"{len(tops)} seeds")


# ----------------------------------------------------------------------------- claim 9: SQuAD

def claim_squad_at_least_full(ev: Evidence) -> Outcome:
    full = ev.dense_runs(FULL_FINETUNING)
    full = full[full["scores.squad_f1"].notna()] if "scores.squad_f1" in full.columns else full.iloc[0:0]
    variants = {}
    for variant in (STRUCTURED, UNSTRUCTURED):
        runs = ev.variant_runs(variant, SQUAD_RATE)
        if "scores.squad_f1" in runs.columns and runs["scores.squad_f1"].notna().any():
            variants[ev.label(variant, SQUAD_RATE)] = runs
    if full.empty or not variants:
        return _untestable("needs SQuAD runs of full finetuning and of diff pruning at 1%")
    stats, _, _ = averages([(label, runs, "scores.") for label, runs in variants.items()]
                           + [("full finetuning", full, "scores.")], columns=["squad_f1"])
    base = stats["full finetuning"]
    texts = [f"{label} F1 {stats[label].text()} {_compare_sign(stats[label].mean, base.mean)} full finetuning "
             f"{base.text()}" for label in variants]
    notes = [_spread_note(stats[label].mean - base.mean, (stats[label], base)) for label in variants]
    return _judge(all(stats[label].mean >= base.mean for label in variants), _with_notes("; ".join(texts), *notes))


# ----------------------------------------------------------------------------- the table

def _paper_table1(label: str, params: float) -> float:
    return next(avg for name, pct, _, avg in reference.TABLE1_ROWS if name == label and math.isclose(pct, params))


def _paper_table4(label: str) -> float:
    return next(f1 for name, _, f1 in reference.TABLE4_ROWS if name == label)


@dataclass(frozen=True)
class Claim:
    number: int
    text: str
    where: str
    test: str
    check: Callable[[Evidence], Outcome]


def _claims() -> tuple[Claim, ...]:
    t1 = reference.TABLE1_SOURCE
    full = _paper_table1("full finetuning (this work)", 100.0)
    structured = _paper_table1("structured diff pruning", 0.5)
    unstructured, nonadaptive = _paper_table1("diff pruning", 0.5), _paper_table1("non-adaptive diff pruning", 0.5)
    table2 = " / ".join(f"{v:.1f}" for v in reference.TABLE2_STRUCTURED_AVERAGE.values())
    table2_rates = " / ".join(rate_label(r) for r in reference.TABLE2_STRUCTURED_AVERAGE)
    tol = f"{TOLERANCE_POINTS:g} point"
    return (
        Claim(1, "Structured diff pruning at 0.5% is within 1 point of full finetuning on the task average.",
              f"Table 1, {t1}: structured 0.5% {structured:.1f} vs full finetuning {full:.1f}",
              f"task average of structured diff pruning at 0.5% >= full finetuning's - {tol}",
              claim_structured_near_full),
        Claim(2, "At 0.5%: structured > unstructured > non-adaptive diff pruning (average).",
              f"Table 1, {t1}: {structured:.1f} > {unstructured:.1f} > {nonadaptive:.1f}",
              "task averages at 0.5%, strictly ordered (means)", claim_variant_order),
        Claim(3, "The ordering holds at every rate and the gap to non-adaptive widens as the rate shrinks "
                 "(0.1% widest).",
              "Figure 1 (left), BERT-large GLUE",
              "ordering of task averages at every rate all three variants have (0.1% among them); gap "
              "structured - non-adaptive largest at the smallest rate", claim_order_every_rate),
        Claim(4, "The structured average rises with the rate and reaches full finetuning at 1%.",
              f"Table 2, {reference.TABLE2_SOURCE}: {table2} at {table2_rates}%; full finetuning "
              f"{reference.TABLE2_FULL_FINETUNING_AVERAGE:.1f}",
              f"task average non-decreasing from each rate to the next; at 1% >= full finetuning's - {tol}",
              claim_structured_rises_with_rate),
        Claim(5, "Structured diff pruning leaves more groups entirely zero than unstructured.",
              f"Figure 1 (right), BERT-large ({reference.BERT_LARGE_GROUPS} groups)",
              "mean groups_zero over seeds, structured > unstructured on every (task, rate) both ran",
              claim_structured_more_zero_groups),
        Claim(6, "Magnitude projection costs little once the fixed-mask phase has run.",
              "Table 3, BERT-large GLUE dev",
              f"per adaptive variant and rate: task average after fixed-mask finetuning >= before projection "
              f"(the L0 phase's scores) - {tol}", claim_projection_costs_little),
        Claim(7, "Tasks modify different layers; the embedding layer is barely modified.",
              "Figure 2, BERT-large, structured 0.5%",
              f"per-layer shares of the modified entries (head left out) differ between tasks by >= "
              f"{DIFFERENT_PROFILES_POINTS:g} points on average (half L1 distance); embeddings' density of "
              f"modified entries <= {EMBEDDING_BARELY_RATIO:g}x the whole diff's, on every task",
              claim_tasks_modify_different_layers),
        Claim(8, "Across SST-2 seeds the per-layer profile is partly consistent.",
              "Figure 3, 5 SST-2 runs (the first layer is modified most in each)",
              f"mean pairwise Spearman correlation of the seeds' per-layer shares >= "
              f"{PARTLY_CONSISTENT_SPEARMAN:g}, and the same most-modified layer in every seed",
              claim_seed_profiles_consistent),
        Claim(9, "On SQuAD, diff pruning at 1% is at least full finetuning's F1.",
              f"Table 4, {reference.TABLE4_SOURCE}: diff pruning 1% {_paper_table4('diff pruning'):.1f}, "
              f"structured 1% {_paper_table4('structured diff pruning'):.1f} vs full finetuning "
              f"{_paper_table4('full finetuning'):.1f}",
              "SQuAD F1 (mean over seeds) of each diff pruning variant at 1% >= full finetuning's",
              claim_squad_at_least_full),
        Claim(10, "Diff pruning at 0.5% beats last-layer finetuning; adapters come within 1 point of full "
                  "finetuning.",
              f"Table 1, {t1}: diff pruning 0.5% {unstructured:.1f} / structured {structured:.1f} vs last layer "
              f"{_paper_table1('last layer', 3.8):.1f}; adapters {_paper_table1('adapters (Houlsby et al.)', 3.6):.1f} "
              f"(3.6%) / {_paper_table1('adapters (Houlsby et al.)', 2.1):.1f} (2.1%) vs full finetuning {full:.1f}",
              f"task average of each adaptive variant at 0.5% > last layer's; of each adapters entry >= "
              f"full finetuning's - {tol}", claim_beats_last_layer_adapters_near_full),
    )


CLAIMS = _claims()


def _verdict_cell(outcome: Outcome) -> str:
    return f"**{outcome.verdict}**" + (f": {outcome.missing}" if outcome.missing else "")


def claims_table(summary: pd.DataFrame, layers: pd.DataFrame) -> Table:
    """The claims table: never skipped (a run set without the runs a claim needs says so in
    that claim's verdict)."""
    evidence = Evidence(summary, layers)
    records = []
    for claim in CLAIMS:
        outcome = claim.check(evidence)
        records.append({"claim": claim.number, "statement": claim.text, "where": claim.where, "test": claim.test,
                        "ours": outcome.ours, "verdict": outcome.verdict, "missing": outcome.missing})
    numeric = pd.DataFrame.from_records(records)
    display = pd.DataFrame({"#": numeric["claim"], "claim": numeric["statement"],
                            "where in the paper": numeric["where"], "test": numeric["test"],
                            "our numbers": numeric["ours"],
                            "verdict": [_verdict_cell(Outcome(v, o, m)) for v, o, m in
                                        zip(numeric["verdict"], numeric["ours"], numeric["missing"])]})
    counts = numeric["verdict"].value_counts()
    models = sorted({str(m) for m in summary.get("model_id", pd.Series(dtype=object)).dropna()})
    caption = (f"Verdicts: {counts.get(HOLDS, 0)} hold, {counts.get(FAILS, 0)} do not hold, {counts.get(UNTESTABLE, 0)} "
               f"not testable here. Our numbers are dev scores (%) of {', '.join(models) or 'the configured model'}, "
               f"the paper's are {reference.PAPER_MODEL}.")
    notes = ["Scores: final runs (projected methods after projection and fixed-mask finetuning), per column the mean "
             "over seeds. A task average is the mean over the GLUE dev columns (SQuAD apart) that every row of the "
             "comparison has, QNLI included.",
             "Seeds: mean ± std over seeds where there are several; the std is over per-seed averages, and each "
             "difference is said to be within or beyond the larger std of the rows compared. Verdicts compare "
             "means, as the paper does; a difference within the seed spread is not resolved by these seeds.",
             "Tolerances: 'within 1 point' is the paper's wording; an ordering ('>') is of means, without "
             "tolerance. A variant with several method keys is tested on the key with the most runs.",
             "A claim of two parts holds when both do, does not hold when either does not, and is otherwise "
             "not testable."]
    return Table("claims", "The paper's claims, tested on this run set", caption, display, numeric, notes,
                 formats=("csv", "md"), prose=True)
