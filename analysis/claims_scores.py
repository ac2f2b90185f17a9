"""Claims 1-4, 6, 9 and 10 of the claims table: task averages (SQuAD: F1) of rows of the run
set compared with each other, as the paper's Tables 1-4 and Figure 1 (left) compare them.
"""
from __future__ import annotations

import math

from diffprune.analysis.claims_evidence import (NONADAPTIVE, STRUCTURED, UNSTRUCTURED, VARIANT_NAMES, Evidence,
                                                Outcome, averages, columns_text, combine, compare_sign, judge,
                                                spread_note, untestable, with_notes)
from diffprune.analysis.runset import ADAPTERS, FULL_FINETUNING, LAST_LAYER, display_name
from diffprune.rungraph import rate_label

# "Within 1 point": the paper's own wording (claims 1, 4, 6 and 10).
TOLERANCE_POINTS = 1.0
PAPER_RATE = 0.5        # the rate of Table 1 and of Figures 1 right, 2 and 3
SQUAD_RATE = 1.0        # Table 4
SMALLEST_PAPER_RATE = 0.1


# ----------------------------------------------------------------------------- claims 1-4, 10

def claim_structured_near_full(ev: Evidence) -> Outcome:
    structured = ev.variant_runs(STRUCTURED, PAPER_RATE)
    full = ev.dense_runs(FULL_FINETUNING)
    need = [what for what, runs in (("structured diff pruning at 0.5%", structured),
                                    ("full finetuning", full)) if runs.empty]
    if need:
        return untestable("needs GLUE runs of " + " and of ".join(need))
    label = ev.label(STRUCTURED, PAPER_RATE)
    stats, common, left_out = averages([(label, structured, "scores."), ("full finetuning", full, "scores.")])
    if not common:
        return untestable("needs a GLUE task run by both structured diff pruning at 0.5% and full finetuning")
    difference = stats[label].mean - stats["full finetuning"].mean
    ours = with_notes(f"{label} {stats[label].text()} vs full finetuning {stats['full finetuning'].text()}: "
                       f"{difference:+.1f} points", spread_note(difference, stats.values()),
                       columns_text(common, left_out))
    return judge(difference >= -TOLERANCE_POINTS, ours)


def _ordering(ev: Evidence, rates: list[float]) -> tuple[dict, list[str], list[str]]:
    """Averages of the three variants at each rate, over the columns all of them have."""
    entries = [(f"{variant}@{rate_label(rate)}", ev.variant_runs(variant, rate), "scores.")
               for rate in rates for variant in (STRUCTURED, UNSTRUCTURED, NONADAPTIVE)]
    return averages(entries)


def _order_text(stats: dict, rate: float) -> tuple[bool, str, list[str]]:
    s, u, n = (stats[f"{v}@{rate_label(rate)}"] for v in (STRUCTURED, UNSTRUCTURED, NONADAPTIVE))
    holds = s.mean > u.mean > n.mean
    text = (f"{rate_label(rate)}%: structured {s.text()} {compare_sign(s.mean, u.mean)} unstructured "
            f"{u.text()} {compare_sign(u.mean, n.mean)} non-adaptive {n.text()}")
    notes = []
    for name, high, low in (("structured - unstructured", s, u), ("unstructured - non-adaptive", u, n)):
        note = spread_note(high.mean - low.mean, (high, low))
        if note:
            notes.append(f"{name}: {note}")
    return holds, text, notes


def _missing_variants(ev: Evidence, rate: float | None = None) -> list[str]:
    return [VARIANT_NAMES[v] for v in (STRUCTURED, UNSTRUCTURED, NONADAPTIVE)
            if ev.variant_runs(v, rate).empty]


def claim_variant_order(ev: Evidence) -> Outcome:
    missing = _missing_variants(ev, PAPER_RATE)
    if missing:
        return untestable("needs rate 0.5 for all three variants (structured, unstructured, non-adaptive); "
                           f"lacking: {', '.join(missing)}")
    stats, common, left_out = _ordering(ev, [PAPER_RATE])
    if not common:
        return untestable("needs a GLUE task run by all three variants at 0.5%")
    holds, text, notes = _order_text(stats, PAPER_RATE)
    return judge(holds, with_notes(text, *notes, columns_text(common, left_out)))


def claim_order_every_rate(ev: Evidence) -> Outcome:
    shared = sorted(set.intersection(*(set(ev.variant_rates(v)) for v in (STRUCTURED, UNSTRUCTURED, NONADAPTIVE))))
    has_smallest = any(math.isclose(r, SMALLEST_PAPER_RATE) for r in shared)
    if not has_smallest or len(shared) < 2:
        here = ", ".join(rate_label(r) for r in shared) or "none"
        lacking = _missing_variants(ev)
        return untestable("needs rate 0.1 and at least one larger rate for all three variants (structured, "
                           f"unstructured, non-adaptive); rates all three have here: {here}"
                           + (f"; no runs of {', '.join(lacking)}" if lacking else ""))
    stats, common, left_out = _ordering(ev, shared)
    if not common:
        return untestable("needs a GLUE task run by all three variants at every shared rate")
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
    ours = with_notes("; ".join(texts) + f"; {gap_text}", *spread_notes, columns_text(common, left_out))
    return judge(ordered and widest, ours)


def claim_structured_rises_with_rate(ev: Evidence) -> Outcome:
    rates = ev.variant_rates(STRUCTURED)
    full = ev.dense_runs(FULL_FINETUNING)
    if not any(math.isclose(r, 1.0) for r in rates) or len(rates) < 2 or full.empty:
        here = ", ".join(rate_label(r) for r in rates) or "none"
        return untestable("needs structured diff pruning at 1% and at least one smaller rate, and full "
                           f"finetuning (structured rates here: {here}"
                           f"{'' if not full.empty else '; no full finetuning'})")
    entries = [(rate_label(rate), ev.variant_runs(STRUCTURED, rate), "scores.") for rate in rates]
    stats, common, left_out = averages(entries + [("full", full, "scores.")])
    if not common:
        return untestable("needs a GLUE task run at every structured rate and by full finetuning")
    means = [stats[rate_label(rate)].mean for rate in rates]
    rises = all(later >= earlier for earlier, later in zip(means, means[1:]))
    at_one = stats[rate_label(1.0)]
    difference = at_one.mean - stats["full"].mean
    reaches = difference >= -TOLERANCE_POINTS
    ours = f"{rate_label(rates[0])}% {stats[rate_label(rates[0])].text()}"
    for earlier, later in zip(rates, rates[1:]):
        ours += (f" {compare_sign(stats[rate_label(earlier)].mean, stats[rate_label(later)].mean)} "
                 f"{rate_label(later)}% {stats[rate_label(later)].text()}")
    ours = with_notes(f"{ev.label(STRUCTURED)}: {ours} ({'rises' if rises else 'does not rise'} with the rate); "
                       f"at 1% vs full finetuning {stats['full'].text()}: {difference:+.1f} points",
                       spread_note(difference, (at_one, stats["full"])), columns_text(common, left_out))
    return judge(rises and reaches, ours)


def claim_beats_last_layer_adapters_near_full(ev: Evidence) -> Outcome:
    parts = []
    last_layer = ev.dense_runs(LAST_LAYER)
    variants = [v for v in (STRUCTURED, UNSTRUCTURED) if not ev.variant_runs(v, PAPER_RATE).empty]
    if last_layer.empty or not variants:
        parts.append(untestable("needs last-layer finetuning and adaptive diff pruning at 0.5%"))
    else:
        labels = {v: ev.label(v, PAPER_RATE) for v in variants}
        stats, common, left_out = averages([(labels[v], ev.variant_runs(v, PAPER_RATE), "scores.") for v in variants]
                                           + [("last layer", last_layer, "scores.")])
        if not common:
            parts.append(untestable("needs a GLUE task run by last layer and diff pruning at 0.5%"))
        else:
            base = stats["last layer"]
            beats = all(stats[labels[v]].mean > base.mean for v in variants)
            texts = [f"{labels[v]} {stats[labels[v]].text()} {compare_sign(stats[labels[v]].mean, base.mean)} "
                     f"last layer {base.text()}" for v in variants]
            notes = [spread_note(stats[labels[v]].mean - base.mean, (stats[labels[v]], base)) for v in variants]
            parts.append(judge(beats, with_notes("; ".join(texts), *notes, columns_text(common, left_out))))
    full = ev.dense_runs(FULL_FINETUNING)
    adapter_keys = ev.dense_keys(ADAPTERS)
    if full.empty or not adapter_keys:
        parts.append(untestable("needs adapters and full finetuning"))
    else:
        entries = [(display_name(k), ev.dense_runs(ADAPTERS, k), "scores.") for k in adapter_keys]
        stats, common, left_out = averages(entries + [("full finetuning", full, "scores.")])
        if not common:
            parts.append(untestable("needs a GLUE task run by adapters and full finetuning"))
        else:
            base = stats["full finetuning"]
            differences = {label: stats[label].mean - base.mean for label, _, _ in entries}
            near = all(d >= -TOLERANCE_POINTS for d in differences.values())
            texts = [f"{label} {stats[label].text()} vs full finetuning {base.text()}: {d:+.1f} points"
                     for label, d in differences.items()]
            notes = [spread_note(d, (stats[label], base)) for label, d in differences.items()]
            parts.append(judge(near, with_notes("; ".join(texts), *notes, columns_text(common, left_out))))
    return combine(parts)


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
            steps.append(with_notes(f"{rate_label(rate)}% {stats['before'].text()}{middle} -> "
                                     f"{stats['after'].text()} ({difference:+.1f})",
                                     spread_note(difference, stats.values())))
            columns_texts.add(columns_text(common, []))
        if steps:
            blocks.append(f"{ev.label(variant)}: " + ", ".join(steps))
    if not blocks:
        return untestable("needs adaptive diff pruning prune runs with GLUE scores before projection "
                           "(source_scores in metrics.json)")
    stages = ("before projection -> right after it -> after fixed-mask finetuning" if shows_projected
              else "before projection -> after fixed-mask finetuning")
    return judge(holds, f"{stages} (difference): " + "; ".join(blocks)
                  + f" ({' / '.join(sorted(columns_texts))})")


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
        return untestable("needs SQuAD runs of full finetuning and of diff pruning at 1%")
    stats, _, _ = averages([(label, runs, "scores.") for label, runs in variants.items()]
                           + [("full finetuning", full, "scores.")], columns=["squad_f1"])
    base = stats["full finetuning"]
    texts = [f"{label} F1 {stats[label].text()} {compare_sign(stats[label].mean, base.mean)} full finetuning "
             f"{base.text()}" for label in variants]
    notes = [spread_note(stats[label].mean - base.mean, (stats[label], base)) for label in variants]
    return judge(all(stats[label].mean >= base.mean for label in variants), with_notes("; ".join(texts), *notes))
