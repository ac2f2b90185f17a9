"""What every task shares: the loaded-data containers, dynamic padding, batched inference.

A ``Task`` turns raw examples (local files or the Hub) into model-ready feature dicts,
evaluates a model on its dev set(s), and reports ``{"metrics": ..., "scores": ...}`` where
``scores`` is keyed by the results-table columns (``task.columns``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset


class FeatureDataset(Dataset):
    """Column-oriented features; item ``i`` is ``{column: values[i]}`` (lists and numbers).

    Columns rather than a list of dicts: one Python list per column is several times
    smaller than one dict per example for the 67k-400k example GLUE training sets.
    """

    def __init__(self, columns: Mapping[str, Sequence[Any]]):
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"feature columns differ in length: {lengths}")
        self.columns = {name: list(values) for name, values in columns.items()}
        self._length = next(iter(lengths.values()), 0)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {name: values[index] for name, values in self.columns.items()}

    def column(self, name: str) -> list:
        return self.columns[name]


class PaddingCollator:
    """Pads every list-valued feature to the longest in the batch; numbers become a tensor.

    ``input_ids`` pad with the tokenizer's pad id, everything else (attention mask, token
    type ids) with 0, so padded positions are masked out. Integer values give LongTensors,
    floats (STS-B scores) FloatTensors. A class, not a closure, so DataLoader workers can
    pickle it.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if pad_token_id is None:
            # The usual case for decoder tokenizers; fail before the first batch, not inside it.
            raise ValueError("the tokenizer has no pad token, so batches cannot be padded: set one (e.g. "
                             "tokenizer.pad_token = tokenizer.eos_token, and model.config.pad_token_id to "
                             "match), as diffprune.models.load_pretrained does")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        batch: dict[str, torch.Tensor] = {}
        for name in features[0]:
            values = [feature[name] for feature in features]
            if isinstance(values[0], (list, tuple)):
                batch[name] = self._pad(name, values)
            else:
                batch[name] = torch.tensor(values)
        return batch

    def _pad(self, name: str, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        longest = max(len(sequence) for sequence in sequences)
        pad_value = self.pad_token_id if name == "input_ids" else 0
        padded = torch.full((len(sequences), longest), pad_value, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            if not sequence:
                continue
            values = torch.as_tensor(sequence, dtype=torch.long)
            if self.padding_side == "right":
                padded[row, : len(sequence)] = values
            else:
                padded[row, longest - len(sequence):] = values
        return padded


@dataclass
class EvalSet:
    """One evaluation set: model inputs plus what its metrics need.

    ``column`` / ``metric_suffix`` say where its primary metric goes (MNLI matched ->
    column ``mnli_m``, metric ``accuracy_m``; SQuAD -> ``squad_f1``). QA sets carry their examples and, per feature, the example it
    came from and the character offsets of its context tokens (None elsewhere).
    """

    name: str
    dataset: FeatureDataset
    num_examples: int
    num_examples_total: int
    column: str
    metric_suffix: str = ""
    labels: list | None = None
    examples: list[dict] | None = None
    feature_example_index: list[int] | None = None
    feature_offsets: list[list[tuple[int, int] | None]] | None = None

    def __len__(self) -> int:
        return len(self.dataset)


@dataclass
class TaskData:
    """Everything ``Task.load`` produces; counts are examples (SQuAD: questions), not features."""

    train: FeatureDataset
    evals: dict[str, EvalSet]
    collate: Callable[[Sequence[Mapping[str, Any]]], dict[str, torch.Tensor]]
    train_examples: int
    train_examples_total: int
    dev_examples: int
    dev_examples_total: int
    note: str = ""
    source: str = ""          # "local" or "hub"
    details: dict = field(default_factory=dict)


def join_notes(parts: Sequence[str]) -> str:
    return "; ".join(part for part in parts if part)


def _output_field(outputs: Any, name: str) -> torch.Tensor:
    """``outputs.<name>`` for HF ModelOutputs and plain dicts alike."""
    value = getattr(outputs, name, None)
    if value is None and isinstance(outputs, Mapping):
        value = outputs.get(name)
    if value is None:
        raise TypeError(f"model output has no {name!r}; got {type(outputs).__name__}")
    return value


def predict_outputs(model: nn.Module, dataset: FeatureDataset, collate: Callable, batch_size: int,
                    device: str | torch.device, names: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """Runs ``model(**batch)`` over ``dataset``; per example, the named outputs, in dataset order.

    Batches are drawn from the examples sorted by length, so each is padded only to
    similar lengths (evaluation is several times faster than in file order on GLUE's
    mixed-length sets); results are put back in dataset order. Per-token outputs keep the
    batch's padded length; callers trim them. The model runs in eval mode under
    ``no_grad`` and its previous train/eval mode is restored afterwards, so an evaluation
    in the middle of training does not silently switch dropout off for the rest of the run.
    """
    lengths = [len(ids) for ids in dataset.column("input_ids")]
    order = sorted(range(len(dataset)), key=lengths.__getitem__)
    results: dict[str, list] = {name: [None] * len(dataset) for name in names}
    loader = DataLoader(Subset(dataset, order), batch_size=batch_size, shuffle=False, collate_fn=collate)
    was_training = model.training
    model.eval()
    position = 0
    try:
        with torch.no_grad():
            for batch in loader:
                batch = {key: value.to(device) for key, value in batch.items()}
                outputs = model(**batch)
                for name in names:
                    values = _output_field(outputs, name).detach().float().cpu().numpy()
                    for offset, row in enumerate(values):
                        results[name][order[position + offset]] = row
                position += len(next(iter(batch.values())))
    finally:
        model.train(was_training)
    return results


class Task:
    """A benchmark task; subclasses implement ``load``, ``evaluate`` and ``majority_baseline``."""

    name: str
    kind: str                     # "classification" | "regression" | "qa"
    num_labels: int | None        # 1 for regression, None for QA
    primary_metric: str
    columns: list[str]            # results-table columns this task reports

    def load(self, tokenizer, data_cfg: Mapping[str, Any] | None, max_seq_length: int,
             max_train_examples: int | None = None, max_eval_examples: int | None = None,
             seed: int = 0, doc_stride: int = 128) -> TaskData:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, data: TaskData, batch_size: int = 64,
                 device: str | torch.device = "cpu") -> dict:
        raise NotImplementedError

    def local_data_files(self, data_cfg: Mapping[str, Any] | None) -> list | None:
        """The local files ``load`` would read (what the feature cache keys on); None when the
        data would come from the Hub or a file is missing (``load`` then says which)."""
        return None

    def majority_baseline(self, data: TaskData) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
