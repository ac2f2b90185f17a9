"""Shared fixtures: tiny random models built from configs (no downloads), fixed seeds."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    values = dict(vocab_size=99, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=64, type_vocab_size=2,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    values.update(overrides)
    return BertConfig(**values)


@pytest.fixture
def tiny_bert():
    """A 2-layer BERT sequence classifier with random weights (seed 0), its ``classifier``
    marked as the new head (as ``load_pretrained`` marks what a checkpoint lacks)."""
    from transformers import BertForSequenceClassification

    from diffprune.models import mark_new_parameters

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    mark_new_parameters(model, ["classifier.weight", "classifier.bias"])
    return model


@pytest.fixture
def tiny_batch():
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1, 99, (4, 8), generator=g),
            "attention_mask": torch.ones(4, 8, dtype=torch.long),
            "labels": torch.tensor([0, 1, 0, 1])}


@pytest.fixture
def glue_dir():
    """The offline GLUE copy, when the environment names one (CI does)."""
    path = os.environ.get("GLUE_DIR")
    if not path or not os.path.isdir(path):
        pytest.skip("GLUE_DIR not set to a local glue_data folder")
    return path


@pytest.fixture
def squad_dir():
    path = os.environ.get("SQUAD_DIR")
    if not path or not os.path.isdir(path):
        pytest.skip("SQUAD_DIR not set to a local SQuAD folder")
    return path
