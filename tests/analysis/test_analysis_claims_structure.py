"""Claims 5, 7 and 8 (where the modified entries sit) on the paper-shaped run set, where each
holds: one change makes the claim fail, and taking runs, fields or layer counts away makes
it not testable, naming what is missing."""
from __future__ import annotations

import pytest

from claims_setup import edited_verdicts, without, without_columns
from diffprune.analysis.claims_evidence import FAILS, UNTESTABLE


def _set_groups_zero(summary, layers):
    summary.loc[summary["method_key"] == "structured_diff_pruning", "groups_zero"] = 2  # unstructured: 3
    return summary, layers


def _embeddings_modified(summary, layers):
    # 100 of 1000 entries: denser than the whole diff (e.g. RTE 0.1 vs 180 / 2000 = 0.09), while
    # the tasks' profiles still differ by 14.8 points on average: only this part fails.
    layers.loc[layers["layer"] == "embeddings", "nonzero"] = 100
    return summary, layers


def _tasks_alike(summary, layers):
    for layer, nonzero in {"embeddings": 1, "layer_0": 60, "layer_1": 20}.items():
        layers.loc[layers["layer"] == layer, "nonzero"] = nonzero
    return summary, layers


def _seeds_disagree(summary, layers):
    rows = (layers["task"] == "sst2") & (layers["seed"] == 1) & (layers["layer"] == "layer_1")
    layers.loc[rows, "nonzero"] = 90  # above layer_0's 61: another most-modified layer
    return summary, layers


FAILING = {
    "5: structured leaves fewer zero groups": (5, _set_groups_zero),
    "7: embeddings modified densely": (7, _embeddings_modified),
    "7: every task modifies the same layers": (7, _tasks_alike),
    "8: seeds disagree on the most-modified layer": (8, _seeds_disagree),
}


@pytest.mark.parametrize("claim, edit", FAILING.values(), ids=FAILING.keys())
def test_one_change_makes_the_claim_fail(tmp_path, claim, edit):
    claims = edited_verdicts(tmp_path, edit=edit)
    assert claims.loc[claim, "verdict"] == FAILS, claims.loc[claim, "ours"]
    assert claims.loc[claim, "missing"] == ""


def _no_layers(summary, layers):
    return summary, layers.iloc[0:0]


def _layers_of_one_task(summary, layers):
    return summary, layers[layers["task"] == "sst2"]


UNTESTABLE_CASES = {
    "5: no groups_zero": (5, without_columns("groups_zero"), "groups_zero"),
    "7: no layers.csv": (7, _no_layers, "layers.csv"),
    "7: one task with layer counts": (7, _layers_of_one_task, "on at least 2 tasks"),
    "8: one seed": (8, without(seed=[1, 2]), "needs at least 2 seeds"),
}


@pytest.mark.parametrize("claim, edit, missing", UNTESTABLE_CASES.values(), ids=UNTESTABLE_CASES.keys())
def test_missing_runs_make_the_claim_untestable_and_say_what_is_needed(tmp_path, claim, edit, missing):
    claims = edited_verdicts(tmp_path, edit=edit)
    assert claims.loc[claim, "verdict"] == UNTESTABLE
    assert missing in claims.loc[claim, "missing"]


def test_one_task_profile_leaves_the_tested_part_in_our_numbers(tmp_path):
    claim = edited_verdicts(tmp_path, edit=_layers_of_one_task).loc[7]
    assert claim["verdict"] == UNTESTABLE
    # SST-2 seed 0: embeddings 1 / 1000 against (1 + 60 + 20) / 2000 -> 0.025x (0.024 over seeds);
    # 1 of 81 modified entries -> 1.2%.
    assert "embeddings modified at 0.02x the whole diff's density at most (sst2; 1.2%" in claim["ours"]
