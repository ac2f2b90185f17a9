import copy
import json

import pytest
import torch

from diffprune.baselines.lora import LoRA
from diffprune.artifact import load_task_model
from diffprune.diff_pruning_config import DEFAULT_HEAD_PATTERN

# rank 2 on query and value of both blocks: A 2x16 + B 16x2 each
LORA = 2 * 2 * (2 * 16 + 16 * 2)


def test_trains_lora_and_head(tiny_bert, tiny_batch, check_trains_exactly):
    method = LoRA(rank=2)
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    declared = {n for n, _ in module.named_parameters() if ".lora_" in n or ".classifier." in n}
    changed = check_trains_exactly(method, module, tiny_batch, declared)
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    assert method.new_parameter_count(module) == LORA + 34 == 290


def test_starts_as_the_pretrained_model(tiny_bert, tiny_batch):
    original = copy.deepcopy(tiny_bert)
    module = LoRA(rank=2).prepare(tiny_bert, DEFAULT_HEAD_PATTERN).eval()
    with torch.no_grad():
        out = module(**tiny_batch)
        assert torch.allclose(out.logits, original(**tiny_batch).logits, atol=1e-6)
    assert out.loss is not None


def test_saved_task_reloads(tiny_bert, tiny_bert_identity, tiny_batch, run_steps, stored_by, tmp_path):
    fresh = copy.deepcopy(tiny_bert)
    method = LoRA(rank=2)
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    run_steps(method, module, tiny_batch)
    config = method.save(module, tmp_path, tiny_bert_identity)
    assert sum(t.numel() for t in stored_by(tmp_path, config).values()) == 290
    assert json.loads((tmp_path / "artifact.json").read_text())["load_options"]["rank"] == 2
    reloaded = load_task_model(tmp_path, fresh)
    with torch.no_grad():
        assert torch.equal(reloaded(**tiny_batch).logits, module(**tiny_batch).logits)


def test_options_checked(tiny_bert):
    with pytest.raises(ValueError, match="target_modules"):
        LoRA(target_modules="query")
    # peft's own error (a ValueError) names the module that matched nothing
    with pytest.raises(ValueError, match="no_such_module"):
        LoRA(target_modules=["no_such_module"]).prepare(tiny_bert, DEFAULT_HEAD_PATTERN)


def test_target_modules_default_to_the_model_types_projections(tiny_bert):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    assert LoRA().target_modules(tiny_bert, DEFAULT_HEAD_PATTERN) == ["query", "value"]
    llama = LlamaForSequenceClassification(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=32))
    assert LoRA().target_modules(llama, r"^score\.") == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match=r"\['query'\] match no layer.*q_proj"):
        LoRA(target_modules=["query", "v_proj"]).check_model(llama, r"^score\.")
