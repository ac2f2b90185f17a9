import copy

import pytest
import torch

from diffprune.baselines.full_finetuning import FullFinetuning
from diffprune.baselines.nonadaptive import NonAdaptiveDiffPruning
from diffprune.diff_pruning_config import DEFAULT_HEAD_PATTERN


def test_everything_trains(tiny_bert, tiny_batch, check_trains_exactly, counts):
    method = FullFinetuning()
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    everything = {n for n, _ in module.named_parameters()}
    check_trains_exactly(method, module, tiny_batch, everything)
    assert method.new_parameter_count(module) == counts["total"] == 7426


def test_dense_diff_is_finetuned_minus_pretrained(tiny_bert, tiny_batch, run_steps):
    pretrained = {n: p.detach().clone() for n, p in tiny_bert.named_parameters()}
    method = FullFinetuning()
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    run_steps(method, module, tiny_batch)
    diff = method.dense_diff(module)
    # every pretrained tensor, never the (new) head
    assert set(diff) == {n for n in pretrained if not n.startswith("classifier.")}
    for name, delta in diff.items():
        assert torch.equal(delta, dict(module.named_parameters())[name].detach() - pretrained[name])
    assert any(delta.abs().sum() > 0 for delta in diff.values())


def test_dense_diff_before_prepare_is_an_error(tiny_bert):
    with pytest.raises(RuntimeError, match="prepare"):
        FullFinetuning().dense_diff(tiny_bert)


def test_saved_task_reloads(tiny_bert, tiny_bert_identity, tiny_batch, run_steps, stored_by, tmp_path):
    fresh = copy.deepcopy(tiny_bert)
    method = FullFinetuning()
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    run_steps(method, module, tiny_batch)
    config = method.save(module, tmp_path, tiny_bert_identity)
    assert config["payload"]["file"] == "task_state.safetensors"  # the whole model
    assert set(stored_by(tmp_path, config)) == {n for n, _ in module.named_parameters()}
    fresh.load_state_dict(stored_by(tmp_path, config), strict=False)
    with torch.no_grad():
        assert torch.equal(fresh(**tiny_batch).logits, module(**tiny_batch).logits)


def test_nonadaptive_reuses_full_finetuning(tiny_bert):
    method = NonAdaptiveDiffPruning()
    assert method.reuses == "full_finetuning" and method.projected
    with pytest.raises(RuntimeError, match="reuses the full_finetuning"):
        method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    with pytest.raises(ValueError, match="unknown option"):
        NonAdaptiveDiffPruning(rate=0.5)


def test_stats_rank_layers_for_critical_layers(tiny_bert, tiny_batch, run_steps, tmp_path):
    import json

    from diffprune.baselines.critical_layers import CriticalLayers

    fresh = copy.deepcopy(tiny_bert)
    method = FullFinetuning()
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    run_steps(method, module, tiny_batch)
    stats = method.stats(module)
    distances = stats["per_layer_distance"]
    assert stats["layer_order"] == ["embeddings", "layer_0", "layer_1", "other"] == list(distances)
    assert all(d["relative_l2"] > 0 and 0 < d["angle_deg"] < 90 for d in distances.values())
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    critical = CriticalLayers(num_layers=1, ranking=str(tmp_path))
    critical.prepare(fresh, DEFAULT_HEAD_PATTERN)
    expected = max((d["relative_l2"], label) for label, d in distances.items() if label != "other")[1]
    assert critical.chosen_layers == [expected]
