import pytest
import torch

from diffprune.baselines.last_layer import LastLayer
from diffprune.diff_pruning_config import DEFAULT_HEAD_PATTERN


def _names(model, *prefixes):
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


def test_trains_top_block_pooler_and_head(tiny_bert, tiny_batch, check_trains_exactly, counts):
    method = LastLayer()
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    declared = _names(module, "bert.encoder.layer.1.", "bert.pooler.", "classifier.")
    check_trains_exactly(method, module, tiny_batch, declared)
    assert method.new_parameter_count(module) == counts["block"] + counts["pooler"] + counts["head"] == 2530


def test_without_pooler(tiny_bert, tiny_batch, check_trains_exactly):
    method = LastLayer(include_pooler=False)
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    check_trains_exactly(method, module, tiny_batch, _names(module, "bert.encoder.layer.1.", "classifier."))
    assert method.new_parameter_count(module) == 2224 + 34


def test_saved_task_holds_the_trained_tensors(tiny_bert, tiny_bert_identity, tiny_batch, run_steps, stored_by,
                                              tmp_path):
    method = LastLayer()
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    run_steps(method, module, tiny_batch)
    stored = stored_by(tmp_path, method.save(module, tmp_path, tiny_bert_identity))
    params = dict(module.named_parameters())
    assert set(stored) == {n for n, p in params.items() if p.requires_grad}
    assert all((stored[n] == params[n].detach()).all() for n in stored)
    assert sum(t.numel() for t in stored.values()) == method.new_parameter_count(module)


def test_head_pattern_matching_nothing_is_an_error(tiny_bert):
    with pytest.raises(ValueError, match="head pattern"):
        LastLayer().prepare(tiny_bert, r"no_such_head")


def test_decoder_trains_its_final_norm_and_reports_the_missing_pooler(tiny_batch, check_trains_exactly):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    llama = LlamaForSequenceClassification(LlamaConfig(vocab_size=99, hidden_size=16, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=32, pad_token_id=0))
    method = LastLayer()
    module = method.prepare(llama, r"^score\.")
    check_trains_exactly(method, module, tiny_batch, _names(module, "model.layers.1.", "model.norm.", "score."))
    assert method.report() == {"top_block": "layer_1", "top_block_module": "model.layers.1",
                               "final_norm": ["model.norm"], "pooler": [],
                               "note": "include_pooler: the model has no pooler"}
