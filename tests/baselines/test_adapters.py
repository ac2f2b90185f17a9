import copy
import json

import pytest
import torch

from diffprune.baselines.adapters import HoulsbyAdapters, _reduction_factor
from diffprune.artifact import load_task_model
from diffprune.diff_pruning_config import DEFAULT_HEAD_PATTERN

# one adapter: down 16x4 + 4, up 4x16 + 16; two per block, two blocks
ADAPTERS = 2 * 2 * ((16 * 4 + 4) + (4 * 16 + 16))
LAYER_NORMS = 32 + 2 * 2 * 32          # embeddings LN + two LNs per block


def _prepared(model, **options):
    method = HoulsbyAdapters(bottleneck=4, **options)
    return method, method.prepare(model, DEFAULT_HEAD_PATTERN)


def test_trains_adapters_layer_norms_and_head(tiny_bert, tiny_batch, check_trains_exactly):
    method, module = _prepared(tiny_bert)
    declared = {n for n, _ in module.named_parameters()
                if ".adapters.task." in n or "LayerNorm" in n or n.startswith("classifier.")}
    changed = check_trains_exactly(method, module, tiny_batch, declared)
    assert any(".adapter_down." in n for n in changed) and any(".adapter_up." in n for n in changed)
    assert method.new_parameter_count(module) == ADAPTERS + LAYER_NORMS + 34 == 786


def test_without_layer_norms(tiny_bert, tiny_batch, check_trains_exactly):
    method, module = _prepared(tiny_bert, train_layer_norms=False)
    declared = {n for n, _ in module.named_parameters() if ".adapters.task." in n or n.startswith("classifier.")}
    check_trains_exactly(method, module, tiny_batch, declared)
    assert method.new_parameter_count(module) == ADAPTERS + 34


def test_forward_still_returns_loss(tiny_bert, tiny_batch):
    _, module = _prepared(tiny_bert)
    out = module(**tiny_batch)
    assert out.loss is not None and out.loss.requires_grad and out.logits.shape == (4, 2)


def test_own_learning_rate(tiny_bert):
    method, module = _prepared(tiny_bert)
    assert {g["lr"] for g in method.parameter_groups(module, {"learning_rate": 2e-5})} == {1e-4}


def test_saved_task_reloads(tiny_bert, tiny_bert_identity, tiny_batch, run_steps, stored_by, tmp_path):
    fresh = copy.deepcopy(tiny_bert)
    method, module = _prepared(tiny_bert)
    run_steps(method, module, tiny_batch)
    config = method.save(module, tmp_path, tiny_bert_identity)
    assert sum(t.numel() for t in stored_by(tmp_path, config).values()) == 786
    assert json.loads((tmp_path / "artifact.json").read_text())["options"]["bottleneck"] == 4
    # a fresh base + the same adapter structure + the stored tensors = the trained model
    reloaded = load_task_model(tmp_path, fresh)
    with torch.no_grad():
        assert torch.equal(reloaded(**tiny_batch).logits, module(**tiny_batch).logits)


@pytest.mark.parametrize("hidden,bottleneck", [(16, 3), (16, 4), (384, 64), (384, 48), (768, 7), (1024, 64), (1024, 256), (1024, 8)])
def test_reduction_factor_gives_the_requested_bottleneck(hidden, bottleneck):
    assert int(hidden // _reduction_factor(hidden, bottleneck)) == bottleneck


def test_bad_bottleneck():
    with pytest.raises(ValueError, match="bottleneck"):
        HoulsbyAdapters(bottleneck=0)


def test_rms_norms_count_as_layer_norms():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    llama = LlamaForSequenceClassification(LlamaConfig(vocab_size=99, hidden_size=16, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=32, pad_token_id=0))
    method = HoulsbyAdapters(bottleneck=4)
    method.prepare(llama, r"^score\.")
    assert method.layer_norm_names == sorted(
        [f"model.layers.{i}.{norm}.weight" for i in range(2) for norm in ("input_layernorm", "post_attention_layernorm")]
        + ["model.norm.weight"])
    assert method.report()["layer_norms"] == method.layer_norm_names


def test_a_model_type_the_adapters_library_lacks_is_refused_clearly():
    """A model type without even a package in adapters.models (find_spec raises rather than
    returning None) is refused with the planning message, not a ModuleNotFoundError."""
    from transformers import ResNetConfig, ResNetForImageClassification

    resnet = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=2))
    with pytest.raises(ValueError, match="does not support model type 'resnet'.*choose another method"):
        HoulsbyAdapters(bottleneck=4).check_model(resnet, r"^classifier\.")
