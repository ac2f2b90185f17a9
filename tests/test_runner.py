"""The training / evaluation runner (diffprune/runner.py), run in-process on a tiny RTE fixture.

The model is the tiny random BERT (tiny_models.py, source ``tiny-random``) and the data a
24-example RTE-format TSV written into tmp: a whole run takes a second or two on a CPU.
"""
from __future__ import annotations

import json
import pickle
import random
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffprune import evaluation, run_plan, runner
from diffprune.artifact import STATE_NAME
from diffprune.atomic import publish_dir, write_json
from diffprune.checkpoint import CHECKPOINT_NAME, load_checkpoint
from diffprune.diff_pruning_config import DEFAULT_HEAD_PATTERN
from diffprune.handover import DENSE_DIFF_NAME
from diffprune.seeding import derive_seeds
from diffprune.storage import BaseModelMismatch, DiffFileError, TaskMismatch, read_header

WORDS = "the a cat dog sat on mat big small red blue house tree runs walks near far".split()

# Every field docs/ARCHITECTURE.md promises in metrics.json.
METRICS_FIELDS = {
    "task", "method_key", "method", "phase", "rate", "seed", "model_id", "base_fingerprint", "metrics",
    "primary_metric", "scores", "before_finetune", "source_scores", "majority_scores", "new_params",
    "new_params_pct", "pretrained_params", "diffed_params", "nonzeros", "bytes_per_task", "train_seconds",
    "seconds_per_step", "peak_memory_bytes", "steps", "epochs", "train_examples", "train_examples_total",
    "dev_examples", "dataset_note", "device", "num_threads", "data_hash", "config", "versions",
}


def write_rte(glue_dir, train: int = 16, dev: int = 8, seed: int = 0) -> None:
    rng = random.Random(seed)
    folder = glue_dir / "RTE"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("dev", dev)):
        rows = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(count):
            first = " ".join(rng.choice(WORDS) for _ in range(6))
            second = " ".join(rng.choice(WORDS) for _ in range(4))
            rows.append(f"{i}\t{first}\t{second}\t{rng.choice(['entailment', 'not_entailment'])}")
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")


def write_config(tmp_path, extra_training: str = "") -> str:
    write_rte(tmp_path / "glue")
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(f"""
        model: tiny-random
        models:
          other_base: {{source: tiny-random, seed: 1}}
        tasks: [rte]
        rates: [10]
        training: {{batch_size: 4, epochs: 2, learning_rate: 1e-3, max_seq_length: 32, fixed_mask_epochs: 1{extra_training}}}
        data: {{glue_dir: {tmp_path / 'glue'}}}
        methods:
          full_finetuning:
          nonadaptive: {{method: nonadaptive_diff_pruning}}
          structured: {{method: diff_pruning, structured: true}}
          critical: {{method: critical_layers, num_layers: 1}}
    """))
    return str(path)


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_NO_PROGRESS", "1")
    monkeypatch.delenv(runner.CRASH_HOOK_ENV, raising=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted full-finetuning run (seed 0) that several tests compare against."""
    tmp = tmp_path_factory.mktemp("reference")
    config = write_config(tmp)
    out = tmp / "runs" / "ff" / "seed0"
    metrics = runner.execute(run_plan.plan_train(config, "rte", "full_finetuning", 0, out))
    return {"config": config, "out": out, "metrics": metrics, "tmp": tmp}


def tensors(path):
    return load_file(str(path))


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_train_writes_a_complete_run(reference):
    out, metrics = reference["out"], reference["metrics"]
    # the dense diff is written because a projected entry (nonadaptive) reuses this key's runs
    assert {"dense_diff.safetensors", "metrics.json", "artifact.json", STATE_NAME} <= {p.name for p in out.iterdir()}
    assert CHECKPOINT_NAME not in {p.name for p in out.iterdir()}
    assert not out.with_name(out.name + ".tmp").exists()
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    assert METRICS_FIELDS <= set(on_disk)
    assert on_disk["phase"] == "train" and on_disk["rate"] is None and on_disk["method"] == "full_finetuning"
    assert on_disk["steps"] == 2 * 4 and on_disk["epochs"] == 2      # 16 examples / batch 4, 2 epochs
    assert on_disk["train_examples"] == 16 and on_disk["dev_examples"] == 8
    assert on_disk["primary_metric"] == "accuracy" and set(on_disk["scores"]) == {"rte"}
    assert on_disk["base_fingerprint"].startswith("sha256:")
    assert on_disk["bytes_per_task"] == (out / STATE_NAME).stat().st_size
    assert on_disk["new_params"] > on_disk["pretrained_params"] > 0  # full finetuning: body + head
    assert on_disk["config"]["training"]["learning_rate"] == 1e-3
    assert on_disk["versions"]["torch"] and on_disk["device"] == "cpu" and on_disk["peak_memory_bytes"] > 0
    assert on_disk["seconds_per_step"] == pytest.approx(on_disk["train_seconds"] / on_disk["steps"])
    # where the job's seconds went (python -m diffprune.job_timings sums them over a run set)
    timings = on_disk["timings"]
    assert timings["train"] == pytest.approx(on_disk["train_seconds"], rel=0.2, abs=0.05)
    assert timings["load_model"] > 0 and timings["load_data"] > 0 and timings["evaluate"] > 0
    assert timings["write"] > 0 and timings["evaluate_before_finetune"] == 0.0  # a train run
    assert timings["total"] >= sum(timings[name] for name in ("load_model", "load_data", "train", "evaluate"))


def test_same_seed_gives_identical_results(reference, tmp_path):
    again = runner.execute(run_plan.plan_train(reference["config"], "rte", "full_finetuning", 0, tmp_path / "again"))
    for key in ("metrics", "scores", "majority_scores", "new_params", "steps", "base_fingerprint"):
        assert again[key] == reference["metrics"][key]
    assert_same_tensors(tensors(tmp_path / "again" / STATE_NAME), tensors(reference["out"] / STATE_NAME))
    other_seed = runner.execute(run_plan.plan_train(reference["config"], "rte", "full_finetuning", 1,
                                                    tmp_path / "seed1"))
    assert other_seed["base_fingerprint"] == reference["metrics"]["base_fingerprint"]  # same base, other head/order
    assert not torch.equal(tensors(tmp_path / "seed1" / STATE_NAME)["param.classifier.weight"],
                           tensors(reference["out"] / STATE_NAME)["param.classifier.weight"])


def test_finished_run_is_skipped(reference, capsys):
    before = (reference["out"] / "metrics.json").stat().st_mtime_ns
    plan = run_plan.plan_train(reference["config"], "rte", "full_finetuning", 0, reference["out"])
    assert runner.execute(plan) is None
    assert "skipping" in capsys.readouterr().err
    assert (reference["out"] / "metrics.json").stat().st_mtime_ns == before


def test_crashed_run_resumes_to_the_uninterrupted_result(reference, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    overrides = {"checkpoint_every_steps": 2}
    monkeypatch.setenv(runner.CRASH_HOOK_ENV, "5")  # crash in epoch 2, one step after a checkpoint
    with pytest.raises(runner.SimulatedCrash):
        runner.execute(run_plan.plan_train(reference["config"], "rte", "full_finetuning", 0, out, overrides))
    checkpoint = load_checkpoint(out.with_name("resumed.tmp") / CHECKPOINT_NAME)
    assert (checkpoint["step"], checkpoint["epoch"], checkpoint["groups_done"]) == (4, 1, 0)
    assert not out.exists()

    monkeypatch.delenv(runner.CRASH_HOOK_ENV)
    metrics = runner.execute(run_plan.plan_train(reference["config"], "rte", "full_finetuning", 0, out, overrides))
    assert metrics["steps"] == 8 and not out.with_name("resumed.tmp").exists()
    assert not (out / CHECKPOINT_NAME).exists()
    # dropout noise, data order and optimizer state all continue exactly where they stopped
    assert_same_tensors(tensors(out / STATE_NAME), tensors(reference["out"] / STATE_NAME))
    assert metrics["metrics"] == reference["metrics"]["metrics"]


def test_checkpoint_of_another_configuration_is_refused(reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv(runner.CRASH_HOOK_ENV, "2")
    with pytest.raises(runner.SimulatedCrash):
        runner.execute(run_plan.plan_train(reference["config"], "rte", "full_finetuning", 0, out,
                                           {"checkpoint_every_steps": 2}))
    monkeypatch.delenv(runner.CRASH_HOOK_ENV)
    with pytest.raises(ValueError, match="different run configuration"):
        runner.execute(run_plan.plan_train(reference["config"], "rte", "full_finetuning", 0, out,
                                           {"checkpoint_every_steps": 2, "learning_rate": 0.5}))


class _Hostile:
    """Unpickling this writes ``marker``: the stand-in for code a pickle can run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_resume_never_unpickles(reference, tmp_path, monkeypatch, capsys):
    """A pickle placed where checkpoints used to live (checkpoint.pt), or under the current
    checkpoint name, is never executed; resuming reads safetensors + JSON only."""
    out = tmp_path / "resumed"
    tmp = out.with_name("resumed.tmp")
    marker = tmp_path / "pwned"
    overrides = {"checkpoint_every_steps": 2}
    monkeypatch.setenv(runner.CRASH_HOOK_ENV, "5")
    with pytest.raises(runner.SimulatedCrash):
        runner.execute(run_plan.plan_train(reference["config"], "rte", "full_finetuning", 0, out, overrides))
    monkeypatch.delenv(runner.CRASH_HOOK_ENV)
    torch.save(_Hostile(marker), tmp / "checkpoint.pt")
    capsys.readouterr()

    def refuse(*args, **kwargs):
        raise AssertionError("something unpickled while resuming")

    with monkeypatch.context() as patched:
        for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
            patched.setattr(module, name, refuse)
        metrics = runner.execute(run_plan.plan_train(reference["config"], "rte", "full_finetuning", 0, out, overrides))
    assert not marker.exists()
    log = capsys.readouterr().err
    assert "old pickle format: not read" in log and "resuming from" in log and "step 4/8" in log
    assert metrics["steps"] == 8
    assert_same_tensors(tensors(out / STATE_NAME), tensors(reference["out"] / STATE_NAME))

    hostile = tmp_path / "hostile" / CHECKPOINT_NAME
    hostile.parent.mkdir()
    torch.save(_Hostile(marker), hostile)
    with pytest.raises(ValueError, match="is not a diffprune checkpoint"):
        load_checkpoint(hostile)
    assert not marker.exists()


def test_gradient_accumulation_and_max_steps(reference, tmp_path):
    plan = run_plan.plan_train(reference["config"], "rte", "full_finetuning", 0, tmp_path / "acc",
                               {"batch_size": 3, "gradient_accumulation_steps": 2, "max_steps": 5, "epochs": 3})
    plan.write_dense_diff = False
    metrics = runner.execute(plan)
    # 16 examples / batch 3 = 6 micro-batches = 3 optimizer steps per epoch; capped at 5 steps
    assert metrics["steps"] == 5 and metrics["epochs"] == 2


def test_prune_then_evaluate_the_stored_diff(reference, tmp_path):
    out = tmp_path / "nonadaptive" / "rate10.0" / "seed0"
    metrics = runner.execute(run_plan.plan_prune(reference["config"], "rte", "nonadaptive", 0, 10, reference["out"],
                                                 out))
    assert sorted(p.name for p in out.iterdir()) == ["artifact.json", "diff.safetensors", "metrics.json", "stats.json"]
    assert METRICS_FIELDS <= set(metrics)
    assert metrics["phase"] == "prune" and metrics["rate"] == 10.0 and metrics["method"] == "nonadaptive_diff_pruning"
    assert metrics["source_scores"] == reference["metrics"]["scores"]
    assert set(metrics["before_finetune"]) == {"metrics", "scores"}
    assert metrics["timings"]["evaluate_before_finetune"] > 0
    assert metrics["nonzeros"] == round(0.10 * metrics["diffed_params"])
    assert metrics["diffed_params"] == metrics["pretrained_params"]
    assert metrics["bytes_per_task"] == (out / "diff.safetensors").stat().st_size
    assert metrics["epochs"] == 1 and metrics["steps"] == 4            # fixed_mask_epochs: 1
    assert metrics["config"]["training"]["learning_rate"] == 5e-5      # fixed_mask_learning_rate
    stats = json.loads((out / "stats.json").read_text())
    assert "per_layer" in stats

    # the stored diff, applied to the shared base, reproduces the prune run's evaluation
    result_path = tmp_path / "eval.json"
    result = evaluation.execute_evaluate(run_plan.plan_evaluate(out / "diff.safetensors", reference["config"], "rte",
                                                                result_path))
    assert result["metrics"] == metrics["metrics"] and json.loads(result_path.read_text()) == result

    with pytest.raises(BaseModelMismatch):
        evaluation.execute_evaluate(run_plan.plan_evaluate(out / "diff.safetensors", reference["config"], "rte",
                                                           tmp_path / "other.json", model_key="other_base"))
    assert not (tmp_path / "other.json").exists()

    # the diff names its task and labels; evaluating it as another task, or passing the dense
    # hand-over file instead, is refused at planning time with what the file is
    header = read_header(out / "diff.safetensors")
    assert header["task"] == "rte" and header["labels"] == ["entailment", "not_entailment"]
    with pytest.raises(TaskMismatch, match="is a diff for task 'rte', not 'mrpc'"):
        run_plan.plan_evaluate(out / "diff.safetensors", reference["config"], "mrpc", tmp_path / "mrpc.json")
    with pytest.raises(DiffFileError, match="is a dense diff .* evaluate and apply_diff_ take the diff.safetensors"):
        run_plan.plan_evaluate(reference["out"] / DENSE_DIFF_NAME, reference["config"], "rte", tmp_path / "d.json")


def test_evaluate_takes_the_artifact_of_any_run(reference, tmp_path, capsys):
    """A train run's artifact.json names the run and its one payload; evaluating the run
    directory rebuilds the task model on a fresh base and scores as the run did."""
    from diffprune import cli

    out, metrics = reference["out"], reference["metrics"]
    config = json.loads((out / "artifact.json").read_text())
    assert metrics["artifact"] == "artifact.json" and metrics["exported"] == {"task_state": STATE_NAME}
    assert config["method"] == "full_finetuning" and config["method_key"] == "full_finetuning"
    assert config["phase"] == "train" and config["seed"] == 0 and config["task"] == "rte"
    assert config["labels"] == ["entailment", "not_entailment"]
    assert config["base"]["fingerprint"] == metrics["base_fingerprint"]
    assert config["payload"] == {"file": STATE_NAME, "format": "diffprune.task_state", "kind": "task_state",
                                 "sha256": config["payload"]["sha256"], "bytes": metrics["bytes_per_task"]}
    assert config["new_params"] == metrics["new_params"]
    result = evaluation.execute_evaluate(run_plan.plan_evaluate(out, reference["config"], "rte", tmp_path / "e.json"))
    assert result["metrics"] == metrics["metrics"] and result["method"] == "full_finetuning"
    assert result["payload_format"] == "diffprune.task_state"
    # on another base: one line naming the fix, exit code 1, no result file
    assert cli.main(["evaluate", "--artifact", str(out / "artifact.json"), "--config", reference["config"], "--task",
                     "rte", "--model-key", "other_base", "--out", str(tmp_path / "other.json")]) == cli.RUN_ERROR
    assert "was trained on base model tiny-random-bert" in capsys.readouterr().err
    assert not (tmp_path / "other.json").exists()


def test_adaptive_diff_pruning_train_then_prune(reference, tmp_path, monkeypatch):
    """The paper's method: the L0 run hands its own dense diff to its prune runs."""
    from diffprune import storage

    written = []
    save_dense_diff = storage.save_dense_diff
    monkeypatch.setattr(storage, "save_dense_diff",
                        lambda path, *args: written.append(Path(path)) or save_dense_diff(path, *args))
    source = tmp_path / "structured" / "seed0"
    l0 = runner.execute(run_plan.plan_train(reference["config"], "rte", "structured", 0, source, {"max_steps": 3}))
    assert l0["method"] == "diff_pruning" and l0["steps"] == 3
    assert (source / DENSE_DIFF_NAME).is_file() and (source / "stats.json").is_file()
    # what the L0 phase stores is its hand-over, written once, naming the base it was trained on
    assert written == [source.with_name("seed0.tmp") / DENSE_DIFF_NAME]
    assert l0["exported"] == {"dense_diff": DENSE_DIFF_NAME}
    assert l0["bytes_per_task"] == (source / DENSE_DIFF_NAME).stat().st_size
    assert read_header(source / DENSE_DIFF_NAME, expected_format=storage.DENSE_FORMAT)["base_fingerprint"] == \
        l0["base_fingerprint"]
    assert l0["diffed_params"] == reference["metrics"]["pretrained_params"] and l0["nonzeros"] > 0
    out = tmp_path / "structured" / "rate10.0" / "seed0"
    pruned = runner.execute(run_plan.plan_prune(reference["config"], "rte", "structured", 0, 10, source, out,
                                                {"max_steps": 2}))
    assert pruned["source_scores"] == l0["scores"] and pruned["steps"] == 2
    # the L0 run drew gate noise; the fixed-mask run draws none (its mask is the source's)
    assert l0["seeds"]["gate_noise"] == derive_seeds(0).gate_noise
    assert pruned["seeds"]["gate_noise"] is None
    assert pruned["nonzeros"] <= round(0.10 * pruned["diffed_params"])
    assert (out / "diff.safetensors").is_file()


def test_publish_dir_is_all_or_nothing(tmp_path):
    tmp, final = tmp_path / "run.tmp", tmp_path / "run"
    tmp.mkdir()
    write_json(tmp / "metrics.json", {"a": 1})
    final.mkdir()  # an empty folder (as a workflow engine may create) is replaced
    publish_dir(tmp, final)
    assert json.loads((final / "metrics.json").read_text()) == {"a": 1} and not tmp.exists()
    other = tmp_path / "other.tmp"
    other.mkdir()
    with pytest.raises(FileExistsError):
        publish_dir(other, final)
    with pytest.raises(ValueError):  # NaN is not JSON: refused rather than written
        write_json(tmp_path / "x.json", {"x": float("nan")})
    assert not (tmp_path / "x.json").exists()


def test_critical_layers_ranks_by_the_full_finetuning_run_of_its_task_and_seed(reference, tmp_path):
    from diffprune.layers import layer_of

    config, ff_run = reference["config"], reference["out"]
    with pytest.raises(ValueError, match="pass its run directory with --from"):
        run_plan.plan_train(config, "rte", "critical", 0, tmp_path / "c")
    with pytest.raises(ValueError, match="seed 1"):
        run_plan.plan_train(config, "rte", "critical", 1, tmp_path / "c", needed_dir=ff_run)
    with pytest.raises(ValueError, match="only for methods that read another run"):
        run_plan.plan_train(config, "rte", "full_finetuning", 0, tmp_path / "c", needed_dir=ff_run)
    metrics = runner.execute(run_plan.plan_train(config, "rte", "critical", 0, tmp_path / "c", needed_dir=ff_run))
    assert metrics["config"]["method"]["options"]["ranking"] == str(ff_run)
    distances = json.loads((ff_run / "stats.json").read_text())["per_layer_distance"]
    competing = {k: v["relative_l2"] for k, v in distances.items() if k == "embeddings" or k.startswith("layer_")}
    most_moved = max(competing, key=competing.get)
    stored = tensors(tmp_path / "c" / STATE_NAME)
    trained = {layer_of(name.removeprefix("param."), DEFAULT_HEAD_PATTERN) for name in stored}
    assert trained == {most_moved, "head"}


def test_run_seeds_are_derived_and_recorded(reference, tmp_path):
    """Every stream follows the run seed; the data subsample does not (seeds share examples)."""
    seed0 = reference["metrics"]
    seed1 = runner.execute(run_plan.plan_train(reference["config"], "rte", "full_finetuning", 1, tmp_path / "seed1"))
    # full finetuning draws no gate noise: it records none rather than a seed it never used
    assert seed0["seeds"] == {**derive_seeds(0).to_dict(), "gate_noise": None, "data_subsample": 0}
    assert seed1["seeds"]["run"] == 1 and seed1["seeds"]["data_subsample"] == 0
    assert seed1["seeds"]["gate_noise"] is None
    for stream in ("model_init", "data_order"):
        assert seed1["seeds"][stream] != seed0["seeds"][stream]
    assert seed1["dataset_note"] == seed0["dataset_note"] and seed1["dev_examples"] == seed0["dev_examples"]


def test_diff_pruning_records_the_gate_noise_seed_it_used(reference, tmp_path):
    derived = runner.execute(run_plan.plan_train(reference["config"], "rte", "structured", 2, tmp_path / "d",
                                                 {"max_steps": 1}))
    assert derived["seeds"]["gate_noise"] == derive_seeds(2).gate_noise
