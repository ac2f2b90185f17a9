"""The paper's claims, each tested on this run set: ``tables/claims.{csv,md}``, also the first
section of the run set's README.

One row per claim of Guo, Rush & Kim: the claim in one line, where the paper makes it (with
its BERT-large numbers), the test (which numbers are compared, with what tolerance), our
numbers, and a verdict: ``holds``, ``does not hold``, or ``not testable here`` together with
what the run set would need.

This module names each claim (the statement, where the paper makes it, the test) and renders
the table. The tests themselves are in ``claims_scores`` (claims 1-4, 6, 9 and 10: task
averages compared) and ``claims_structure`` (claims 5, 7 and 8: where the modified entries
sit), on the machinery they share in ``claims_evidence``.

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

import math
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from diffprune.analysis import reference
from diffprune.analysis.claims_evidence import FAILS, HOLDS, UNTESTABLE, Evidence, Outcome
from diffprune.analysis.claims_scores import (TOLERANCE_POINTS, claim_beats_last_layer_adapters_near_full,
                                              claim_order_every_rate, claim_projection_costs_little,
                                              claim_squad_at_least_full, claim_structured_near_full,
                                              claim_structured_rises_with_rate, claim_variant_order)
from diffprune.analysis.claims_structure import (DIFFERENT_PROFILES_POINTS, EMBEDDING_BARELY_RATIO,
                                                 PARTLY_CONSISTENT_SPEARMAN, claim_seed_profiles_consistent,
                                                 claim_structured_more_zero_groups,
                                                 claim_tasks_modify_different_layers)
from diffprune.analysis.render import Table
from diffprune.rungraph import rate_label


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
