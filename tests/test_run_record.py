"""diffprune/run_record.py: what metrics.json and the evaluate result record, and in what form.

That a real run's metrics.json holds every field docs/ARCHITECTURE.md promises, with the
values the run measured, is tested end to end in tests/test_runner.py.
"""
from __future__ import annotations

import json
import math
import platform
from types import SimpleNamespace

import torch

from diffprune import run_record
from diffprune.job_timings import PhaseClock
from diffprune.seeding import DATA_SUBSAMPLE_SEED, derive_seeds
from tests.test_runner import METRICS_FIELDS

HEAD = r"^1\."


def test_json_safe_turns_tensors_into_numbers_and_non_finite_values_into_null():
    value = {"a": torch.tensor(1.5), 2: [float("nan"), (float("inf"), 3)], "b": {"c": torch.tensor(7)}}
    safe = run_record.json_safe(value)
    assert safe == {"a": 1.5, "2": [None, [None, 3]], "b": {"c": 7}}
    json.dumps(safe, allow_nan=False)
    assert run_record.json_safe(torch.ones(2)).shape == (2,)  # only 0-d tensors become numbers


def test_scores_of_results_and_plain_score_mappings():
    assert run_record.scores_of({"metrics": {"accuracy": 50.0}, "scores": {"rte": 50.0}}) == {"rte": 50.0}
    assert run_record.scores_of({"rte": 50.0}) == {"rte": 50.0} and run_record.scores_of(None) is None


def test_versions_name_what_produced_the_numbers():
    found = run_record.versions()
    assert {"python", "torch", "transformers", "diffprune"} <= set(found)
    assert found["python"] == platform.python_version() and found["torch"]


def test_counts_and_file_sizes(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    assert run_record.pretrained_parameter_count(model, HEAD) == 4 * 3 + 3
    (tmp_path / "a.bin").write_bytes(b"12345")
    (tmp_path / "b.bin").write_bytes(b"678")
    assert run_record.file_bytes(tmp_path, {"x": "a.bin", "y": "b.bin"}) == 8 and run_record.file_bytes(tmp_path, {}) == 0
    method = SimpleNamespace(nonzeros=None, diffed_params=10)
    assert run_record.diff_count(method, {"nonzeros": 4.0}, "nonzeros") == 4  # from stats.json
    assert run_record.diff_count(method, {"diffed_params": 99}, "diffed_params") == 10  # the method's own first
    assert run_record.diff_count(SimpleNamespace(), None, "nonzeros") is None  # a method without a diff


def test_the_loaded_base_records_its_head_fingerprint_and_size():
    from diffprune.storage import fingerprint

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    base = run_record.LoadedBase.inspect(model, "toy", HEAD)
    assert base.head_pattern == HEAD and base.model_id == "toy" and base.model is model
    assert base.fingerprint == fingerprint(model, HEAD) and base.pretrained_params == 15


def test_run_metrics_record_every_documented_field(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    base = run_record.LoadedBase.inspect(model, "toy", HEAD)
    plan = SimpleNamespace(task="rte", method_key="ff", method_name="full_finetuning", phase="train", rate=None,
                           seed=0, data_hash="sha256:data", resolved_config=lambda: {"name": "tiny"})
    method = SimpleNamespace(new_parameter_count=lambda module: 23, report=lambda: None)
    task = SimpleNamespace(primary_metric="accuracy", majority_baseline=lambda data: {"rte": torch.tensor(52.5)})
    data = SimpleNamespace(train_examples=16, train_examples_total=16, dev_examples=8, note="")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 100)
    metrics = run_record.run_metrics(
        plan, base=base, seeds=derive_seeds(0), method=method, module=model, task=task, data=data,
        evaluation={"metrics": {"accuracy": float("nan")}, "scores": {"rte": 50.0}}, before_finetune=None,
        source_scores=None, stats=None, exported={"model": "model.safetensors"}, run_dir=tmp_path,
        outcome=SimpleNamespace(steps=4, epochs=2, train_seconds=2.0), peak_memory=1024, device_label="cpu",
        precision="fp32", num_threads=1, clock=PhaseClock())
    assert METRICS_FIELDS <= set(metrics)
    assert metrics["seeds"] == {**derive_seeds(0).to_dict(), "data_subsample": DATA_SUBSAMPLE_SEED}
    assert metrics["head_parameters"] == ["1.bias", "1.weight"] and metrics["base_fingerprint"] == base.fingerprint
    assert metrics["new_params_pct"] == 100.0 * 23 / 15 and metrics["bytes_per_task"] == 100
    assert metrics["metrics"] == {"accuracy": None} and metrics["majority_scores"] == {"rte": 52.5}
    assert metrics["seconds_per_step"] == 0.5 and metrics["config"] == {"name": "tiny"}
    assert set(metrics["timings"]) >= {"train", "write", "total", "cpu"}
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in metrics.values())
