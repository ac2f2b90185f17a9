"""Tokenise a task's data once, not in every job.

Every job of a run set used to read and tokenise its task's files again (MNLI: 393k pairs,
about a minute per job). ``load_task_data`` keeps what ``Task.load`` produced in a cache
folder, keyed by everything that decides it: the task, the data files (path, size,
modification time), the tokenizer (its full serialised definition), ``max_seq_length``,
``doc_stride``, the subsample sizes and seed, and this module's ``FEATURE_FORMAT``. The
first job with a key tokenises and writes the entry; every later job memory-maps it.

The cache is used where ``$DIFFPRUNE_FEATURE_CACHE`` names a folder (the workflow sets
``resources/features``), for local data and fast tokenizers only: Hub datasets are not
pinned by a file identity, and a slow tokenizer has no cheap complete fingerprint.

An entry is a folder: ``meta.json`` (the key, counts, notes and whatever else is not a
number column) and one ``.npy`` file per column, ragged columns (token ids per example) as
``NAME.values.npy`` + ``NAME.offsets.npy``. Entries are written to a temporary folder and
renamed into place, so a reader never sees half an entry and two jobs racing to write the
same key both end with a complete one. Nothing is unpickled (``allow_pickle=False``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from diffprune.atomic import staged_dir

from .base import EvalSet, FeatureDataset, PaddingCollator, TaskData

FEATURE_FORMAT = 1
CACHE_ENV = "DIFFPRUNE_FEATURE_CACHE"


def cache_root() -> Path | None:
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else None


def tokenizer_fingerprint(tokenizer) -> str | None:
    """sha256 of a fast tokenizer's complete definition (vocabulary, normaliser, templates)
    and the settings outside it that change features; None for a slow tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    definition = json.loads(backend.to_str())
    # Truncation and padding are per-call state that every call sets (to max_seq_length,
    # which the key holds anyway): not part of what the tokenizer is.
    definition.pop("truncation", None)
    definition.pop("padding", None)
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode())
    digest.update(json.dumps([type(tokenizer).__name__, getattr(tokenizer, "padding_side", None),
                              tokenizer.pad_token_id, tokenizer.cls_token_id]).encode())
    return digest.hexdigest()


def file_identity(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def load_task_data(task, tokenizer, data_cfg: Mapping[str, Any] | None, max_seq_length: int,
                   max_train_examples: int | None, max_eval_examples: int | None, seed: int,
                   doc_stride: int) -> TaskData:
    """``task.load(...)`` through the feature cache (a plain ``task.load`` where it does not apply)."""
    arguments = dict(max_train_examples=max_train_examples, max_eval_examples=max_eval_examples,
                     seed=seed, doc_stride=doc_stride)
    root, files = cache_root(), task.local_data_files(data_cfg)
    fingerprint = tokenizer_fingerprint(tokenizer)
    if root is None or files is None or fingerprint is None:
        return task.load(tokenizer, data_cfg, max_seq_length, **arguments)
    key = {"format": FEATURE_FORMAT, "task": task.name, "files": [file_identity(f) for f in files],
           "tokenizer": fingerprint, "max_seq_length": max_seq_length, **arguments}
    entry = root / task.name / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    collate = PaddingCollator(tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right"))
    if (entry / "meta.json").is_file():
        cached = read_entry(entry, collate)
        if cached is not None and cached[0] == key:
            return cached[1]
    data = task.load(tokenizer, data_cfg, max_seq_length, **arguments)
    write_entry(entry, key, data)
    return data


# ----------------------------------------------------------------------------- columns

def _is_ragged(values: Sequence) -> bool:
    return len(values) > 0 and isinstance(values[0], (list, tuple, np.ndarray))


def _save_column(folder: Path, name: str, values: Sequence) -> str:
    if _is_ragged(values):
        lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
        flat = np.fromiter((x for v in values for x in v), dtype=np.int64, count=int(lengths.sum()))
        np.save(folder / f"{name}.values.npy", flat.astype(np.int32) if flat.size and
                np.abs(flat).max() < 2**31 else flat)
        np.save(folder / f"{name}.offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))
        return "ragged"
    array = np.asarray(values)
    if array.dtype == object:
        raise TypeError(f"feature column {name!r} is neither numbers nor lists of numbers")
    np.save(folder / f"{name}.npy", array)
    return "flat"


def _load_column(folder: Path, name: str, kind: str) -> list:
    if kind == "ragged":
        values = np.load(folder / f"{name}.values.npy", mmap_mode="r", allow_pickle=False)
        offsets = np.load(folder / f"{name}.offsets.npy", allow_pickle=False)
        return [values[start:end].tolist() for start, end in zip(offsets[:-1], offsets[1:])]
    return np.load(folder / f"{name}.npy", allow_pickle=False).tolist()


def _save_dataset(folder: Path, prefix: str, dataset: FeatureDataset) -> dict[str, str]:
    return {name: _save_column(folder, f"{prefix}.{name}", values) for name, values in dataset.columns.items()}


def _load_dataset(folder: Path, prefix: str, kinds: Mapping[str, str]) -> FeatureDataset:
    return FeatureDataset({name: _load_column(folder, f"{prefix}.{name}", kind) for name, kind in kinds.items()})


def _offsets_to_json(offsets: list | None):
    return None if offsets is None else [[None if pair is None else list(pair) for pair in feature]
                                         for feature in offsets]


def _offsets_from_json(offsets: list | None):
    return None if offsets is None else [[None if pair is None else tuple(pair) for pair in feature]
                                         for feature in offsets]


# ----------------------------------------------------------------------------- entries

def write_entry(entry: Path, key: dict, data: TaskData) -> None:
    """Write ``data`` as the cache entry ``entry`` (atomically; a concurrent writer's
    complete entry is kept)."""
    try:
        with staged_dir(entry) as staging:
            _write_entry_files(staging, key, data)
    except FileExistsError:
        if not (entry / "meta.json").is_file():
            raise
        # another job wrote the same key first: its entry is complete and equal


def _write_entry_files(staging: Path, key: dict, data: TaskData) -> None:
    evals = {}
    for index, (name, eval_set) in enumerate(data.evals.items()):
        evals[name] = {
            "prefix": f"eval{index}", "columns": _save_dataset(staging, f"eval{index}", eval_set.dataset),
            "num_examples": eval_set.num_examples, "num_examples_total": eval_set.num_examples_total,
            "column": eval_set.column, "metric_suffix": eval_set.metric_suffix, "labels": eval_set.labels,
            "examples": eval_set.examples, "feature_example_index": eval_set.feature_example_index,
            "feature_offsets": _offsets_to_json(eval_set.feature_offsets)}
    meta = {"key": key, "train_columns": _save_dataset(staging, "train", data.train), "evals": evals,
            "train_examples": data.train_examples, "train_examples_total": data.train_examples_total,
            "dev_examples": data.dev_examples, "dev_examples_total": data.dev_examples_total,
            "note": data.note, "source": data.source, "details": data.details}
    (staging / "meta.json").write_text(json.dumps(meta))


def read_entry(entry: Path, collate) -> tuple[dict, TaskData] | None:
    """(key, data) of a cache entry; None when it cannot be read (it is then rebuilt)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        evals = {
            name: EvalSet(name=name, dataset=_load_dataset(entry, spec["prefix"], spec["columns"]),
                          num_examples=spec["num_examples"], num_examples_total=spec["num_examples_total"],
                          column=spec["column"], metric_suffix=spec["metric_suffix"], labels=spec["labels"],
                          examples=spec["examples"], feature_example_index=spec["feature_example_index"],
                          feature_offsets=_offsets_from_json(spec["feature_offsets"]))
            for name, spec in meta["evals"].items()}
        data = TaskData(train=_load_dataset(entry, "train", meta["train_columns"]), evals=evals, collate=collate,
                        train_examples=meta["train_examples"], train_examples_total=meta["train_examples_total"],
                        dev_examples=meta["dev_examples"], dev_examples_total=meta["dev_examples_total"],
                        note=meta["note"], source=meta["source"], details=meta["details"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta["key"], data
