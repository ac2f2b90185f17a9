"""Effective weights wherever a tensor is read: nn.MultiheadAttention's out_proj, tensors read
by a parent module, diffed tensors the forward never uses, BatchNorm statistics as task state."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

from diffprune.diff_pruning_config import DiffPruningConfig
from diffprune.diff import DiffPrunedModel
from diffprune.projection import project
from diffprune.storage import apply_diff_, load_diff, save_diff

HEAD = r"(^|\.)classifier\."


class TinyAttentionClassifier(nn.Module):
    """Embedding -> nn.MultiheadAttention -> mean pool -> classifier (as torchvision's ViT and
    nn.Transformer use attention): MultiheadAttention reads out_proj.weight / out_proj.bias in
    its own forward, and out_proj's forward never runs."""

    def __init__(self, vocab=20, dim=8, heads=2, labels=3, dropout=0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True, dropout=dropout)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, labels)

    def forward(self, ids):
        h = self.embed(ids)
        h = self.norm(h + self.attn(h, h, h, need_weights=False)[0])
        return self.classifier(h.mean(1))


def _attention_base():
    torch.manual_seed(0)
    return TinyAttentionClassifier().eval()


def _ids(seed=0):
    return torch.randint(0, 20, (4, 5), generator=torch.Generator().manual_seed(seed))


def _merged_logits(model, delta, ids):
    """The reference: the plain model run with theta_0 + delta substituted (no hooks)."""
    merged = {n: p + delta[n] if n in delta else p for n, p in model.named_parameters()}
    with torch.no_grad():
        return functional_call(model, merged, (ids,))


def test_multihead_attention_out_proj_gets_its_diff_and_gradient():
    model = _attention_base()
    dm = DiffPrunedModel(model, DiffPruningConfig(head_pattern=HEAD, alpha_init=1.0))
    with torch.no_grad():
        for w in dm.w:
            w.normal_(0, 0.1)
    dm.train()
    dm.resample(0)
    labels = torch.tensor([0, 1, 2, 0])
    nn.functional.cross_entropy(dm(_ids()), labels).backward()
    slots = {slot.name: slot for slot in dm.slots}
    for name in ("attn.out_proj.weight", "attn.out_proj.bias", "attn.in_proj_weight"):
        grad = dm.w[slots[name].index].grad
        assert grad is not None and torch.count_nonzero(grad) > 0, name
    assert dm.readers == {"attn": ["attn.out_proj.weight", "attn.out_proj.bias"]}
    dm.eval()
    with torch.no_grad():
        got = dm(_ids(1))
    assert torch.allclose(got, _merged_logits(model, dm.dense_diff(), _ids(1)), atol=1e-6)


def test_multihead_attention_train_project_save_load_on_a_fresh_base(tmp_path):
    dm = DiffPrunedModel(_attention_base(), DiffPruningConfig(head_pattern=HEAD, alpha_init=2.0)).train()
    optimizer = torch.optim.AdamW([p for p in dm.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([0, 1, 2, 0])
    for step in range(3):
        dm.resample(step)
        (nn.functional.cross_entropy(dm(_ids(step)), labels) + dm.penalty()).backward()
        optimizer.step()
        optimizer.zero_grad()
    fixed = project(dm, rate=50.0).train()
    assert {"attn.out_proj.weight", "attn.out_proj.bias"} <= set(fixed.sparse_diff())
    optimizer = torch.optim.AdamW([p for p in fixed.parameters() if p.requires_grad], lr=1e-2)
    nn.functional.cross_entropy(fixed(_ids(5)), labels).backward()
    optimizer.step()
    fixed.eval()
    with torch.no_grad():
        trained = fixed(_ids(9))
    assert torch.allclose(trained, _merged_logits(fixed.model, fixed.dense_diff(), _ids(9)), atol=1e-6)
    path = save_diff(tmp_path / "diff.safetensors", fixed)
    fresh = _attention_base()
    apply_diff_(fresh, load_diff(path))
    with torch.no_grad():
        assert torch.equal(fresh(_ids(9)), trained)


class ParentReadsChildWeight(nn.Module):
    """A tied output projection computed in the parent's forward: ``h @ embed.weight.T``."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.mix = nn.Linear(6, 6)
        self.classifier = nn.Linear(11, 2)

    def forward(self, ids):
        h = torch.tanh(self.mix(self.embed(ids)))
        return self.classifier(h @ self.embed.weight.T).mean(1)


def test_a_weight_read_by_the_parent_module_gets_its_diff_too():
    torch.manual_seed(0)
    model = ParentReadsChildWeight()
    dm = DiffPrunedModel(model, DiffPruningConfig(head_pattern=HEAD))
    with torch.no_grad():
        for w in dm.w:
            w.normal_(0, 0.2)
    dm.eval()
    ids = torch.randint(0, 11, (3, 4))
    with torch.no_grad():
        got = dm(ids)
    assert dm.readers == {"": ["embed.weight"]}
    assert torch.allclose(got, _merged_logits(model, dm.dense_diff(), ids), atol=1e-6)


def test_the_rerun_of_the_first_forward_counts_as_one_forward():
    """Finding a reader re-runs the first forward: BatchNorm statistics and the RNG (dropout)
    are put back first, so the result and the state are those of one correct forward."""

    class WithNormAndDropout(TinyAttentionClassifier):
        def __init__(self):
            super().__init__(dropout=0.3)
            self.norm = nn.BatchNorm1d(8)

        def forward(self, ids):
            h = self.embed(ids)
            h = h + self.attn(h, h, h, need_weights=False)[0]
            return self.classifier(self.norm(h.mean(1)))

    def wrapped():
        torch.manual_seed(0)
        return DiffPrunedModel(WithNormAndDropout(), DiffPruningConfig(head_pattern=HEAD, alpha_init=1.0))

    first, reference = wrapped(), wrapped()
    with torch.no_grad():
        reference.eval()(_ids())  # an eval forward finds the reader and changes no state
    for dm in (first, reference):
        dm.train().resample(0)
    torch.manual_seed(7)
    got = first(_ids(3))
    torch.manual_seed(7)
    want = reference(_ids(3))
    assert first.readers == reference.readers == {"attn": ["attn.out_proj.weight", "attn.out_proj.bias"]}
    assert torch.equal(got, want)
    assert torch.equal(first.model.norm.running_mean, reference.model.norm.running_mean)
    assert int(first.model.norm.num_batches_tracked) == 1


def test_a_diffed_parameter_the_forward_never_uses_is_refused_by_name():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.spare = nn.Linear(4, 4)  # never called
            self.classifier = nn.Linear(4, 2)

        def forward(self, x):
            return self.classifier(self.body(x))

    dm = DiffPrunedModel(Unused(), DiffPruningConfig(head_pattern=HEAD))
    with pytest.raises(ValueError, match=r"never used.*spare\.weight"):
        dm(torch.randn(2, 4))


def test_batchnorm_statistics_update_in_training_and_stay_put_in_evaluation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2))
    dm = DiffPrunedModel(net, DiffPruningConfig(head_pattern=r"^3\.")).train()
    assert set(dm.task_buffers()) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    pretrained = {k: v.clone() for k, v in dm.task_buffers().items()}
    x = torch.randn(8, 1, 6, 6)
    dm.resample(0)
    dm(x)
    # the running statistics follow the task's batches, exactly as the plain module would
    reference = nn.BatchNorm2d(4)
    reference.load_state_dict({k[2:]: v for k, v in pretrained.items()}, strict=False)
    with torch.no_grad():
        reference.train()(nn.functional.conv2d(x, net[0].weight, net[0].bias))
    assert torch.allclose(net[1].running_mean, reference.running_mean)
    assert torch.allclose(net[1].running_var, reference.running_var)
    assert int(net[1].num_batches_tracked) == 1
    after_training = {k: v.clone() for k, v in dm.task_buffers().items()}
    with torch.no_grad():
        dm.eval()(x)
    assert all(torch.equal(v, after_training[k]) for k, v in dm.task_buffers().items())
