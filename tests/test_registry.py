"""Every registered method (diffprune/registry.py) through the CLI (``python -m diffprune``) on
a tiny random Llama-style decoder (``tiny-random-llama``: RMSNorm, rotary positions, SwiGLU,
no biases, no pooler, ``score`` head, a tokenizer without pad token) and on the tiny BERT.

A method either trains there (a few steps, 16 RTE-format examples) or is refused while the
run is planned, with a message naming the method, the model and what to do instead.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from diffprune import cli, run_plan, runner
from diffprune.registry import METHODS, build_method, method_class
from tests.conftest import tiny_bert_config
from tests.test_runner import write_rte

# What each model should give: its head, its last-layer report, its norms, its LoRA targets.
MODELS = {
    "tiny-random-llama": {"head": ["score.weight"], "top_block_module": "model.layers.1",
                          "final_norm": ["model.norm"], "pooler": [], "layer_norms": 5,  # weights of 2 RMSNorms per block + the final one
                          "lora_targets": ["q_proj", "v_proj"], "has_biases": False},
    "tiny-random": {"head": ["classifier.bias", "classifier.weight"], "top_block_module": "bert.encoder.layer.1",
                    "final_norm": [], "pooler": ["bert.pooler.dense"], "layer_norms": 2 * 5,  # weight, bias of the embeddings' + 2 per block
                    "lora_targets": ["query", "value"], "has_biases": True},
}


def write_config(tmp_path, model: str) -> str:
    write_rte(tmp_path / "glue")
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(f"""
        model: {model}
        tasks: [rte]
        rates: [10]
        training: {{batch_size: 4, epochs: 1, max_steps: 2, learning_rate: 1e-3, max_seq_length: 32,
                    fixed_mask_epochs: 1}}
        data: {{glue_dir: {tmp_path / 'glue'}}}
        methods:
    """) + "".join(f"  {name}: {{method: {name}}}\n" for name in sorted(METHODS)))
    return str(path)


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_NO_PROGRESS", "1")
    monkeypatch.delenv(runner.CRASH_HOOK_ENV, raising=False)


@pytest.fixture(scope="module", params=sorted(MODELS))
def llama(request, tmp_path_factory):
    """The config, the model's expectations, and the full-finetuning run that non-adaptive diff
    pruning and critical-layer finetuning read."""
    tmp = tmp_path_factory.mktemp(request.param)
    config = write_config(tmp, request.param)
    full = tmp / "runs" / "full_finetuning" / "seed0"
    runner.execute(run_plan.plan_train(config, "rte", "full_finetuning", 0, full))
    return {"config": config, "full": full, "model": request.param, **MODELS[request.param]}


def run_cli(*argv) -> None:
    """``python -m diffprune <argv>``, in process: what a user types."""
    assert cli.main([str(a) for a in argv]) == 0


def train(llama, tmp_path, key, needed_dir=None):
    out = tmp_path / key
    run_cli("train", "--config", llama["config"], "--task", "rte", "--method-key", key, "--seed", 0, "--out", out,
            *(["--from", needed_dir] if needed_dir else []))
    metrics = json.loads((out / "metrics.json").read_text())
    if not method_class(metrics["method"]).projected:
        check_stored_task_reproduces(llama, tmp_path, metrics, out)
    return metrics


def prune(llama, tmp_path, key, source):
    out = tmp_path / key / "rate10"
    run_cli("prune", "--config", llama["config"], "--task", "rte", "--method-key", key, "--seed", 0,
            "--rate", 10, "--from", source, "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    check_stored_task_reproduces(llama, tmp_path, metrics, out)
    return metrics, out


def check_stored_diff_reproduces(llama, tmp_path, metrics, out):
    evaluated = tmp_path / "evaluated.json"
    run_cli("evaluate", "--diff", out / "diff.safetensors", "--config", llama["config"], "--task", "rte",
            "--out", evaluated)
    assert json.loads(evaluated.read_text())["metrics"] == metrics["metrics"]


def check_stored_task_reproduces(llama, tmp_path, metrics, out):
    """`evaluate` on the run directory (its artifact.json, whatever the method) scores as the run did."""
    evaluated = tmp_path / "evaluated-run.json"
    run_cli("evaluate", "--artifact", out, "--config", llama["config"], "--task", "rte", "--out", evaluated)
    result = json.loads(evaluated.read_text())
    assert result["metrics"] == metrics["metrics"] and result["method"] == metrics["method"]
    evaluated.unlink()


def run_diff_pruning(llama, tmp_path):
    source = train(llama, tmp_path, "diff_pruning")
    assert source["diffed_params"] == source["pretrained_params"]  # the head is not diffed
    metrics, out = prune(llama, tmp_path, "diff_pruning", tmp_path / "diff_pruning")
    assert metrics["head_parameters"] == llama["head"] and metrics["diffed_params"] == metrics["pretrained_params"]
    check_stored_diff_reproduces(llama, tmp_path, metrics, out)


def run_nonadaptive(llama, tmp_path):
    metrics, out = prune(llama, tmp_path, "nonadaptive_diff_pruning", llama["full"])
    assert metrics["nonzeros"] == round(0.10 * metrics["diffed_params"])
    check_stored_diff_reproduces(llama, tmp_path, metrics, out)


def run_full_finetuning(llama, tmp_path):
    metrics = json.loads((llama["full"] / "metrics.json").read_text())
    assert metrics["head_parameters"] == llama["head"] and metrics["steps"] == 2
    check_stored_task_reproduces(llama, tmp_path, metrics, llama["full"])


def run_last_layer(llama, tmp_path):
    metrics = train(llama, tmp_path, "last_layer")
    report = metrics["method_report"]
    assert report["top_block"] == "layer_1" and report["top_block_module"] == llama["top_block_module"]
    assert report["final_norm"] == llama["final_norm"]  # the head reads the final norm's output
    assert report["pooler"] == llama["pooler"] and ("no pooler" in report["note"]) == (not llama["pooler"])


def run_adapters(llama, tmp_path):
    metrics = train(llama, tmp_path, "adapters")
    # train_layer_norms: every norm, Llama's RMSNorms included (not only nn.LayerNorm)
    assert len(metrics["method_report"]["layer_norms"]) == llama["layer_norms"]


def run_lora(llama, tmp_path):
    metrics = train(llama, tmp_path, "lora")
    assert metrics["method_report"]["target_modules"] == llama["lora_targets"]


def run_bitfit(llama, tmp_path):
    if llama["has_biases"]:
        assert train(llama, tmp_path, "bitfit")["head_parameters"] == llama["head"]
        return
    with pytest.raises(ValueError) as refused:
        run_plan.plan_train(llama["config"], "rte", "bitfit", 0, tmp_path / "bitfit")
    message = str(refused.value)
    assert "bitfit" in message and llama["model"] in message and "no bias" in message and "choose another method" in message
    assert not (tmp_path / "bitfit").exists()


def run_critical_layers(llama, tmp_path):
    metrics = train(llama, tmp_path, "critical_layers", needed_dir=llama["full"])
    assert metrics["head_parameters"] == llama["head"]


def run_sparsification(llama, tmp_path):
    metrics = train(llama, tmp_path, "sparsification")
    assert metrics["head_parameters"] == llama["head"]


RUNS = {
    "diff_pruning": run_diff_pruning,
    "nonadaptive_diff_pruning": run_nonadaptive,
    "full_finetuning": run_full_finetuning,
    "last_layer": run_last_layer,
    "adapters": run_adapters,
    "lora": run_lora,
    "bitfit": run_bitfit,
    "critical_layers": run_critical_layers,
    "sparsification": run_sparsification,
}


def run_any_method(llama, tmp_path, name):
    """A method without checks of its own above (e.g. a baseline just added: its module, a
    registry line and a config entry are all it needs): it trains here and stores its head,
    or planning refuses it with a message naming the method and the model."""
    cls = method_class(name)
    needed = llama["full"] if cls.needs_run is not None or cls.reuses is not None else None
    if cls.reuses is None:
        try:
            run_plan.plan_train(llama["config"], "rte", name, 0, tmp_path / name)
        except ValueError as refused:
            assert name in str(refused) and llama["model"] in str(refused)
            assert not (tmp_path / name).exists()
            return
        metrics = train(llama, tmp_path, name, needed_dir=needed)
    else:
        metrics, _ = prune(llama, tmp_path, name, needed)
    assert metrics["head_parameters"] == llama["head"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_or_is_refused_at_planning(name, llama, tmp_path):
    if name in RUNS:
        RUNS[name](llama, tmp_path)
    else:
        run_any_method(llama, tmp_path, name)


def test_a_method_without_checks_of_its_own_trains(llama, tmp_path):
    """The generic path a newly added baseline takes, on a method that has one."""
    run_any_method(llama, tmp_path, "lora")


# --- BatchNorm statistics are task state: every method stores the ones it trained with ----------

BN_HEAD = r"^classifier\."


def bert_with_batchnorm():
    """The tiny BERT with a pretrained BatchNorm in its pooler (statistics far from the task's):
    a stand-in for a ConvNet that every method, adapters and LoRA included, can adapt."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    norm = nn.BatchNorm1d(model.config.hidden_size)
    with torch.no_grad():
        norm.running_mean.fill_(-2.0)
        norm.running_var.fill_(4.0)
        norm.num_batches_tracked.fill_(100)
    model.bert.pooler.activation = nn.Sequential(norm, nn.Tanh())
    return model


def train_briefly(method, model, batch, steps: int = 2):
    """``steps`` optimizer steps on ``batch``; returns the module in eval mode."""
    module = method.prepare(model, BN_HEAD)
    optimizer = method.make_optimizer(module, {"learning_rate": 1e-2, "weight_decay": 0.0})
    module.train()
    for step in range(steps):
        method.begin_step(module, step)
        loss = module(**batch).loss
        penalty = method.penalty(module)
        (loss if penalty is None else loss + penalty).backward()
        optimizer.step()
        optimizer.zero_grad()
    return module.eval()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_stores_the_batchnorm_statistics_it_trained_with(name, tiny_batch, tmp_path):
    from diffprune.projection import FixedMaskFinetuning

    from diffprune.artifact import ArtifactIdentity, load_task_model

    cls = method_class(name)
    trains = cls.reuses or name
    method = build_method(trains, **({"layers": ["layer_1"]} if trains == "critical_layers" else {}))
    base = bert_with_batchnorm()
    identity = ArtifactIdentity.of_base(base, BN_HEAD)
    module = train_briefly(method, base, tiny_batch)
    if cls.projected:
        # What the method stores per task is the prune phase's sparse diff: fixed-mask
        # finetuning of the projected diff, which updates the statistics again.
        method = FixedMaskFinetuning(method.dense_diff(module), rate=10.0)
        module = train_briefly(method, bert_with_batchnorm(), tiny_batch)
    [norm] = [m for m in module.modules() if isinstance(m, nn.BatchNorm1d)]
    # training moved the statistics away from the pretrained ones
    assert not torch.equal(norm.running_mean, torch.full_like(norm.running_mean, -2.0))
    assert int(norm.num_batches_tracked) == 102

    payload = method.save(module, tmp_path, identity)["payload"]["file"]
    stored = {key.removeprefix("buffer."): value for key, value in load_file(Path(tmp_path, payload)).items()}
    [loaded_norm] = [m for m in load_task_model(tmp_path, bert_with_batchnorm()).modules()
                     if isinstance(m, nn.BatchNorm1d)]
    for statistic in ("running_mean", "running_var", "num_batches_tracked"):
        [value] = [v for k, v in stored.items() if k.endswith(f"pooler.activation.0.{statistic}")]
        assert torch.equal(value, getattr(norm, statistic)), statistic
        assert torch.equal(getattr(loaded_norm, statistic), getattr(norm, statistic)), statistic
