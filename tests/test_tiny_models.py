"""diffprune/tiny_models.py: the tiny random BERT and Llama, built in memory for tests and
smoke runs, through the loader's ``tiny-random`` / ``tiny-random-llama`` sources."""
from __future__ import annotations

import pytest
import torch

from diffprune import models
from diffprune.tasks import get_task
from diffprune.tiny_models import (TINY_RANDOM_LLAMA_MODEL_ID, TINY_RANDOM_MODEL_ID, build_tiny, build_tiny_tokenizer,
                                   tiny_config)
from tests.test_models import TINY, collated_pairs, encoder_state


def test_tiny_tokenizer_splits_english_into_characters():
    tokenizer = build_tiny_tokenizer()
    assert tokenizer.is_fast
    tokens = tokenizer.tokenize("Hello, World 42!")
    assert tokens == ["h", "##e", "##l", "##l", "##o", ",", "w", "##o", "##r", "##l", "##d", "4", "##2", "!"]
    text = "The quick brown fox (2021) jumps over 3 lazy dogs; it's 100% true."
    assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True).replace(" ", "") == \
        text.lower().replace(" ", "")


@pytest.mark.parametrize("task_name, head_shape", [("rte", (2, 32)), ("mnli", (3, 32)), ("stsb", (1, 32))])
def test_tiny_random_classifier_runs_forward(task_name, head_shape):
    torch.manual_seed(0)
    model, tokenizer, model_id = models.load_pretrained(TINY, get_task(task_name))
    assert model_id == "tiny-random-bert"
    assert tuple(model.classifier.weight.shape) == head_shape
    assert model.config.problem_type == ("regression" if task_name == "stsb" else "single_label_classification")
    batch = collated_pairs(tokenizer)
    batch["labels"] = torch.tensor([1.5, 0.0, 4.0]) if task_name == "stsb" else torch.tensor([0, 1, 1])
    output = model(**batch)
    assert output.logits.shape == (3, head_shape[0]) and torch.isfinite(output.loss)


def test_tiny_random_qa_runs_forward():
    torch.manual_seed(0)
    model, tokenizer, _ = models.load_pretrained(TINY, "squad")
    batch = collated_pairs(tokenizer, 2)
    output = model(**batch, start_positions=torch.tensor([3, 0]), end_positions=torch.tensor([5, 0]))
    assert output.start_logits.shape == batch["input_ids"].shape and torch.isfinite(output.loss)


def test_tiny_random_encoder_is_fixed_by_its_seed_and_head_by_the_caller():
    torch.manual_seed(0)
    rte_a, _, _ = models.load_pretrained(TINY, "rte")
    torch.manual_seed(1)
    rte_b, _, _ = models.load_pretrained(TINY, "rte")
    squad, _, _ = models.load_pretrained(TINY, "squad")
    other, _, _ = models.load_pretrained({"source": "tiny-random", "seed": 1}, "rte")
    a, b = encoder_state(rte_a), encoder_state(rte_b)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert all(torch.equal(a[name], tensor) for name, tensor in encoder_state(squad).items())
    assert not torch.equal(a["embeddings.word_embeddings.weight"],
                           encoder_state(other)["embeddings.word_embeddings.weight"])
    assert not torch.equal(rte_a.classifier.weight, rte_b.classifier.weight)
    torch.manual_seed(0)
    rte_c, _, _ = models.load_pretrained(TINY, "rte")
    assert torch.equal(rte_a.classifier.weight, rte_c.classifier.weight)


@pytest.mark.parametrize("source, model_id, head", [("tiny-random", TINY_RANDOM_MODEL_ID, "classifier"),
                                                    ("tiny-random-llama", TINY_RANDOM_LLAMA_MODEL_ID, "score")])
def test_the_skeleton_config_is_the_built_models_config(source, model_id, head):
    torch.manual_seed(0)
    model, tokenizer, built_id = build_tiny(source, get_task("rte"))
    config, config_id = tiny_config(source, get_task("rte"))
    assert built_id == config_id == model_id and tokenizer.is_fast
    for field in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_labels", "pad_token_id"):
        assert getattr(config, field) == getattr(model.config, field), field
    assert all(name.startswith(head) for name in models.new_parameter_names(model))
    with pytest.raises(ValueError, match="not a tiny random model source"):
        build_tiny("hub", get_task("rte"))
