"""The L0 phase on tiny models: gradients, tied weights, BatchNorm, determinism, the kept
gradient of delta."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

from diffprune.diff_pruning_config import DiffPruningConfig
from diffprune.diff import DiffPrunedModel
from tests.gated_diff_setup import training_diff


def _reference_loss(dm, ref_model, batch, w_ref, a_ref, g_ref):
    """Recompute the step's loss with plain autograd from the sample the model drew."""
    c = dm.config
    params = {}
    for slot in dm.slots:
        logistic = torch.logit(dm.sample_view(slot).float()) - dm.alpha[slot.index].detach()
        z = torch.clamp(torch.sigmoid(logistic + a_ref[slot.index]) * (c.right - c.left) + c.left, 0, 1)
        if g_ref is not None:
            lg = torch.logit(dm.group_sample[slot.index]) - dm.group_alpha[slot.index].detach()
            z = z * torch.clamp(torch.sigmoid(lg + g_ref[slot.index]) * (c.right - c.left) + c.left, 0, 1)
        params[slot.name] = slot.base + z * w_ref[slot.index]
    loss = functional_call(ref_model, params, kwargs=batch).loss
    if g_ref is None:
        penalty = sum(torch.sigmoid(a - c.log_ratio).sum() for a in a_ref)
    else:
        penalty = sum(torch.sigmoid(g_ref[i] - c.log_ratio) * torch.sigmoid(a - c.log_ratio).sum()
                      for i, a in enumerate(a_ref))
    return loss + c.l0_lambda * penalty


def test_gradients_match_plain_autograd(tiny_bert, tiny_batch):
    for structured in (False, True):
        ref = type(tiny_bert)(tiny_bert.config)
        ref.load_state_dict(tiny_bert.state_dict())
        dm = DiffPrunedModel(tiny_bert, DiffPruningConfig(structured=structured, alpha_init=1.0))
        with torch.no_grad():
            for w in dm.w:
                w.normal_(0, 0.1)
        dm.train()
        dm.resample(3)
        (dm(**tiny_batch).loss + dm.penalty()).backward()
        w_ref = [w.detach().clone().requires_grad_() for w in dm.w]
        a_ref = [a.detach().clone().requires_grad_() for a in dm.alpha]
        g_ref = dm.group_alpha.detach().clone().requires_grad_() if structured else None
        _reference_loss(dm, ref.train(), tiny_batch, w_ref, a_ref, g_ref).backward()
        for got, want in zip(list(dm.w) + list(dm.alpha), w_ref + a_ref):
            assert torch.allclose(got.grad, want.grad, atol=1e-7)
        if structured:
            assert torch.allclose(dm.group_alpha.grad, g_ref.grad, atol=1e-7)
        dm.release()


def test_head_is_trained_densely_and_not_diffed(tiny_bert):
    dm = DiffPrunedModel(tiny_bert)
    assert set(dm.head_names) == {"classifier.weight", "classifier.bias"}
    assert all(not s.name.startswith("classifier") for s in dm.slots)
    assert dm.diffed_params == sum(p.numel() for n, p in tiny_bert.named_parameters() if not n.startswith("classifier"))
    assert all(p.requires_grad for p in dm.head_parameters().values())


def test_w_init_zero_leaves_outputs_of_the_pretrained_model(tiny_bert, tiny_batch):
    with torch.no_grad():
        expected = tiny_bert(**tiny_batch).logits
    dm = DiffPrunedModel(tiny_bert).eval()
    with torch.no_grad():
        assert torch.equal(dm(**tiny_batch).logits, expected)


def test_tied_embeddings_get_one_shared_diff():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2))
    assert model.lm_head.weight is model.transformer.wte.weight
    # a language model without a task head: every tensor is diffed (the pattern matches nothing)
    dm = DiffPrunedModel(model, DiffPruningConfig(head_pattern=r"(?!)"))
    tied = [s for s in dm.slots if "transformer.wte.weight" in s.aliases]
    assert len(tied) == 1 and "lm_head.weight" in tied[0].aliases
    assert sum(p.numel() for p in dm.w) == sum(p.numel() for p in model.parameters())  # counted once
    with torch.no_grad():
        dm.w[tied[0].index].normal_(0, 0.5)
    dm.eval()
    ids = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        got = dm(input_ids=ids).logits
        delta = dm.dense_diff()
        merged = {name: p + delta[name] for name, p in model.named_parameters()}
        want = functional_call(model, merged, kwargs={"input_ids": ids}, tie_weights=True).logits
    assert torch.allclose(got, want, atol=1e-5)
    # the diff reached both the input embedding and the output projection
    embeds = dm.model.transformer.wte.weight
    assert torch.equal(embeds, dm.slots[tied[0].index].base)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc_out = nn.Linear(4, 2)

    def forward(self, x, labels=None):
        h = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        logits = self.fc_out(h)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return type("Out", (), {"loss": loss, "logits": logits})()


def test_convnet_trains_with_batchnorm_statistics_as_task_state():
    torch.manual_seed(0)
    net = ConvNet()
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    base = {k: v.clone() for k, v in net.named_parameters()}
    dm = DiffPrunedModel(net, DiffPruningConfig(head_pattern=r"^fc_out\.")).train()
    assert not any("bn.running" in s.name for s in dm.slots)
    opt = torch.optim.AdamW([p for p in dm.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 2, (8,))
    for step in range(3):
        dm.resample(step)
        (dm(x, labels=y).loss + dm.penalty()).backward()
        opt.step()
        opt.zero_grad()
    # the running statistics are the task's (trained on its batches), not the pretrained ones
    assert not torch.equal(net.bn.running_mean, buffers["bn.running_mean"])
    assert int(net.bn.num_batches_tracked) == 3
    for k, v in net.named_parameters():
        if not k.startswith("fc_out"):
            assert torch.equal(v, base[k]), k
    assert any(torch.count_nonzero(w) for w in dm.w)


def test_export_sample_is_fp32_and_training_samples_16_bit():
    """The fixed evaluation / export sample is computed in fp32: the exported mask and values
    equal an fp32 reference (from a 16-bit sample ~1e-4 of the gates flip)."""
    from diffprune.gates import fill_uniform_, hard_concrete

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(300, 300), nn.Linear(300, 2))
    config = DiffPruningConfig(head_pattern=r"^1\.", mask_seed=3)
    dm = DiffPrunedModel(net, config)
    with torch.no_grad():
        for w, alpha in zip(dm.w, dm.alpha):
            w.normal_()
            alpha.normal_(0, 2)
    dm.train().resample(0)
    assert dm.sample.dtype == torch.float16
    exported = dm.dense_diff()
    u = fill_uniform_(torch.empty(dm.diffed_params), seed=config.mask_seed, step=-1)
    for slot in dm.slots:
        u_slot = u[slot.offset: slot.offset + slot.numel].view(slot.shape)
        z = hard_concrete(dm.alpha[slot.index].detach(), u_slot, config.left, config.right)
        want = z * dm.w[slot.index].detach()
        assert torch.equal(exported[slot.name] != 0, want != 0), slot.name
        assert torch.allclose(exported[slot.name], want, rtol=0, atol=1e-5), slot.name
    dm.eval()
    with torch.no_grad():
        x = torch.randn(2, 300)
        merged = {n: p + exported[n] if n in exported else p for n, p in net.named_parameters()}
        assert torch.allclose(dm(x), functional_call(net, merged, (x,)), atol=1e-5)


def test_same_seed_same_mask_and_numbers(tiny_bert, tiny_batch):
    def run():
        torch.manual_seed(0)
        model = type(tiny_bert)(tiny_bert.config)
        model.load_state_dict(tiny_bert.state_dict())
        dm = DiffPrunedModel(model, DiffPruningConfig(head_pattern=r"^classifier\.", mask_seed=5)).train()
        opt = torch.optim.AdamW([p for p in dm.parameters() if p.requires_grad], lr=1e-2)
        for step in range(3):
            dm.resample(step)
            (dm(**tiny_batch).loss + dm.penalty()).backward()
            opt.step()
            opt.zero_grad()
        dm.eval()
        with torch.no_grad():
            return dm(**tiny_batch).logits, dm.dense_diff()

    (logits_a, diff_a), (logits_b, diff_b) = run(), run()
    assert torch.equal(logits_a, logits_b)
    assert all(torch.equal(diff_a[k], diff_b[k]) for k in diff_a)
    assert all(torch.equal((diff_a[k] != 0), (diff_b[k] != 0)) for k in diff_a)


def test_gradient_accumulation_sees_one_mask_per_step(tiny_bert, tiny_batch):
    dm = DiffPrunedModel(tiny_bert, DiffPruningConfig(alpha_init=0.5)).train()
    dm.resample(0)
    first = dm.sample.clone()
    dm(**tiny_batch).loss.backward()
    dm(**tiny_batch).loss.backward()
    assert torch.equal(dm.sample, first)
    dm.resample(1)
    assert not torch.equal(dm.sample, first)


def test_head_of_a_model_built_by_hand_is_marked_or_named_never_guessed():
    """A torchvision-style ``fc`` head is not in any name regex: with nothing marked and no
    pattern the wrapper refuses (naming both fixes) instead of diffing the new head."""
    from diffprune.models import mark_new_parameters
    from tests.tiny_convnet import pretrained_convnet

    with pytest.raises(ValueError, match="no task head known.*head_pattern.*mark_new_parameters"):
        DiffPrunedModel(pretrained_convnet())
    marked = pretrained_convnet()
    mark_new_parameters(marked, ["fc.weight", "fc.bias"])
    named = DiffPrunedModel(pretrained_convnet(), DiffPruningConfig(head_pattern=r"^fc\."))
    for dm in (DiffPrunedModel(marked), named):
        assert sorted(dm.head_names) == ["fc.bias", "fc.weight"]
        assert not any(slot.name.startswith("fc.") for slot in dm.slots)


def _tied_gpt2():
    """A language model whose word embeddings are also its output layer: the one slot gets a
    row-sparse gradient (the lookup) and a dense one (the projection) in every backward."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(3))
    return model, r"(?!)", {"input_ids": ids, "labels": ids}, lambda out: out.loss


def _parent_reads_embedding():
    """An embedding whose weight its parent also reads densely: expected row-sparse, it gets a
    dense gradient too, and a buffer of its own at its first backward."""
    from tests.test_reparam import HEAD, ParentReadsChildWeight

    torch.manual_seed(0)
    ids = torch.randint(0, 11, (3, 4), generator=torch.Generator().manual_seed(3))
    return ParentReadsChildWeight(), HEAD, {"ids": ids}, lambda out: out.square().mean()


def _tiny_bert(tiny_bert, tiny_batch):
    return tiny_bert, r"^classifier\.", tiny_batch, lambda out: out.loss


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("which", ["bert", "tied_gpt2", "parent_reads_embedding"])
def test_kept_gradient_of_delta_forms_autograds_gradients(tiny_bert, tiny_batch, which, structured):
    """With keep_delta_grad, backward leaves w and alpha without .grad and diff_grad_chunks forms,
    from d loss / d delta, the gradients autograd gives them (the penalty's included), over two
    backwards of one step (gradient accumulation); the group gates still get their .grad."""
    model, head, batch, loss_of = {"bert": lambda: _tiny_bert(tiny_bert, tiny_batch), "tied_gpt2": _tied_gpt2,
                                   "parent_reads_embedding": _parent_reads_embedding}[which]()
    state = model.state_dict()
    grads = []
    for keep in (False, True):
        model.load_state_dict(state)
        dm = training_diff(model, head, structured, keep_delta_grad=keep)
        dm.resample(1)
        for _ in range(2):  # as training_step splits the loss and the penalty over micro-batches
            (loss_of(dm(**batch)) / 2 + dm.penalty(alpha_gradient=not keep) / 2).backward()
        if keep:
            assert all(p.grad is None for p in list(dm.w) + list(dm.alpha))
            formed = []
            for slot in dm.slots:
                chunks = list(dm.diff_grad_chunks(slot))
                formed.append([torch.cat([c[k] for c in chunks]).view(slot.shape) for k in (1, 2)])
        else:
            formed = [[dm.w[slot.index].grad, dm.alpha[slot.index].grad] for slot in dm.slots]
        group = dm.group_alpha.grad.clone() if structured else None
        grads.append((formed, group))
        dm.release()
    (want, want_group), (got, got_group) = grads
    for slot_want, slot_got in zip(want, got):
        for w_or_alpha_want, w_or_alpha_got in zip(slot_want, slot_got):
            torch.testing.assert_close(w_or_alpha_got, w_or_alpha_want, rtol=1e-6, atol=1e-7)
    if structured:
        torch.testing.assert_close(got_group, want_group, rtol=1e-6, atol=1e-7)

