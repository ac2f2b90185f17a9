"""A task as a shareable folder, in the ecosystem's verbs.

    save_pretrained(task_model, "sst2-diff/", model_id="sentence-transformers/all-MiniLM-L6-v2", task="sst2")
    model = from_pretrained("sentence-transformers/all-MiniLM-L6-v2", "sst2-diff/")   # base: Hub id,
    model = from_pretrained(base_model, "user/sst2-diff")                            # folder or model
    merge(base, "sst2-diff/", "sst2-standalone/")   # a plain Hugging Face model folder, base + diff

The folder holds ``diff.safetensors`` (the version-3 sparse diff with the task head) and
``diffprune_config.json`` (the base it applies to, with its fingerprint; the task, labels and
head config; how to load the architecture). ``from_pretrained`` loads the base with a fresh
head of the task's size and applies the diff, all checks of ``apply_diff_`` included (a
different base is refused). This is not a PEFT adapter: PEFT has no L0 / diff-pruning method,
and a diff is not a low-rank or additive module; ``merge`` gives a standalone model instead.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from diffprune.atomic import staged_dir, write_json
from diffprune.storage import SparseDiff, apply_diff_, load_diff, read_header, save_diff, write_diff

CONFIG_NAME = "diffprune_config.json"
DIFF_NAME = "diff.safetensors"
CONFIG_FORMAT = "diffprune.task"
CONFIG_VERSION = 1
AUTO_CLASSES = ("AutoModelForSequenceClassification", "AutoModelForQuestionAnswering")


class PretrainedFolderError(ValueError):
    """A folder that is not a diffprune task folder, or whose config does not fit its diff."""


def _head_config(model: nn.Module) -> tuple[str, dict]:
    """(Auto class, config fields of the head) of a Hugging Face task model."""
    config = model.config
    if type(model).__name__.endswith("ForQuestionAnswering"):
        return "AutoModelForQuestionAnswering", {}
    return "AutoModelForSequenceClassification", {"num_labels": config.num_labels, "problem_type": config.problem_type}


def _task_head_config(task_name: str) -> tuple[str, dict]:
    from diffprune.models import task_config_overrides
    from diffprune.tasks import get_task

    task = get_task(task_name)
    auto = "AutoModelForQuestionAnswering" if task.kind == "qa" else "AutoModelForSequenceClassification"
    return auto, task_config_overrides(task)


def save_pretrained(task_model, directory, model_id: str = "", task: str | None = None,
                    labels: list[str] | None = None, rate: float | None = None,
                    values_dtype: str | torch.dtype = torch.float32) -> Path:
    """Write ``directory`` (which must not exist, or be empty): the diff and its config.

    ``task_model``: a trained ``FixedMaskModel``, a loaded ``SparseDiff`` or the path of a
    stored diff file (a prune run's ``diff.safetensors``; its header gives model id, task,
    labels and rate). ``model_id`` names the base (a Hub id users can load it from)."""
    if isinstance(task_model, (str, Path, SparseDiff)):
        diff = task_model if isinstance(task_model, SparseDiff) else load_diff(task_model)
        header = diff.header
        task = task or header.get("task")
        if not task:
            raise PretrainedFolderError(f"{diff.source} does not say its task: pass task=")
        auto_class, head_config = _task_head_config(task)

        def write(folder: Path) -> None:
            write_diff(folder / DIFF_NAME, diff, values_dtype=values_dtype)
    else:
        auto_class, head_config = _head_config(task_model.model)

        def write(folder: Path) -> None:
            save_diff(folder / DIFF_NAME, task_model, model_id=model_id, rate=rate, values_dtype=values_dtype,
                      task=task, labels=labels)

    with staged_dir(directory) as folder:
        write(folder)
        header = read_header(folder / DIFF_NAME)
        write_json(folder / CONFIG_NAME, {
            "format": CONFIG_FORMAT, "version": CONFIG_VERSION,
            "base_model": model_id or header.get("model_id") or None,
            "base_fingerprint": header["fingerprint"], "head_pattern": header.get("head_pattern"),
            "auto_class": auto_class, "head_config": head_config,
            "task": header.get("task"), "labels": header.get("labels"), "rate": header.get("rate"),
            "diff": DIFF_NAME, "nonzeros": header["nonzeros"], "diffed_params": header["diffed_params"],
            "values_dtype": header["values_dtype"],
        })
    return Path(directory)


def read_config(directory) -> tuple[Path, dict]:
    """(local folder, its diffprune config); a Hub repo id is downloaded first."""
    folder = Path(directory)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(directory), allow_patterns=[CONFIG_NAME, DIFF_NAME]))
        except Exception as error:  # offline, no such repo, no access: one message for all
            raise PretrainedFolderError(f"{directory} is neither a local folder nor a Hub repository that could be "
                                        f"downloaded ({type(error).__name__}: {error})") from error
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise PretrainedFolderError(f"{folder} has no {CONFIG_NAME}: not a folder written by diffprune's save_pretrained")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise PretrainedFolderError(f"{path} is not JSON ({error}); copy the folder again") from error
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise PretrainedFolderError(f"{path} is not a diffprune task config (format {CONFIG_FORMAT!r})")
    if config.get("version") != CONFIG_VERSION:
        raise PretrainedFolderError(f"{path} has version {config.get('version')!r}; this diffprune reads "
                                    f"{CONFIG_VERSION}: update diffprune")
    if config.get("auto_class") not in AUTO_CLASSES:
        raise PretrainedFolderError(f"{path}: auto_class must be one of {', '.join(AUTO_CLASSES)}")
    if config.get("diff") != DIFF_NAME:
        raise PretrainedFolderError(f"{path}: the diff must be {DIFF_NAME} inside the folder")
    return folder, config


def load_base(base: str | Path, config: dict) -> nn.Module:
    """The base checkpoint (Hub id or local folder) with a fresh head of the task's size."""
    import transformers

    from diffprune.models import _expected_new_head

    auto = getattr(transformers, config["auto_class"])
    with _expected_new_head():
        return auto.from_pretrained(str(base), use_safetensors=True, **(config.get("head_config") or {}))


def from_pretrained(base: nn.Module | str | Path | None, directory, task: str | None = None,
                    labels: list[str] | None = None) -> nn.Module:
    """The task model: ``base`` (a loaded model, a Hub id or a local folder; None: the base the
    folder names) with the folder's diff and head applied, in eval mode. ``task`` / ``labels``:
    refuse a folder trained for another task."""
    folder, config = read_config(directory)
    diff = load_diff(folder / config["diff"], task=task, labels=labels)
    if diff.header.get("fingerprint") != config.get("base_fingerprint"):
        raise PretrainedFolderError(f"{folder}: {CONFIG_NAME} and {DIFF_NAME} name different base models; "
                                    "copy the folder again")
    if base is None:
        base = config.get("base_model")
        if not base:
            raise PretrainedFolderError(f"{folder / CONFIG_NAME} names no base model: pass base=")
    model = base if isinstance(base, nn.Module) else load_base(base, config)
    apply_diff_(model, diff)
    return model.eval()


def merge(base: nn.Module | str | Path | None, directory, out_dir, tokenizer_from: str | Path | None = None) -> Path:
    """A plain Hugging Face model folder (``model.safetensors`` + ``config.json``) of base +
    diff, head included, loadable with ``AutoModelFor....from_pretrained(out_dir)`` alone.
    ``tokenizer_from``: a folder or Hub id whose tokenizer is saved alongside (default: a
    ``base`` given as a name or folder)."""
    _, config = read_config(directory)
    model = from_pretrained(base, directory)
    labels = config.get("labels")
    if labels and hasattr(model.config, "id2label"):
        model.config.id2label = {i: str(label) for i, label in enumerate(labels)}
        model.config.label2id = {str(label): i for i, label in enumerate(labels)}
    tokenizer_source = tokenizer_from or (base if isinstance(base, (str, Path)) else None)
    with staged_dir(out_dir) as folder:
        model.save_pretrained(folder, safe_serialization=True)
        if tokenizer_source is not None:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(folder)
    return Path(out_dir)


def evaluate_folder(folder, config_path, task_name: str, out_path, overrides: dict | None = None) -> dict:
    """Dev scores of a task folder applied to the config's base model (a fresh load of the
    checkpoint: nothing of the run that trained it is read), written to ``out_path`` as JSON."""
    from diffprune import settings
    from diffprune.models import _checkpoint_location, load_tokenizer
    from diffprune.device import device_label, pick_device, resolve_precision
    from diffprune.evaluation import evaluate_module
    from diffprune.run_record import versions
    from diffprune.seeding import DATA_SUBSAMPLE_SEED
    from diffprune.tasks import get_task, task_label_set
    from diffprune.tasks.cache import load_task_data

    cfg = settings.load_config(config_path)
    task = get_task(task_name)
    training = settings.resolve_training(cfg, task_name, None, "train", overrides)
    if training["num_threads"]:
        torch.set_num_threads(training["num_threads"])
    base_location, model_id = _checkpoint_location(settings.model_spec(cfg))
    model = from_pretrained(base_location, folder, task=task_name, labels=task_label_set(task))
    data = load_task_data(task, load_tokenizer(base_location), settings.data_config(cfg, task_name),
                          training["max_seq_length"], max_train_examples=training["max_train_examples"],
                          max_eval_examples=training["max_eval_examples"], seed=DATA_SUBSAMPLE_SEED,
                          doc_stride=training["doc_stride"])
    device = pick_device()
    precision = resolve_precision(training["precision"], device)
    evaluation = evaluate_module(task, model.to(device), data, training, device, precision)
    _, folder_config = read_config(folder)
    result = {"task": task_name, "folder_config": folder_config, "model_id": model_id,
              "metrics": evaluation.get("metrics"), "primary_metric": task.primary_metric,
              "scores": evaluation.get("scores"), "dev_examples": data.dev_examples, "dataset_note": data.note,
              "device": device_label(device), "precision": precision, "versions": versions()}
    write_json(out_path, result)
    return result
