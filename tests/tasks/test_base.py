"""The task registry, feature containers, dynamic padding and ordered batched inference."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from diffprune.tasks import TASK_NAMES, get_task
from diffprune.tasks.base import FeatureDataset, PaddingCollator, predict_outputs

EXPECTED = {  # name: (kind, num_labels, primary_metric, columns)
    "cola": ("classification", 2, "matthews", ["cola"]),
    "sst2": ("classification", 2, "accuracy", ["sst2"]),
    "mrpc": ("classification", 2, "f1", ["mrpc"]),
    "stsb": ("regression", 1, "spearman", ["stsb"]),
    "qqp": ("classification", 2, "f1", ["qqp"]),
    "mnli": ("classification", 3, "accuracy", ["mnli_m", "mnli_mm"]),
    "qnli": ("classification", 2, "accuracy", ["qnli"]),
    "rte": ("classification", 2, "accuracy", ["rte"]),
    "squad": ("qa", None, "f1", ["squad_em", "squad_f1"]),
}


def test_task_names_are_the_benchmark():
    assert list(TASK_NAMES) == list(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_task_attributes(name):
    task = get_task(name)
    assert task.name == name
    assert (task.kind, task.num_labels, task.primary_metric, task.columns) == EXPECTED[name]


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ValueError) as error:
        get_task("sst-2")
    message = str(error.value)
    assert "sst-2" in message
    assert all(name in message for name in TASK_NAMES)


def test_feature_dataset_items_and_length_check():
    dataset = FeatureDataset({"input_ids": [[1, 2], [3]], "labels": [0, 1]})
    assert len(dataset) == 2
    assert dataset[1] == {"input_ids": [3], "labels": 1}
    with pytest.raises(ValueError):
        FeatureDataset({"input_ids": [[1]], "labels": [0, 1]})


def test_collator_pads_to_the_longest_in_the_batch():
    collate = PaddingCollator(pad_token_id=7)
    batch = collate([{"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "token_type_ids": [0, 0, 1], "labels": 1},
                     {"input_ids": [4], "attention_mask": [1], "token_type_ids": [0], "labels": 0}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]


def test_collator_float_labels_and_left_padding():
    collate = PaddingCollator(pad_token_id=0, padding_side="left")
    batch = collate([{"input_ids": [5, 6], "labels": 4.75}, {"input_ids": [5], "labels": 0.5}])
    assert batch["input_ids"].tolist() == [[5, 6], [0, 5]]
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [4.75, 0.5]


class LengthModel(nn.Module):
    """Logit 0 = the number of real tokens of each row: exposes any mix-up of example order."""

    def forward(self, input_ids, attention_mask, **_):
        lengths = attention_mask.sum(-1, keepdim=True).float()
        return {"logits": torch.cat([lengths, -lengths], dim=-1)}


def test_predict_outputs_batches_by_length_but_returns_dataset_order():
    lengths = [5, 1, 9, 3, 3, 7, 2]
    dataset = FeatureDataset({"input_ids": [[1] * n for n in lengths], "attention_mask": [[1] * n for n in lengths]})
    model = LengthModel().train()
    outputs = predict_outputs(model, dataset, PaddingCollator(0), batch_size=2, device="cpu", names=["logits"])
    assert [row[0] for row in outputs["logits"]] == lengths
    assert model.training, "the caller's train mode must be restored"


def test_collator_without_pad_token_fails_early_naming_the_fix():
    # a decoder tokenizer's pad_token_id is None; int(None) used to fail inside the first batch
    with pytest.raises(ValueError, match="no pad token.*eos_token"):
        PaddingCollator(None)
