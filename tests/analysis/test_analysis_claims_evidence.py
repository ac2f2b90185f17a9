"""What the claims share, seen through the claims table on the paper-shaped run set: a claim
of two parts, seed spreads, and the choice among several method keys of one variant."""
from __future__ import annotations

import pandas as pd

from claims_setup import paper_shaped, verdicts
from diffprune.analysis.claims_evidence import FAILS, HOLDS


def test_a_failing_part_decides_a_two_part_claim(tmp_path):
    # adapters fail (part 2), last layer is absent (part 1 untestable): the claim does not hold
    summary = paper_shaped({("adapters_64", None): -1.5})
    claims = verdicts(tmp_path, summary[summary["method_key"] != "last_layer"])
    assert claims.loc[10, "verdict"] == FAILS
    assert "other part not testable: needs last-layer finetuning" in claims.loc[10, "ours"]


def _sst2_only(offsets=None) -> pd.DataFrame:
    summary = paper_shaped(offsets)
    return summary[summary["task"] == "sst2"]


def test_seed_spread_within(tmp_path):
    # Three seeds; every row's per-seed averages 0, 1, 2 above its mean: std 1.0.
    claim = verdicts(tmp_path, _sst2_only()).loc[1]
    assert claim["verdict"] == HOLDS
    assert "91.0 ± 1.0 (3 seeds)" in claim["ours"]
    assert "difference -0.2 is within the seed spread (std 1.0)" in claim["ours"]


def test_seed_spread_exceeded(tmp_path):
    claim = verdicts(tmp_path, _sst2_only({("structured_diff_pruning", 0.5): -1.5})).loc[1]
    assert claim["verdict"] == FAILS
    assert "difference -1.5 exceeds the seed spread (std 1.0)" in claim["ours"]


def test_variant_with_several_keys_is_tested_on_the_key_with_most_runs(tmp_path):
    summary = paper_shaped()
    # A second structured entry with one poor run: not the one the claims test.
    extra = summary[(summary["method_key"] == "structured_diff_pruning") & (summary["rate"] == 0.5)].iloc[:1].copy()
    extra["method_key"], extra["run_dir"], extra["scores.sst2"] = "structured_tiny", "sst2/structured_tiny/x", 10.0
    claims = verdicts(tmp_path, pd.concat([summary, extra], ignore_index=True))
    assert claims.loc[1, "verdict"] == HOLDS
    assert claims.loc[1, "ours"].startswith("structured diff pruning @ 0.5%")
