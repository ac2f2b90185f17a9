"""diffprune/artifact.py: every method stores its task as one payload + artifact.json, and a
fresh base model plus that pair gives the trained model back.

Every registered method trains a couple of steps on the tiny random BERT (diffprune/tiny_models.py),
is saved, and is loaded onto a fresh base: the outputs must be the trained model's, bit for
bit. What a projected method stores per task is its prune run's sparse diff, so those train
their phase first, then fixed-mask finetune, as the runner does.
"""
from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from diffprune.artifact import (ARTIFACT_NAME, STATE_FORMAT, STATE_NAME, ArtifactError, ArtifactIdentity,
                                load_task_model, read_artifact)
from diffprune.handover import DENSE_DIFF_NAME, float_buffers, head_state
from diffprune.methods import Method
from diffprune.projection import FixedMaskFinetuning
from diffprune.registry import METHODS, build_method, method_class
from diffprune.storage import BaseModelMismatch, DiffFileError, TaskMismatch
from diffprune.tasks import get_task, task_label_set
from diffprune.tiny_models import build_tiny, tiny_vocab

TASK = get_task("rte")
LABELS = task_label_set(TASK)


def fresh_base(seed: int = 0, head_seed: int = 123) -> nn.Module:
    """The tiny BERT as loaded: the body depends on ``seed`` only, the new head on ``head_seed``."""
    torch.manual_seed(head_seed)
    model, _, _ = build_tiny("tiny-random", TASK, seed)
    return model


def batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, len(tiny_vocab()), (4, 12), generator=g),
            "attention_mask": torch.ones(4, 12, dtype=torch.long), "labels": torch.tensor([0, 1, 1, 0])}


def train(method: Method, module: nn.Module, steps: int = 2) -> nn.Module:
    optimizer = method.make_optimizer(module, {"learning_rate": 1e-2, "weight_decay": 0.0})
    module.train()
    for step in range(steps):
        method.begin_step(module, step)
        loss = module(**batch(step)).loss
        penalty = method.penalty(module)
        (loss if penalty is None else loss + penalty).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return module.eval()


@torch.no_grad()
def logits(module: nn.Module) -> torch.Tensor:
    return module.eval()(**{k: v for k, v in batch(99).items() if k != "labels"}).logits


def identity(model: nn.Module, name: str, **fields) -> ArtifactIdentity:
    return ArtifactIdentity.of_base(model, model_id="tiny-random-bert", task="rte", labels=LABELS, method=name,
                                    **fields)


def ranking_file(tmp_path):
    """A full-finetuning stats.json that ranks layer_1 first (critical_layers reads it)."""
    path = tmp_path / "ranking" / "stats.json"
    path.parent.mkdir()
    distances = {"embeddings": 0.1, "layer_0": 0.2, "layer_1": 0.5}
    path.write_text(json.dumps({"per_layer_distance": {k: {"relative_l2": v, "angle_deg": v} for k, v in distances.items()}}))
    return path


def trained_and_saved(name: str, tmp_path, out_dir) -> torch.Tensor:
    """Train method ``name`` as its runs do, save its task into ``out_dir``; return the logits."""
    cls = method_class(name)
    trains = cls.reuses or name
    options = {"ranking": str(ranking_file(tmp_path))} if trains == "critical_layers" else {}
    method = build_method(trains, **options)
    base = fresh_base()
    run_identity = identity(base, name)
    buffers_before = float_buffers(base)
    module = train(method, method.prepare(base, run_identity.head_pattern))
    if cls.projected:
        # The prune run: a fresh base with the handed-over head, the diff projected to 10%.
        prune_base = fresh_base(head_seed=7)
        prune_base.load_state_dict(head_state(base, run_identity.head_pattern, buffers_before), strict=False)
        method = FixedMaskFinetuning(method.dense_diff(module), rate=10.0)
        module = train(method, method.prepare(prune_base, run_identity.head_pattern))
        run_identity = identity(prune_base, name, phase="prune", rate=10.0)
    trained = logits(module)
    method.save(module, out_dir, run_identity)
    if trains == "critical_layers":
        (tmp_path / "ranking" / "stats.json").unlink()  # loading must not need another run's files
    return trained


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_saves_one_pair_that_a_fresh_base_loads_exactly(name, tmp_path):
    out = tmp_path / "run"
    trained = trained_and_saved(name, tmp_path, out)
    config = json.loads((out / ARTIFACT_NAME).read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted([ARTIFACT_NAME, config["payload"]["file"]])
    assert config["format"] == "diffprune.artifact" and config["version"] == 1
    assert config["method"] == name and config["task"] == "rte" and config["labels"] == LABELS
    assert config["base"]["model_id"] == "tiny-random-bert" and config["base"]["fingerprint"].startswith("sha256:")
    assert config["payload"]["bytes"] == (out / config["payload"]["file"]).stat().st_size
    projected = method_class(name).projected
    assert (config["payload"]["file"], config["stored_by"]) == (
        ("diff.safetensors", "fixed_mask") if projected else (STATE_NAME, method_class(name).reuses or name))

    loaded = load_task_model(out, fresh_base(head_seed=5), task="rte", labels=LABELS)
    assert not loaded.training
    assert torch.equal(logits(loaded), trained)


def test_the_l0_phase_stores_its_dense_diff_and_loads_from_it(tmp_path):
    method = build_method("diff_pruning", alpha_init=2.0)
    base = fresh_base()
    run_identity = identity(base, "diff_pruning")
    module = train(method, method.prepare(base, run_identity.head_pattern), steps=3)
    trained = logits(module)
    config = method.save(module, tmp_path / "l0", run_identity)
    assert config["payload"]["file"] == DENSE_DIFF_NAME and config["payload"]["kind"] == "dense_diff"
    loaded = load_task_model(tmp_path / "l0", fresh_base(head_seed=5), task="rte")
    # theta_0 + z * w is one fused multiply-add where the hardware has one; the stored delta
    # is z * w rounded first: equal up to the last bit of a weight, not bit for bit.
    assert torch.allclose(logits(loaded), trained, rtol=0, atol=1e-5)

    # A run that handed its dense diff over already takes that file as its payload as it is.
    (tmp_path / "handed").mkdir()
    (tmp_path / "handed" / DENSE_DIFF_NAME).write_bytes((tmp_path / "l0" / DENSE_DIFF_NAME).read_bytes())
    method.save(module, tmp_path / "handed", run_identity, dense_diff=DENSE_DIFF_NAME)
    assert (tmp_path / "handed" / DENSE_DIFF_NAME).read_bytes() == (tmp_path / "l0" / DENSE_DIFF_NAME).read_bytes()
    # the dense diff on its own is the hand-over, not a task file: refused, saying what to pass
    with pytest.raises(DiffFileError, match="is a dense diff .* pass its run directory"):
        read_artifact(_alone(tmp_path, DENSE_DIFF_NAME))


def _alone(tmp_path, name, source="l0"):
    """A copy of ``source``'s payload ``name`` in a folder without artifact.json."""
    folder = tmp_path / f"alone-{name}"
    folder.mkdir()
    (folder / name).write_bytes((tmp_path / source / name).read_bytes())
    return folder / name


class FreezeAllButNorms(Method):
    """A baseline written without any save / load code: layer norms and the head train."""

    name = "norms_only"

    def prepare(self, model, head_pattern):
        from diffprune.layers import is_head

        for name, param in model.named_parameters():
            param.requires_grad_("LayerNorm" in name or is_head(name, head_pattern))
        return model


def test_a_new_baseline_is_saved_loaded_and_evaluated_without_code_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "norms_only", f"{__name__}:FreezeAllButNorms")
    method = build_method("norms_only")
    base = fresh_base()
    run_identity = identity(base, "norms_only")
    module = train(method, method.prepare(base, run_identity.head_pattern))
    method.save(module, tmp_path, run_identity)
    stored = load_file(str(tmp_path / STATE_NAME))
    assert all(key.startswith("param.") and ("LayerNorm" in key or "classifier" in key) for key in stored)
    assert torch.equal(logits(load_task_model(tmp_path / ARTIFACT_NAME, fresh_base(head_seed=5))), logits(module))


@pytest.fixture
def bitfit_run(tmp_path):
    out = tmp_path / "bitfit"
    trained_and_saved("bitfit", tmp_path, out)
    return out


def test_another_base_is_refused_before_anything_changes(bitfit_run, tmp_path):
    other = fresh_base(seed=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(BaseModelMismatch, match=r"trained on base model tiny-random-bert .* load it onto the same "
                                                r"pretrained weights \(evaluate: a config, or --model-key"):
        load_task_model(bitfit_run, other)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())

    pruned = tmp_path / "pruned"
    trained_and_saved("diff_pruning", tmp_path, pruned)
    with pytest.raises(BaseModelMismatch, match="load the same pretrained weights"):
        load_task_model(pruned, fresh_base(seed=1))


def test_another_task_is_refused(bitfit_run):
    with pytest.raises(TaskMismatch, match="is an artifact for task 'rte', not 'mrpc'"):
        load_task_model(bitfit_run, fresh_base(), task="mrpc")


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[: len(data) // 2], "is truncated"),
    (lambda data: b"", "is empty"),
    (lambda data: data[:-4] + bytes(b ^ 0xFF for b in data[-4:]), "do not match the checksum .* corrupted"),
])
def test_a_damaged_payload_is_refused_naming_the_file(bitfit_run, damage, message):
    payload = bitfit_run / STATE_NAME
    payload.write_bytes(damage(payload.read_bytes()))
    with pytest.raises(ArtifactError, match=message) as refused:
        load_task_model(bitfit_run, fresh_base())
    assert STATE_NAME in str(refused.value)


def _edit_config(run, edit) -> None:
    path = run / ARTIFACT_NAME
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("edit, message", [
    (lambda path: path.write_text('{"format": "diffprune.artif'), "cannot be read as JSON .* truncated"),
    (lambda path: path.write_text("[]"), "not a diffprune artifact config"),
    (lambda path: _edit_config(path.parent, lambda c: c.update(version=99)), "version 99.*update diffprune"),
    (lambda path: _edit_config(path.parent, lambda c: c["payload"].update(file="../bitfit/task_state.safetensors")),
     "not a file beside it"),
    (lambda path: _edit_config(path.parent, lambda c: c.pop("base")), "lacks base.fingerprint"),
    (lambda path: _edit_config(path.parent, lambda c: c["payload"].update(sha256="sha256:0")),
     "is not the payload its artifact.json was written with"),
    (lambda path: _edit_config(path.parent, lambda c: c["load_options"].update(learning_rate=-1)),
     "cannot be rebuilt from its stored options"),
])
def test_a_broken_config_is_refused(bitfit_run, edit, message):
    edit(bitfit_run / ARTIFACT_NAME)
    with pytest.raises(ArtifactError, match=message):
        load_task_model(bitfit_run, fresh_base())


def test_stored_tensors_must_fit_the_structure_prepare_builds(tmp_path):
    run = tmp_path / "lora"
    trained_and_saved("lora", tmp_path, run)
    _edit_config(run, lambda c: c["load_options"].update(rank=4))
    with pytest.raises(ArtifactError, match=r"lora_A.* in the payload, .* in the model"):
        load_task_model(run, fresh_base())
    _edit_config(run, lambda c: c["load_options"].update(rank=8, target_modules=["query"]))
    with pytest.raises(ArtifactError, match=r"stored, not in the model: \[.*value"):
        load_task_model(run, fresh_base())


def test_a_payload_alone_loads_only_where_it_describes_itself(bitfit_run, tmp_path):
    pruned = tmp_path / "pruned"
    trained = trained_and_saved("diff_pruning", tmp_path, pruned)
    # a sparse diff on its own (as runs stored tasks before artifacts) still loads
    alone = _alone(tmp_path, "diff.safetensors", source="pruned")
    assert read_artifact(alone).config["stored_by"] == "fixed_mask"
    assert torch.equal(logits(load_task_model(alone, fresh_base(), task="rte", labels=LABELS)), trained)
    # given by its file name inside its run, the config beside it is used
    assert read_artifact(pruned / "diff.safetensors").source == str(pruned / "diff.safetensors")
    assert read_artifact(pruned / "diff.safetensors").config["method"] == "diff_pruning"
    # a task_state payload needs its config, which says which method rebuilds the model
    with pytest.raises(ArtifactError, match="without the artifact.json .* pass the run directory"):
        read_artifact(_alone(tmp_path, STATE_NAME, source="bitfit"))
    with pytest.raises(FileNotFoundError, match="no artifact.json there"):
        read_artifact(tmp_path)


def test_loading_unpickles_nothing(bitfit_run, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    load_task_model(bitfit_run, fresh_base())
    with open(bitfit_run / STATE_NAME, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        assert json.loads(handle.read(header_length))["__metadata__"]["format"] == STATE_FORMAT
