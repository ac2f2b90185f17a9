"""The run graph: which runs a config asks for, which run feeds which, and where each run
lives (diffprune/rungraph.py)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from diffprune import rungraph, settings


def load(tmp_path, text: str) -> dict:
    """A config file named exp.yaml (so the run set is "exp"), loaded and validated."""
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return settings.load_config(path)


@pytest.mark.parametrize("rate, label", [
    (0.5, "0.5"), (1.0, "1"), (1, "1"), ("1.0", "1"), (0.25, "0.25"), (100, "100"), (1e-05, "1e-05"),
    (0.1234567, "0.1234567"),  # every digit: two rates never share a label
])
def test_a_rate_reads_as_the_config_writes_it_without_a_trailing_zero(rate, label):
    assert rungraph.rate_label(rate) == label


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5, 1, 1.0, "1.0", 2.5, 10, 100, 1e-05, 0.1234567, 100 / 3])
def test_run_directories_keep_the_names_finished_runs_already_have(rate):
    # Every run directory so far was named "rate" + str(float(rate)): rate1.0/, rate0.5/.
    assert rungraph.rate_folder(rate) == f"rate{float(rate)}"
    assert rungraph.relative_run_dir("rte", "structured", 0, rate).parts[2] == f"rate{float(rate)}"
    assert rungraph.rate_folder(rate).removeprefix("rate").removesuffix(".0") == rungraph.rate_label(rate)


def test_a_method_entry_splits_into_method_name_options_and_training(tmp_path):
    cfg = load(tmp_path, """
        tasks: [rte, sst2]
        methods:
          full_finetuning:
          dp: {method: diff_pruning, structured: true, l0_lambda: 1e-7, training: {epochs: 6},
               task_training: {rte: {epochs: 9}}, tasks: [rte], task_seeds: {rte: [0, 1]},
               rates: [0.5], task_rates: {rte: [1.0]}}
    """)
    # No `method:`: the key is the registry name; an empty entry has no options or training.
    assert rungraph.method_entry(cfg, "full_finetuning") == ("full_finetuning", {}, {})
    # The keys that say which runs exist (and their per-task schedules) are not method options.
    assert rungraph.method_entry(cfg, "dp") == ("diff_pruning", {"structured": True, "l0_lambda": 1e-7},
                                                {"epochs": 6})
    assert cfg["methods"]["dp"]["tasks"] == ["rte"]  # read, not consumed
    with pytest.raises(ValueError, match="unknown method key 'nope'; this config defines: full_finetuning, dp"):
        rungraph.method_entry(cfg, "nope")


def test_a_reusing_key_only_prunes_and_runs_expand_per_task_seed_and_rate(tmp_path):
    cfg = load(tmp_path, """
        model: tiny-random
        tasks: [rte, mrpc]
        rates: [0.5, 1]
        task_seeds: {rte: [0, 1]}
        methods:
          full_finetuning:
          nonadaptive: {method: nonadaptive_diff_pruning}
          structured: {method: diff_pruning, structured: true}
    """)
    assert rungraph.seeds_for(cfg, "rte") == [0, 1] and rungraph.seeds_for(cfg, "mrpc") == [0]
    assert rungraph.rates(cfg) == [0.5, 1.0]
    assert rungraph.projected_keys(cfg) == ["nonadaptive", "structured"]
    assert rungraph.source_key(cfg, "nonadaptive") == "full_finetuning"
    assert rungraph.source_key(cfg, "structured") == "structured"
    assert rungraph.source_key(cfg, "full_finetuning") is None
    assert rungraph.needs_dense_diff(cfg, "full_finetuning") and rungraph.needs_dense_diff(cfg, "structured")
    assert not rungraph.trains(cfg, "nonadaptive")
    assert str(rungraph.run_dir("results", cfg, "rte", "structured", 1, rate=1)) == \
        "results/exp/runs/rte/structured/rate1.0/seed1"

    runs = rungraph.expand_runs(cfg)
    trains = [(r["task"], r["key"], r["seed"]) for r in runs if r["phase"] == "train"]
    prunes = [(r["task"], r["key"], r["seed"], r["rate"], r["source_key"]) for r in runs if r["phase"] == "prune"]
    assert ("rte", "nonadaptive", 0) not in trains
    assert len(trains) == 2 * 2 + 1 * 2          # rte: 2 seeds x 2 training keys; mrpc: 1 seed
    assert ("rte", "nonadaptive", 1, 0.5, "full_finetuning") in prunes
    assert len(prunes) == (2 + 1) * 2 * 2         # (seeds) x 2 projected keys x 2 rates


def test_method_entries_choose_their_own_tasks_and_seeds(tmp_path):
    cfg = load(tmp_path, """
        model: tiny-random
        tasks: [rte, sst2, squad]
        rates: [0.5]
        methods:
          full_finetuning: {method: full_finetuning, task_seeds: {sst2: [0, 1]}}
          nonadaptive: {method: nonadaptive_diff_pruning, tasks: [rte, sst2]}
          structured: {method: diff_pruning, structured: true, tasks: [sst2, squad], task_seeds: {sst2: [0, 1, 2]},
                       task_rates: {squad: [1.0]}, rates: [0.1, 0.5]}
    """)
    assert rungraph.rates_for(cfg, "structured", "squad") == [1.0]
    assert rungraph.rates_for(cfg, "structured", "sst2") == [0.1, 0.5] == rungraph.rates_for(cfg, "structured")
    assert rungraph.rates_for(cfg, "nonadaptive", "rte") == [0.5]
    assert rungraph.method_tasks(cfg, "structured") == ["sst2", "squad"]
    assert rungraph.method_tasks(cfg, "full_finetuning") == ["rte", "sst2", "squad"]
    assert rungraph.seeds_for(cfg, "sst2", "structured") == [0, 1, 2]
    assert rungraph.seeds_for(cfg, "sst2", "nonadaptive") == [0] and rungraph.seeds_for(cfg, "sst2") == [0]
    runs = {(r["task"], r["key"], r["seed"], r["phase"]) for r in rungraph.expand_runs(cfg)}
    assert ("rte", "structured", 0, "train") not in runs and ("squad", "nonadaptive", 0, "prune") not in runs
    assert {s for t, k, s, p in runs if (t, k, p) == ("sst2", "structured", "prune")} == {0, 1, 2}
    prunes = [(r["task"], r["rate"]) for r in rungraph.expand_runs(cfg) if r["key"] == "structured" and r["phase"] == "prune"]
    assert sorted(prunes) == [("squad", 1.0)] + [("sst2", rate) for rate in (0.1, 0.1, 0.1, 0.5, 0.5, 0.5)]
    assert {s for t, k, s, p in runs if (t, k, p) == ("sst2", "full_finetuning", "train")} == {0, 1}
    assert len(runs) == 4 + 2 + 2 * 3 + 2   # (task, key, seed, phase): full; nonadaptive; structured sst2 x3, squad


def test_reused_key_prefers_the_key_named_like_the_method(tmp_path):
    cfg = load(tmp_path, """
        methods:
          ft_long: {method: full_finetuning, training: {epochs: 10}}
          full_finetuning:
          nonadaptive: {method: nonadaptive_diff_pruning}
    """)
    assert rungraph.reused_key(cfg, "nonadaptive") == "full_finetuning"


def test_a_projected_key_may_run_at_its_own_rates(tmp_path):
    cfg = load(tmp_path, """
        model: tiny-random
        tasks: [rte, mrpc]
        rates: [0.5, 1]
        methods:
          full_finetuning:
          nonadaptive: {method: nonadaptive_diff_pruning, rates: [0.25]}
    """)
    assert rungraph.rates_for(cfg, "nonadaptive") == [0.25]
    assert rungraph.method_entry(cfg, "nonadaptive") == ("nonadaptive_diff_pruning", {}, {})
    prune_rates = {r["rate"] for r in rungraph.expand_runs(cfg) if r["phase"] == "prune"}
    assert prune_rates == {0.25}


def test_import_is_light():
    """The Snakefile imports the run graph at every invocation: no torch until a method class
    is asked about."""
    code = "import sys, diffprune.rungraph; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
