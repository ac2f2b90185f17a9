"""diffprune/run_plan.py: a train, prune or evaluate request is checked before any model loads.

Same tiny RTE config as tests/test_runner.py; nothing here trains. A finished source run is
stood in for by what planning reads of it: its metrics.json and a dense_diff.safetensors.
"""
from __future__ import annotations

import json

import pytest

from diffprune import run_plan
from diffprune.atomic import write_json
from diffprune.handover import DENSE_DIFF_NAME
from tests.test_runner import write_config


def finished_source(folder, **metrics):
    """A run directory that planning takes for a finished train run handing over a dense diff."""
    folder.mkdir(parents=True)
    (folder / DENSE_DIFF_NAME).write_bytes(b"")
    write_json(folder / "metrics.json", metrics)
    return folder


@pytest.mark.parametrize("call, message", [
    (lambda c, t: run_plan.plan_train(c, "wnli", "full_finetuning", 0, t / "o"), "unknown task 'wnli'"),
    (lambda c, t: run_plan.plan_train(c, "rte", "adapters_64", 0, t / "o"), "unknown method key 'adapters_64'"),
    (lambda c, t: run_plan.plan_train(c, "rte", "nonadaptive", 0, t / "o"), "no train phase of its own"),
    (lambda c, t: run_plan.plan_train(c, "rte", "full_finetuning", -1, t / "o"), "seed must be"),
    (lambda c, t: run_plan.plan_prune(c, "rte", "nonadaptive", 0, 0, t, t / "o"), "(0, 100]"),
    (lambda c, t: run_plan.plan_prune(c, "rte", "nonadaptive", 0, 150, t, t / "o"), "(0, 100]"),
    (lambda c, t: run_plan.plan_prune(c, "rte", "full_finetuning", 0, 1, t, t / "o"), "not projected"),
    (lambda c, t: run_plan.plan_prune(c, "rte", "nonadaptive", 0, 1, t / "missing", t / "o"), "no metrics.json"),
    (lambda c, t: run_plan.plan_evaluate(t / "missing.safetensors", c, "rte", t / "o.json"), "no such file"),
])
def test_bad_requests_fail_in_planning(tmp_path, call, message):
    config = write_config(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        call(config, tmp_path)
    assert message in str(error.value)


def test_prune_refuses_a_source_of_the_wrong_task(tmp_path):
    source = finished_source(tmp_path / "source", task="mrpc", method_key="full_finetuning")
    with pytest.raises(ValueError, match="is a 'mrpc' run"):
        run_plan.plan_prune(write_config(tmp_path), "rte", "nonadaptive", 0, 1, source, tmp_path / "o")


def test_prune_refuses_the_source_run_of_another_seed(tmp_path):
    source = finished_source(tmp_path / "ff" / "seed0", task="rte", method_key="full_finetuning", seed=0)
    with pytest.raises(ValueError, match="is the seed-0 run; a prune run of seed 1 starts from the seed-1 run"):
        run_plan.plan_prune(write_config(tmp_path), "rte", "nonadaptive", 1, 10, source, tmp_path / "o")


def test_run_seeds_are_derived_once_per_plan(tmp_path, monkeypatch):
    plan = run_plan.plan_train(write_config(tmp_path), "rte", "full_finetuning", 3, tmp_path / "o")
    calls = []
    derive = run_plan.derive_seeds
    monkeypatch.setattr(run_plan, "derive_seeds", lambda seed: calls.append(seed) or derive(seed))
    assert plan.seeds is plan.seeds and plan.seeds == derive(3)
    assert calls == [3]


def test_prune_planning_does_not_rebuild_the_model_skeleton(tmp_path, monkeypatch):
    """Whether the method applies was checked when its source run was planned; planning each
    rate's prune run must not pay for the skeleton again."""
    config = write_config(tmp_path)
    source = finished_source(tmp_path / "ff" / "seed0", task="rte", method_key="full_finetuning", seed=0)
    checked = []
    check = run_plan.check_method_applies
    monkeypatch.setattr(run_plan, "check_method_applies", lambda *args: checked.append(args[2]) or check(*args))
    run_plan.plan_train(config, "rte", "full_finetuning", 0, tmp_path / "train")
    assert checked == ["full_finetuning"]
    plan = run_plan.plan_prune(config, "rte", "nonadaptive", 0, 10, source, tmp_path / "prune")
    assert plan.phase == "prune" and checked == ["full_finetuning"]


def test_evaluate_refuses_an_existing_out_file(tmp_path):
    """It used to exit 0 leaving the old scores in place."""
    config = write_config(tmp_path)
    old = tmp_path / "eval.json"
    old.write_text('{"scores": {"rte": 99.0}}')
    with pytest.raises(ValueError, match="--out .*eval.json exists: evaluate never reuses or overwrites"):
        run_plan.plan_evaluate(tmp_path / "diff.safetensors", config, "rte", old)
    assert json.loads(old.read_text()) == {"scores": {"rte": 99.0}}
