"""project: exact nonzero count, global top-k, O(nnz) fixed-mask training."""
import copy

import pytest
import torch

from diffprune.diff_pruning_config import DiffPruningConfig
from diffprune.diff import DiffPrunedModel
from diffprune.projection import (FixedMaskFinetuning, FixedMaskModel, kept_count, project, share_count,
                                  top_k_positions)


def test_kept_count_and_rate_checks():
    assert kept_count(0.5, 1000) == 5
    assert kept_count(100, 7) == 7
    assert kept_count(0.25, 1001) == round(0.0025 * 1001)
    for bad in (0, -1, 100.5, 150):
        with pytest.raises(ValueError, match=r"\(0, 100\]"):
            kept_count(bad, 10)


def test_global_top_k_across_tensors():
    dense = {"a": torch.tensor([[0.1, -5.0], [0.0, 0.2]]), "b": torch.tensor([3.0, -0.3, 0.05])}
    positions = top_k_positions(dense, rate=3 / 7 * 100)  # keep 3 of 7
    assert positions["a"].tolist() == [1] and positions["b"].tolist() == [0, 1]


def test_project_keeps_exactly_round_rate_times_d(tiny_bert, tiny_batch):
    dm = DiffPrunedModel(tiny_bert, DiffPruningConfig(alpha_init=5.0))
    torch.manual_seed(1)
    with torch.no_grad():
        for w in dm.w:
            w.normal_()
    d = dm.diffed_params
    for rate in (0.5, 1.0, 10.0):
        model = DiffPrunedModel(type(tiny_bert)(tiny_bert.config), DiffPruningConfig(head_pattern=r"^classifier\."))
        with torch.no_grad():
            for src, dst in zip(dm.w, model.w):
                dst.copy_(src)
        fixed = project(model, rate)
        assert fixed.nonzeros == round(rate / 100 * d)
        assert fixed.diffed_params == d
        dense = fixed.dense_diff()
        assert sum(int(torch.count_nonzero(v)) for v in dense.values()) == round(rate / 100 * d)


def test_fixed_mask_trains_only_kept_values_and_head(tiny_bert, tiny_batch):
    base = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    dense = {n: torch.randn_like(p) for n, p in tiny_bert.named_parameters() if not n.startswith("classifier")}
    method = FixedMaskFinetuning(dense, rate=2.0)
    fixed = method.prepare(tiny_bert, DiffPruningConfig().head_pattern).train()
    trainable = [p for p in fixed.parameters() if p.requires_grad]
    # O(nnz) trainable state: values + head only
    head = sum(p.numel() for p in fixed.head_parameters().values())
    assert sum(p.numel() for p in trainable) == fixed.nonzeros + head
    assert method.new_parameter_count(fixed) == fixed.nonzeros + head
    before = {k: v.clone() for k, v in fixed.dense_diff().items()}
    optimizer = method.make_optimizer(fixed, {"learning_rate": 1e-2})
    fixed(**tiny_batch).loss.backward()
    optimizer.step()
    after = fixed.dense_diff()
    for name in before:
        changed = before[name] != after[name]
        kept = before[name] != 0
        assert not (changed & ~kept).any(), f"{name}: a position outside the mask moved"
    assert any((before[n] != after[n]).any() for n in before)
    for k, v in tiny_bert.state_dict().items():  # the shared base is never written
        if not k.startswith("classifier"):
            assert torch.equal(v, base[k]), k


def test_fixed_mask_forward_equals_merged_weights(tiny_bert, tiny_batch):
    from torch.func import functional_call

    dense = {n: torch.randn_like(p) * 0.1 for n, p in tiny_bert.named_parameters() if not n.startswith("classifier")}
    fixed = FixedMaskModel.from_dense(tiny_bert, dense, rate=5.0).eval()
    with torch.no_grad():
        got = fixed(**tiny_batch).logits
        delta = fixed.dense_diff()
        merged = {n: p + delta[n] if n in delta else p for n, p in tiny_bert.named_parameters()}
        want = functional_call(tiny_bert, merged, kwargs=tiny_batch).logits
    assert torch.allclose(got, want, atol=1e-6)


def test_top_k_breaks_ties_by_position_across_tensors():
    # keep 3 of 5: both 2s, then the first of the three entries with |delta| = 1 (a[0], not a[2] or b[0])
    dense = {"a": torch.tensor([1.0, 2.0, -1.0]), "b": torch.tensor([1.0, -2.0])}
    positions = top_k_positions(dense, rate=60)
    assert positions["a"].tolist() == [0, 1] and positions["b"].tolist() == [1]
    # many ties: the lowest positions fill the places, wherever topk's pick would fall
    signs = torch.where(torch.rand(3000, generator=torch.Generator().manual_seed(0)) < 0.5, -1.0, 1.0)
    many = {"a": signs, "b": torch.ones(2000)}
    positions = top_k_positions(many, rate=10)
    assert positions["a"].tolist() == list(range(500)) and positions["b"].numel() == 0


def test_top_k_refuses_a_diverged_dense_diff():
    with pytest.raises(ValueError, match="dense diff of b holds NaN or inf"):
        top_k_positions({"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")])}, rate=50)


def test_one_rounding_rule_halves_up_exactly_as_written():
    assert share_count(0.5, 1) == 1 and share_count(0.25, 2) == 1       # round() gives 0 for both
    assert share_count(0.1025, 600) == 62                                # 61.5: the float product is 61.4999...
    assert share_count(0.1, 256) == 26 and share_count(0.1, 512) == 51
    assert kept_count(0.5, 100) == 1                                     # 0.5 entries: a half, rounded up
    assert kept_count(0.35, 1000) == 4                                   # 3.5 exactly, 3.4999... in floats
    assert kept_count(100, 7) == 7 and kept_count(0.001, 10) == 0


def test_project_releases_the_old_wrapper_loudly(tiny_bert, tiny_batch):
    dm = DiffPrunedModel(tiny_bert, DiffPruningConfig(alpha_init=5.0))
    with torch.no_grad():
        for w in dm.w:
            w.normal_(0, 0.1)
    fixed = project(dm, 10.0)
    assert fixed.model is tiny_bert  # the pretrained model is reused, not copied
    for use in (lambda: dm(**tiny_batch), dm.dense_diff, dm.expected_l0):
        with pytest.raises(RuntimeError, match="released"):
            use()
    assert len(dm.w) == 0 and len(dm.alpha) == 0  # its O(d) state is freed
    with pytest.raises(RuntimeError, match="released"):
        project(dm, 10.0)
    fixed(**tiny_batch)  # the returned model is the one to use


def _values_gradients(model, batch, rate, row_lookups):
    """(loss, the gradient of every kept value) of one forward and backward of the model's
    fixed-mask form, its embedding lookups reading rows or the whole effective weight."""
    model = copy.deepcopy(model)
    torch.manual_seed(3)
    dense = {n: torch.randn_like(p) * 0.1 for n, p in model.named_parameters() if not n.startswith("classifier")}
    fixed = FixedMaskModel.from_dense(model, dense, rate=rate).eval()
    fixed.row_lookups = row_lookups
    loss = fixed(**batch).loss
    loss.backward()
    return loss.detach(), [v.grad for v in fixed.values]


@pytest.mark.parametrize("rate", [5.0, 100.0])
def test_fixed_mask_row_lookups_give_the_whole_weights_gradients_bit_for_bit(tiny_bert, tiny_batch, rate):
    """An embedding's kept values get their gradient from the looked-up rows alone (repeated
    tokens, the padding row, rows without kept entries): the same bits as from the
    vocabulary-sized gradient of the whole effective weight."""
    batch = {**tiny_batch, "input_ids": tiny_batch["input_ids"].clone()}
    batch["input_ids"][:, 5:] = tiny_bert.config.pad_token_id  # padding, and many repeated tokens
    batch["input_ids"][:, 1] = 7
    assert tiny_bert.bert.embeddings.word_embeddings.padding_idx == tiny_bert.config.pad_token_id
    loss_rows, rows = _values_gradients(tiny_bert, batch, rate, row_lookups=True)
    loss_whole, whole = _values_gradients(tiny_bert, batch, rate, row_lookups=False)
    assert torch.equal(loss_rows, loss_whole)
    assert len(rows) == len(whole) and all(torch.equal(a, b) for a, b in zip(rows, whole))
    assert any(g.abs().sum() > 0 for g in rows)


def test_fixed_mask_row_lookups_with_scale_grad_by_freq_and_tied_weights():
    """A language model whose embedding scales its gradient by token frequency and is also its
    output projection: the kept values get the gradient of both uses, as from the whole weight."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    model.transformer.wte.scale_grad_by_freq = True
    ids = torch.randint(0, 50, (2, 6))
    ids[:, 2] = 4
    results = []
    for row_lookups in (True, False):
        dense = {n: torch.full_like(p, 0.01) + torch.arange(p.numel()).view_as(p) * 1e-4
                 for n, p in model.named_parameters()}
        fixed = FixedMaskModel.from_dense(copy.deepcopy(model), dense, rate=30.0, head_pattern=r"(?!)").eval()
        fixed.row_lookups = row_lookups
        fixed(input_ids=ids, labels=ids).loss.backward()
        results.append([v.grad for v in fixed.values])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_fixed_mask_embedding_with_max_norm_leaves_the_held_weights_as_they_were(tiny_bert, tiny_batch):
    """A max_norm lookup renormalises the weight it is given in place: it gets a copy, so after
    forwards the effective weight is still theta_0 + values, entry for entry."""
    model = copy.deepcopy(tiny_bert)
    model.bert.embeddings.word_embeddings.max_norm = 0.05  # below the rows' norms: every lookup renormalises
    dense = {n: torch.randn_like(p) * 0.1 for n, p in model.named_parameters() if not n.startswith("classifier")}
    fixed = FixedMaskModel.from_dense(model, dense, rate=5.0).eval()
    slot = next(s for s in fixed.slots if s.name.endswith("word_embeddings.weight"))
    with torch.no_grad():
        fixed(**tiny_batch)
        fixed(**tiny_batch)
        want = slot.base.reshape(-1).index_add(0, fixed.positions(slot), fixed.slot_values(slot)).view(slot.shape)
    assert torch.equal(fixed.rebuild(slot), want)
