"""The eight GLUE tasks: reading (local ``glue_data`` TSVs or the Hub), tokenisation, metrics.

Label ids follow the Hub's ``nyu-mll/glue`` encoding for every source (e.g. MNLI
entailment=0, neutral=1, contradiction=2), so a model trained on one source evaluates
correctly on the other.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import metrics as metric_functions
from .base import EvalSet, FeatureDataset, PaddingCollator, Task, TaskData, join_notes, predict_outputs
from .data import (load_hub_dataset, local_dir, read_tsv, require_file, subsample_indices,
                   subsample_note)

HUB_GLUE = "nyu-mll/glue"

METRIC_FUNCTIONS = {
    "accuracy": metric_functions.accuracy,
    "f1": metric_functions.f1_binary,
    "matthews": metric_functions.matthews,
    "pearson": metric_functions.pearson,
    "spearman": metric_functions.spearman,
}


@dataclass(frozen=True)
class EvalSplit:
    name: str            # key in TaskData.evals
    local_file: str      # file in the task's glue_data folder
    hub_split: str       # split of nyu-mll/glue
    column: str          # results-table column
    metric_suffix: str   # appended to metric names when a task has several eval sets


@dataclass(frozen=True)
class GlueSpec:
    name: str
    folder: str                              # glue_data folder name
    kind: str                                # "classification" | "regression"
    num_labels: int
    metrics: tuple[str, ...]                 # first one is the primary metric
    # Local TSV: header column names, or positions for header-less files (CoLA).
    local_text_fields: tuple[str | int, ...]
    local_label_field: str | int
    hub_text_fields: tuple[str, ...]
    label_names: tuple[str, ...] | None = None   # string labels in the TSV, in Hub id order
    local_has_header: bool = True
    # QQP's train file has a few rows with missing fields; the GLUE reference code skips them.
    skip_malformed_rows: bool = False
    eval_splits: tuple[EvalSplit, ...] = ()


def _dev(column: str) -> tuple[EvalSplit, ...]:
    return (EvalSplit("dev", "dev.tsv", "validation", column, ""),)


GLUE_SPECS: dict[str, GlueSpec] = {spec.name: spec for spec in [
    GlueSpec("cola", "CoLA", "classification", 2, ("matthews",),
             local_text_fields=(3,), local_label_field=1, hub_text_fields=("sentence",),
             local_has_header=False, eval_splits=_dev("cola")),
    GlueSpec("sst2", "SST-2", "classification", 2, ("accuracy",),
             local_text_fields=("sentence",), local_label_field="label",
             hub_text_fields=("sentence",), eval_splits=_dev("sst2")),
    GlueSpec("mrpc", "MRPC", "classification", 2, ("f1", "accuracy"),
             local_text_fields=("#1 String", "#2 String"), local_label_field="Quality",
             hub_text_fields=("sentence1", "sentence2"), eval_splits=_dev("mrpc")),
    GlueSpec("stsb", "STS-B", "regression", 1, ("spearman", "pearson"),
             local_text_fields=("sentence1", "sentence2"), local_label_field="score",
             hub_text_fields=("sentence1", "sentence2"), eval_splits=_dev("stsb")),
    GlueSpec("qqp", "QQP", "classification", 2, ("f1", "accuracy"),
             local_text_fields=("question1", "question2"), local_label_field="is_duplicate",
             hub_text_fields=("question1", "question2"), skip_malformed_rows=True,
             eval_splits=_dev("qqp")),
    GlueSpec("mnli", "MNLI", "classification", 3, ("accuracy",),
             local_text_fields=("sentence1", "sentence2"), local_label_field="gold_label",
             hub_text_fields=("premise", "hypothesis"),
             label_names=("entailment", "neutral", "contradiction"),
             eval_splits=(EvalSplit("dev_matched", "dev_matched.tsv", "validation_matched", "mnli_m", "_m"),
                          EvalSplit("dev_mismatched", "dev_mismatched.tsv", "validation_mismatched",
                                    "mnli_mm", "_mm"))),
    GlueSpec("qnli", "QNLI", "classification", 2, ("accuracy",),
             local_text_fields=("question", "sentence"), local_label_field="label",
             hub_text_fields=("question", "sentence"), label_names=("entailment", "not_entailment"),
             eval_splits=_dev("qnli")),
    GlueSpec("rte", "RTE", "classification", 2, ("accuracy",),
             local_text_fields=("sentence1", "sentence2"), local_label_field="label",
             hub_text_fields=("sentence1", "sentence2"), label_names=("entailment", "not_entailment"),
             eval_splits=_dev("rte")),
]}


@dataclass
class RawSplit:
    """Untokenised examples of one split: first/second text and the label id (or score)."""

    text_a: list[str]
    text_b: list[str] | None
    labels: list
    skipped_rows: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, indices: Sequence[int] | None) -> "RawSplit":
        if indices is None:
            return self

        def pick(values: list) -> list:
            return [values[i] for i in indices]

        return RawSplit(pick(self.text_a), pick(self.text_b) if self.text_b is not None else None,
                        pick(self.labels), self.skipped_rows)


def tokenize_texts(tokenizer, text_a: list[str], text_b: list[str] | None, max_seq_length: int,
                   chunk_size: int = 4096) -> dict[str, list]:
    """Tokenises single sentences or pairs (truncated to ``max_seq_length``), unpadded.

    Chunked so the intermediate encodings of a 400k-pair set (QQP, MNLI) never all exist at
    once; padding happens per batch in the collator.
    """
    columns: dict[str, list] = collections.defaultdict(list)
    for start in range(0, len(text_a), chunk_size):
        end = start + chunk_size
        if text_b is None:
            encoded = tokenizer(text_a[start:end], truncation=True, max_length=max_seq_length)
        else:
            encoded = tokenizer(text_a[start:end], text_b[start:end], truncation=True,
                                max_length=max_seq_length)
        for key, values in encoded.items():
            columns[key].extend(values)
    return dict(columns)


class GlueTask(Task):
    def __init__(self, spec: GlueSpec):
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        self.num_labels = spec.num_labels
        self.primary_metric = spec.metrics[0]
        self.columns = [split.column for split in spec.eval_splits]

    # --- reading ----------------------------------------------------------------------

    def _how_to_go_local(self) -> str:
        files = ", ".join(f"{self.spec.folder}/{name}" for name in self._local_files())
        return (f"set data.glue_dir in the config or the GLUE_DIR environment variable to a "
                f"local glue_data folder (holding {files})")

    def _local_files(self) -> list[str]:
        return ["train.tsv"] + [split.local_file for split in self.spec.eval_splits]

    def _parse_label(self, value: str):
        if self.kind == "regression":
            return float(value)
        if self.spec.label_names is not None:
            if value not in self.spec.label_names:
                raise ValueError(f"unknown label {value!r} (expected one of {self.spec.label_names})")
            return self.spec.label_names.index(value)
        label = int(value)
        if not 0 <= label < self.num_labels:
            raise ValueError(f"label {label} out of range for {self.num_labels} classes")
        return label

    def read_local_split(self, path: Path) -> RawSplit:
        rows = read_tsv(path)
        fields = list(self.spec.local_text_fields) + [self.spec.local_label_field]
        if self.spec.local_has_header:
            if not rows:
                raise ValueError(f"{path} is empty; expected a header row")
            header = [name.strip() for name in rows[0]]
            missing = [name for name in fields if name not in header]
            if missing:
                raise ValueError(f"{path}: header lacks column(s) {missing}; header is {header}")
            positions = [header.index(name) for name in fields]
            rows, first_line = rows[1:], 2
        else:
            positions, first_line = [int(field) for field in fields], 1
        needed = max(positions) + 1
        texts: list[list[str]] = [[] for _ in self.spec.local_text_fields]
        labels, skipped = [], 0
        for line_number, row in enumerate(rows, start=first_line):
            if not row:  # a blank line, e.g. a trailing newline
                continue
            try:
                if len(row) < needed:
                    raise ValueError(f"{len(row)} fields, need at least {needed}")
                label = self._parse_label(row[positions[-1]].strip())
            except ValueError as error:
                if self.spec.skip_malformed_rows:
                    skipped += 1
                    continue
                raise ValueError(f"{path}: line {line_number}: malformed row ({error})") from error
            for column, position in zip(texts, positions[:-1]):
                column.append(row[position])
            labels.append(label)
        if not labels:
            # Checked here, before any training: an empty dev set would otherwise fail only
            # at the evaluation after a whole training run.
            raise ValueError(f"{path} holds no data rows" + (f" ({skipped} malformed rows skipped)" if skipped else "")
                             + ": the file is truncated or empty; restore it from the GLUE download, or point "
                               "data.glue_dir / $GLUE_DIR at a complete copy")
        return RawSplit(texts[0], texts[1] if len(texts) > 1 else None, labels, skipped)

    def _read_local(self, glue_dir: Path) -> dict[str, RawSplit]:
        folder = glue_dir / self.spec.folder
        if not folder.is_dir():
            raise FileNotFoundError(
                f"GLUE task {self.name}: expected the folder {folder} in the local glue_data "
                f"directory {glue_dir} (set by data.glue_dir or $GLUE_DIR)")
        names = {"train": "train.tsv", **{split.name: split.local_file for split in self.spec.eval_splits}}
        return {split: self.read_local_split(require_file(folder / file_name, f"GLUE task {self.name}"))
                for split, file_name in names.items()}

    def _read_hub(self) -> dict[str, RawSplit]:
        dataset = load_hub_dataset(HUB_GLUE, self.spec.name, self._how_to_go_local())
        splits = {"train": "train", **{split.name: split.hub_split for split in self.spec.eval_splits}}
        raw = {}
        for split, hub_split in splits.items():
            part = dataset[hub_split]
            texts = [list(part[field]) for field in self.spec.hub_text_fields]
            labels = [float(v) for v in part["label"]] if self.kind == "regression" else list(part["label"])
            raw[split] = RawSplit(texts[0], texts[1] if len(texts) > 1 else None, labels)
        return raw

    def local_data_files(self, data_cfg: Mapping[str, Any] | None) -> list[Path] | None:
        glue_dir = local_dir(data_cfg, "glue_dir", "GLUE_DIR")
        if glue_dir is None:
            return None
        files = [glue_dir / self.spec.folder / name for name in self._local_files()]
        return files if all(path.is_file() for path in files) else None

    def read_raw(self, data_cfg: Mapping[str, Any] | None) -> tuple[dict[str, RawSplit], str]:
        glue_dir = local_dir(data_cfg, "glue_dir", "GLUE_DIR")
        if glue_dir is not None:
            return self._read_local(glue_dir), "local"
        return self._read_hub(), "hub"

    # --- features ---------------------------------------------------------------------

    def _features(self, tokenizer, raw: RawSplit, max_seq_length: int) -> FeatureDataset:
        columns = tokenize_texts(tokenizer, raw.text_a, raw.text_b, max_seq_length)
        columns["labels"] = list(raw.labels)
        return FeatureDataset(columns)

    def load(self, tokenizer, data_cfg: Mapping[str, Any] | None, max_seq_length: int,
             max_train_examples: int | None = None, max_eval_examples: int | None = None,
             seed: int = 0, doc_stride: int = 128) -> TaskData:
        del doc_stride  # sliding windows are a QA concern; GLUE truncates
        raw, source = self.read_raw(data_cfg)
        notes = []
        if raw["train"].skipped_rows:
            notes.append(f"skipped {raw['train'].skipped_rows} malformed train rows")
        train_total = len(raw["train"])
        train_indices = subsample_indices(train_total, max_train_examples, seed)
        train_raw = raw["train"].select(train_indices)
        if train_indices is not None:
            notes.append(subsample_note("train", len(train_raw), train_total, seed))

        evals = {}
        for split in self.spec.eval_splits:
            full = raw[split.name]
            if full.skipped_rows:
                notes.append(f"skipped {full.skipped_rows} malformed {split.name} rows")
            indices = subsample_indices(len(full), max_eval_examples, seed)
            chosen = full.select(indices)
            if indices is not None:
                notes.append(subsample_note(split.name, len(chosen), len(full), seed))
            evals[split.name] = EvalSet(
                name=split.name, dataset=self._features(tokenizer, chosen, max_seq_length),
                num_examples=len(chosen), num_examples_total=len(full), column=split.column,
                metric_suffix=split.metric_suffix, labels=list(chosen.labels))

        return TaskData(
            train=self._features(tokenizer, train_raw, max_seq_length), evals=evals,
            collate=PaddingCollator(tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right")),
            train_examples=len(train_raw), train_examples_total=train_total,
            dev_examples=sum(e.num_examples for e in evals.values()),
            dev_examples_total=sum(e.num_examples_total for e in evals.values()),
            note=join_notes(notes), source=source)

    # --- scoring ----------------------------------------------------------------------

    def compute_metrics(self, predictions: Sequence, labels: Sequence) -> dict[str, float]:
        """All of this task's metrics (percent) for one eval set, primary metric first."""
        return {name: METRIC_FUNCTIONS[name](predictions, labels) for name in self.spec.metrics}

    def _report(self, data: TaskData, predictions: Mapping[str, Sequence]) -> dict:
        all_metrics, scores = {}, {}
        for name, eval_set in data.evals.items():
            values = self.compute_metrics(predictions[name], eval_set.labels)
            all_metrics.update({metric + eval_set.metric_suffix: value for metric, value in values.items()})
            scores[eval_set.column] = values[self.primary_metric]
        return {"metrics": all_metrics, "scores": scores}

    def predict(self, model: nn.Module, eval_set: EvalSet, collate, batch_size: int = 64,
                device: str | torch.device = "cpu") -> np.ndarray:
        """Class ids (classification) or scores (regression) for every example of ``eval_set``."""
        logits = np.stack(predict_outputs(model, eval_set.dataset, collate, batch_size, device,
                                          ["logits"])["logits"])
        if self.kind == "regression":
            return logits.reshape(len(logits), -1)[:, 0]
        return logits.argmax(axis=-1)

    def evaluate(self, model: nn.Module, data: TaskData, batch_size: int = 64,
                 device: str | torch.device = "cpu") -> dict:
        predictions = {name: self.predict(model, eval_set, data.collate, batch_size, device)
                       for name, eval_set in data.evals.items()}
        return self._report(data, predictions)

    def majority_baseline(self, data: TaskData) -> dict:
        """A constant predictor fitted on the TRAIN labels: the majority class (ties: the
        smallest id), or for regression the mean score (correlations are then 0.0)."""
        train_labels = data.train.column("labels")
        if self.kind == "regression":
            constant = float(np.mean(train_labels))
        else:
            counts = collections.Counter(train_labels)
            constant = max(counts, key=lambda label: (counts[label], -label))
        predictions = {name: [constant] * eval_set.num_examples for name, eval_set in data.evals.items()}
        return self._report(data, predictions)
