import pytest

from diffprune.baselines.bitfit import BitFit
from diffprune.diff_pruning_config import DEFAULT_HEAD_PATTERN


def test_trains_biases_and_head(tiny_bert, tiny_batch, check_trains_exactly):
    method = BitFit()
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    declared = {n for n, _ in module.named_parameters() if n.endswith(".bias") or n.startswith("classifier.")}
    check_trains_exactly(method, module, tiny_batch, declared)
    # embeddings LN bias 16; per block q,k,v,o 4*16 + attention LN 16 + intermediate 32 + output 16
    # + output LN 16 = 144; pooler 16; head 2*16 + 2
    assert method.new_parameter_count(module) == 16 + 2 * 144 + 16 + 34 == 354


def test_own_learning_rate(tiny_bert):
    method = BitFit()
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    groups = method.parameter_groups(module, {"learning_rate": 2e-5, "weight_decay": 0.01})
    assert {g["lr"] for g in groups} == {1e-3}
    # weight decay only on the head matrix
    decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    assert [p.shape for p in decayed] == [(2, 16)]
    follow = BitFit(learning_rate=None)
    follow.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    assert all("lr" not in g for g in follow.parameter_groups(module, {"learning_rate": 2e-5}))
    optimizer = follow.make_optimizer(module, {"learning_rate": 2e-5})
    assert {g["lr"] for g in optimizer.param_groups} == {2e-5}


def test_saved_task_holds_the_biases_and_head(tiny_bert, tiny_bert_identity, tiny_batch, run_steps, stored_by,
                                              tmp_path):
    method = BitFit()
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    run_steps(method, module, tiny_batch)
    stored = stored_by(tmp_path, method.save(module, tmp_path, tiny_bert_identity))
    assert sum(t.numel() for t in stored.values()) == 354


def test_bad_learning_rate():
    with pytest.raises(ValueError, match="learning_rate"):
        BitFit(learning_rate=-1)


def test_model_without_biases_is_refused_with_the_fix():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    llama = LlamaForSequenceClassification(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ValueError, match="no bias parameters outside its head.*choose another method"):
        BitFit().check_model(llama, r"^score\.")
