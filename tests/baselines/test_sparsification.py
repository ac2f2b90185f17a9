import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from diffprune.baselines.sparsification import Sparsification, ZeroingMask
from diffprune.artifact import load_task_model
from diffprune.diff_pruning_config import DEFAULT_HEAD_PATTERN

# zero_share 0.1 on every block's linear weights: q, k, v, o (256 entries -> 26 zeros each),
# intermediate and output (512 -> 51 each); two blocks
ZEROS = 2 * (4 * 26 + 2 * 51)


def _masked_modules(model):
    return {name: module for name, module in model.named_modules() if parametrize.is_parametrized(module, "weight")}


def _zeroed(weight):
    return set((weight.detach().flatten() == 0).nonzero().flatten().tolist())


def test_zeroes_exactly_the_share_and_trains_only_scores_and_head(tiny_bert, tiny_batch, run_steps, take_snapshot):
    # a large score rate so that the masks really move within two steps
    method = Sparsification(zero_share=0.1, score_learning_rate=1.0)
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    masked = _masked_modules(module)
    assert len(masked) == 2 * 6 and all(".encoder.layer." in n for n in masked)
    assert method.new_parameter_count(module) == ZEROS + 34 == 446

    originals = {n: m.parametrizations.weight.original.detach().clone() for n, m in masked.items()}
    zeroed_before = {n: _zeroed(m.weight) for n, m in masked.items()}
    effective_before = {n: m.weight.detach().clone() for n, m in masked.items()}
    for name, module_ in masked.items():
        assert len(zeroed_before[name]) == round(0.1 * module_.weight.numel() + 1e-9)

    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in module.named_parameters() if n.endswith(".scores") or n.startswith("classifier.")}
    before = take_snapshot(module)
    run_steps(method, module, tiny_batch)
    after = take_snapshot(module)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == trainable  # every score tensor and the head; nothing pretrained

    flips = 0
    for name, module_ in masked.items():
        # the frozen pretrained tensor is bit-identical
        assert torch.equal(module_.parametrizations.weight.original, originals[name])
        zeroed_after = _zeroed(module_.weight)
        assert len(zeroed_after) == len(zeroed_before[name])
        assert zeroed_after == set(method.zeroed_positions()[f"{name}.weight"].tolist())
        # the effective weight differs only where an entry was or is zeroed ...
        moved = set((module_.weight.detach() != effective_before[name]).flatten().nonzero().flatten().tolist())
        assert moved <= zeroed_before[name] | zeroed_after
        # ... and equals the pretrained value (bit for bit) everywhere else
        keep = torch.ones(module_.weight.numel(), dtype=torch.bool)
        keep[list(zeroed_after)] = False
        assert torch.equal(module_.weight.detach().flatten()[keep], originals[name].flatten()[keep])
        flips += len(zeroed_after - zeroed_before[name])
    assert flips > 0


def test_straight_through_gradient():
    torch.manual_seed(0)
    linear = nn.Linear(4, 3)
    linear.weight.requires_grad_(False)
    mask = ZeroingMask(linear.weight, zero_count=2)
    parametrize.register_parametrization(linear, "weight", mask)
    upstream = torch.randn(3, 4)
    (linear.weight * upstream).sum().backward()
    assert torch.allclose(mask.scores.grad, upstream * linear.parametrizations.weight.original)
    # initial mask = magnitude pruning: the two smallest |W| are the zeroed ones
    smallest = linear.parametrizations.weight.original.abs().flatten().argsort()[:2].sort().values
    assert torch.equal(mask.zeroed_positions(), smallest)


def test_selected_layers_only(tiny_bert):
    method = Sparsification(zero_share=0.5, layers=["layer_1", "embeddings"])
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    masked = set(_masked_modules(module))
    assert masked == {n for n, m in module.named_modules()
                      if n.startswith("bert.encoder.layer.1.") and isinstance(m, nn.Linear)} | {
        "bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings", "bert.embeddings.token_type_embeddings"}


def test_saved_task_stores_the_zeroed_positions_and_reloads(tiny_bert, tiny_bert_identity, tiny_batch, run_steps,
                                                            stored_by, tmp_path):
    fresh = copy.deepcopy(tiny_bert)
    method = Sparsification(zero_share=0.1, score_learning_rate=1.0)
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    run_steps(method, module, tiny_batch)
    stored = stored_by(tmp_path, method.save(module, tmp_path, tiny_bert_identity))
    positions = {k.removeprefix("zeroed."): v for k, v in stored.items() if k.startswith("zeroed.")}
    assert all(t.dtype == torch.int32 for t in positions.values())
    assert set(positions) == {f"{n}.weight" for n in _masked_modules(module)}
    assert sum(t.numel() for t in positions.values()) == ZEROS
    assert set(stored) - {f"zeroed.{n}" for n in positions} == {"classifier.weight", "classifier.bias"}
    # a fresh base zeroes exactly the stored positions
    fresh = load_task_model(tmp_path, fresh)
    for name, module_masked in _masked_modules(fresh).items():
        assert _zeroed(module_masked.weight) >= set(positions[f"{name}.weight"].tolist())
    with torch.no_grad():
        assert torch.equal(fresh(**tiny_batch).logits, module(**tiny_batch).logits)


def test_optimizer_groups(tiny_bert):
    method = Sparsification(score_learning_rate=0.05)
    module = method.prepare(tiny_bert, DEFAULT_HEAD_PATTERN)
    groups = method.parameter_groups(module, {"learning_rate": 2e-5, "weight_decay": 0.01})
    scores = groups[0]
    assert scores["lr"] == 0.05 and scores["weight_decay"] == 0.0 and len(scores["params"]) == 12
    assert all("lr" not in g for g in groups[1:])
    assert sum(p.numel() for g in groups[1:] for p in g["params"]) == 34


def test_options_checked(tiny_bert):
    for bad in (0, 1, 1.5, "0.1"):
        with pytest.raises(ValueError, match="zero_share"):
            Sparsification(zero_share=bad)
    with pytest.raises(ValueError, match="not in the model"):
        Sparsification(layers=["layer_9"]).prepare(tiny_bert, DEFAULT_HEAD_PATTERN)


def test_zero_counts_follow_the_projection_rounding_rule():
    """One rule for "this share of the entries": diffprune.projection.share_count (halves up,
    exactly as written). 0.1025 of a 600-entry weight is 61.5 -> 62 zeros; in floats the
    product is 61.4999..., which the rule must not round down."""
    from transformers import BertForSequenceClassification

    from diffprune.projection import share_count
    from tests.conftest import tiny_bert_config

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(hidden_size=20, intermediate_size=30)).eval()
    method = Sparsification(zero_share=0.1025)
    module = method.prepare(model, DEFAULT_HEAD_PATTERN)
    counts = {name: mask.zero_count for name, mask in method.masks.items()}
    assert counts["bert.encoder.layer.0.intermediate.dense.weight"] == 62        # 20 x 30 = 600 entries
    assert counts["bert.encoder.layer.0.attention.self.query.weight"] == 41      # 400 entries: 41.0
    params = dict(module.named_parameters())
    for name, count in counts.items():
        numel = params[name.replace(".weight", ".parametrizations.weight.original")].numel()
        assert count == share_count(0.1025, numel)
