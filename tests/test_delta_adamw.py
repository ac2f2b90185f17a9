"""DeltaGradAdamW on a tiny BERT, against plain autograd + torch's AdamW + clip_grad_norm_:
the updates, the optimizer state, clipping, gradient accumulation, chunking, resuming."""
import copy

import pytest
import torch
from transformers import BertForSequenceClassification

import diffprune.chunked
from diffprune.adaptive import AdaptiveDiffPruning
from diffprune.delta_adamw import DeltaGradAdamW
from diffprune.methods import adamw
from diffprune.models import mark_new_parameters
from diffprune.training_step import training_step
from tests.conftest import tiny_bert_config
from tests.test_diff import _reference_loss

LR, ALPHA_LR, WEIGHT_DECAY = 1e-2, 5e-2, 0.01
CLIPPED, UNCLIPPED = 1.0, 1e4  # the tiny BERT's gradient norm is ~10-200 with l0_lambda 0.5
CPU = torch.device("cpu")


def _l0_model(state: dict, structured: bool):
    """(method, DiffPrunedModel) of the tiny BERT with a random nonzero w, so that every gate's
    gradient is nonzero from the first step."""
    model = BertForSequenceClassification(tiny_bert_config())
    model.load_state_dict(state)
    mark_new_parameters(model, ["classifier.weight", "classifier.bias"])
    method = AdaptiveDiffPruning(structured=structured, alpha_init=1.0, l0_lambda=0.5, alpha_learning_rate=ALPHA_LR)
    dm = method.prepare(model, r"^classifier\.").train()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in dm.w:
            w.normal_(0, 0.05, generator=generator)
    return method, dm


def _training(max_grad_norm: float, accumulation: int = 1) -> dict:
    return {"learning_rate": LR, "max_grad_norm": max_grad_norm, "weight_decay": WEIGHT_DECAY,
            "gradient_accumulation_steps": accumulation}


def _step(dm, method, optimizer, step, batches, max_grad_norm):
    training_step(dm, method, batches, len(batches), optimizer, step=step, device=CPU, precision="fp32",
                  max_grad_norm=max_grad_norm)


def _usual(state, structured, training):
    """The L0 phase with materialised gradients: autograd's .grad on w and alpha (the penalty's
    included), torch's AdamW, torch's clip_grad_norm_ (what training_step does for it)."""
    method, dm = _l0_model(state, structured)
    return method, dm, adamw(method.parameter_groups(dm, training), lr=LR)


def _delta(state, structured, training):
    method, dm = _l0_model(state, structured)
    optimizer = method.make_optimizer(dm, training)
    assert isinstance(optimizer, DeltaGradAdamW)
    return method, dm, optimizer


# Tolerances where the two sides round differently (sums in another order): Adam turns a
# near-zero gradient into a step of up to lr (1e-2), so a wrong gradient moves a parameter by
# ~lr and rounding by ~1e-6; the moments are compared down to their own scale.
ROUNDING = {"param": (1e-4, 1e-5), "exp_avg": (1e-4, 1e-11), "exp_avg_sq": (1e-4, 1e-18), "step": (0, 0)}


def _assert_same_training(dm_a, opt_a, dm_b, opt_b, exact: bool):
    def check(got, want, kind, what):
        if exact:
            assert torch.equal(got, want), what
        else:
            rtol, atol = ROUNDING[kind]
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda message: f"{what}: {message}")

    for (name, p), q in zip(dm_a.named_parameters(), dm_b.parameters()):
        check(q, p, "param", name)
    sd_a, sd_b = opt_a.state_dict(), opt_b.state_dict()
    assert sd_a["param_groups"] == sd_b["param_groups"]
    for index, entry in sd_a["state"].items():
        for key, value in entry.items():
            check(sd_b["state"][index][key], value, key, f"state {index} {key}")


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("max_grad_norm", [CLIPPED, UNCLIPPED])
def test_steps_match_plain_autograd_torch_adamw_and_clip_grad_norm(tiny_bert, tiny_batch, structured, max_grad_norm):
    """Four steps through training_step against the loss written with plain torch ops, the same
    sample, torch.optim.AdamW and torch.nn.utils.clip_grad_norm_ on the reference's gradients."""
    state = tiny_bert.state_dict()
    method, dm, optimizer = _delta(state, structured, _training(max_grad_norm))
    reference = BertForSequenceClassification(tiny_bert_config())
    reference.load_state_dict(state)
    reference.train().requires_grad_(False)
    head = [reference.classifier.weight, reference.classifier.bias]
    for p in head:
        p.requires_grad_(True)
    w_ref = [w.detach().clone().requires_grad_() for w in dm.w]
    a_ref = [a.detach().clone().requires_grad_() for a in dm.alpha]
    g_ref = dm.group_alpha.detach().clone().requires_grad_() if structured else None
    gates = a_ref + ([g_ref] if structured else [])
    ref_optimizer = torch.optim.AdamW([{"params": w_ref, "lr": LR, "weight_decay": 0.0},
                                       {"params": gates, "lr": ALPHA_LR, "weight_decay": 0.0},
                                       {"params": head, "lr": LR, "weight_decay": WEIGHT_DECAY}], lr=LR, fused=True)
    for step in range(4):
        dm.resample(step)  # the sample training_step draws again, identically (same alpha, seed, step)
        ref_optimizer.zero_grad()
        _reference_loss(dm, reference, tiny_batch, w_ref, a_ref, g_ref).backward()
        norm = torch.nn.utils.clip_grad_norm_(head + w_ref + gates, max_grad_norm)
        assert (norm > max_grad_norm) == (max_grad_norm == CLIPPED)  # clipping is active where meant
        ref_optimizer.step()
        _step(dm, method, optimizer, step, [tiny_batch], max_grad_norm)

    pairs = list(zip(dm.w, w_ref)) + list(zip(dm.alpha, a_ref)) + list(zip(dm.head_parameters().values(), head))
    if structured:
        pairs.append((dm.group_alpha, g_ref))
    # The reference rebuilds the gate as sigmoid(logit(s) - alpha + alpha_ref), which rounds
    # differently from s itself; Adam turns near-zero gradients into steps of up to lr, so a
    # wrong gradient would differ by ~lr (1e-2), the rounding by ~1e-6.
    for got, want in pairs:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        # the moments scale with the clipping coefficient (the updates barely do: Adam is
        # invariant to the scale of its gradients), so they show a wrong coefficient
        torch.testing.assert_close(optimizer.state[got]["exp_avg"], ref_optimizer.state[want]["exp_avg"],
                                   rtol=1e-3, atol=1e-8)
        torch.testing.assert_close(optimizer.state[got]["exp_avg_sq"], ref_optimizer.state[want]["exp_avg_sq"],
                                   rtol=1e-3, atol=1e-12)
    assert all(w.grad is None for w in dm.w) and all(a.grad is None for a in dm.alpha)


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("max_grad_norm", [CLIPPED, UNCLIPPED])
def test_steps_equal_the_usual_step_bit_for_bit(tiny_bert, tiny_batch, structured, max_grad_norm):
    """Against the same model trained on materialised gradients: every parameter and every
    moment bit for bit. The operations are autograd's, elementwise, on the same values; AdamW
    is applied chunk by chunk with torch's own function; each tensor's norm (none is larger
    than a chunk) is taken as clip_grad_norm_ takes it, and combined in the same order."""
    state = tiny_bert.state_dict()
    training = _training(max_grad_norm)
    method_a, dm_a, opt_a = _usual(state, structured, training)
    method_b, dm_b, opt_b = _delta(state, structured, training)
    for step in range(3):
        _step(dm_a, method_a, opt_a, step, [tiny_batch], max_grad_norm)
        _step(dm_b, method_b, opt_b, step, [tiny_batch], max_grad_norm)
    _assert_same_training(dm_a, opt_a, dm_b, opt_b, exact=True)


def test_clip_grad_norm_returns_the_norm_of_the_materialised_gradients(tiny_bert, tiny_batch):
    state = tiny_bert.state_dict()
    training = _training(CLIPPED)
    norms = []
    for make in (_usual, _delta):
        method, dm, optimizer = make(state, True, training)
        method.begin_step(dm, 0)
        (dm(**tiny_batch).loss + method.penalty(dm)).backward()
        trainable = [p for p in dm.parameters() if p.requires_grad]
        if isinstance(optimizer, DeltaGradAdamW):
            norms.append(optimizer.clip_grad_norm_(CLIPPED, trainable))
        else:
            norms.append(torch.nn.utils.clip_grad_norm_([p for p in trainable if p.grad is not None], CLIPPED))
    assert norms[0] > CLIPPED and torch.equal(norms[1], norms[0])


@pytest.mark.parametrize("structured", [False, True])
def test_gradient_accumulation_matches_the_usual_step(tiny_bert, tiny_batch, structured):
    """Two micro-batches per step: d loss / d delta is summed before the gradients of w and alpha
    are formed (autograd sums the formed ones), equal up to rounding."""
    state = tiny_bert.state_dict()
    second = {**tiny_batch, "input_ids": tiny_batch["input_ids"].flip(0)}
    training = _training(CLIPPED, accumulation=2)
    method_a, dm_a, opt_a = _usual(state, structured, training)
    method_b, dm_b, opt_b = _delta(state, structured, training)
    for step in range(3):
        _step(dm_a, method_a, opt_a, step, [tiny_batch, second], CLIPPED)
        _step(dm_b, method_b, opt_b, step, [tiny_batch, second], CLIPPED)
    _assert_same_training(dm_a, opt_a, dm_b, opt_b, exact=False)


@pytest.mark.parametrize("structured", [False, True])
def test_tensors_larger_than_a_chunk_match_the_usual_step(tiny_bert, tiny_batch, monkeypatch, structured):
    """With chunks of 100 entries every tensor spans several (the word embeddings' row-sparse
    gradient is made dense chunk by chunk, across row boundaries): equal up to the rounding of
    norms taken chunk by chunk."""
    state = tiny_bert.state_dict()
    training = _training(CLIPPED)
    method_a, dm_a, opt_a = _usual(state, structured, training)
    method_b, dm_b, opt_b = _delta(state, structured, training)
    monkeypatch.setattr(diffprune.chunked, "CHUNK", 100)
    for step in range(3):
        _step(dm_a, method_a, opt_a, step, [tiny_batch], CLIPPED)
        _step(dm_b, method_b, opt_b, step, [tiny_batch], CLIPPED)
    _assert_same_training(dm_a, opt_a, dm_b, opt_b, exact=False)


def test_resumes_from_its_state_dict_and_shares_it_with_adamw(tiny_bert, tiny_batch):
    """Three steps in one go equal two steps, a state_dict round trip into a fresh optimizer,
    one more; and the same state_dict continues a plain torch AdamW to the same result."""
    state = tiny_bert.state_dict()
    training = _training(CLIPPED)
    method, dm, optimizer = _delta(state, True, training)
    for step in range(3):
        _step(dm, method, optimizer, step, [tiny_batch], CLIPPED)

    method_b, dm_b, optimizer_b = _delta(state, True, training)
    for step in range(2):
        _step(dm_b, method_b, optimizer_b, step, [tiny_batch], CLIPPED)
    saved_module, saved_optimizer = dm_b.state_dict(), optimizer_b.state_dict()
    # as the runner resumes: a fresh model and optimizer, then the checkpoint loaded into both
    for make in (_delta, _usual):
        method_c, dm_c, optimizer_c = make(state, True, training)
        dm_c.load_state_dict(saved_module)
        # a copy, as a checkpoint read from disk is: load_state_dict keeps the step-count tensors
        optimizer_c.load_state_dict(copy.deepcopy(saved_optimizer))
        _step(dm_c, method_c, optimizer_c, 2, [tiny_batch], CLIPPED)
        _assert_same_training(dm, optimizer, dm_c, optimizer_c, exact=True)


def test_a_grad_on_w_or_alpha_is_refused(tiny_bert, tiny_batch):
    """The optimizer forms those gradients itself: one from autograd (here the penalty taken with
    its alpha gradient) would be counted twice or dropped, so it is refused."""
    method, dm, optimizer = _delta(tiny_bert.state_dict(), False, _training(CLIPPED))
    method.begin_step(dm, 0)
    (dm(**tiny_batch).loss + dm.penalty(alpha_gradient=True)).backward()
    with pytest.raises(RuntimeError, match="penalty\\(alpha_gradient=False\\)"):
        optimizer.step()


def test_zero_grad_forgets_the_kept_gradient(tiny_bert, tiny_batch):
    """A step after zero_grad and no backward leaves w as it is, as torch's AdamW leaves a
    parameter without gradient (its step count included)."""
    method, dm, optimizer = _delta(tiny_bert.state_dict(), False, _training(UNCLIPPED))
    _step(dm, method, optimizer, 0, [tiny_batch], UNCLIPPED)
    before = [w.detach().clone() for w in dm.w]
    optimizer.zero_grad()
    optimizer.step()
    assert all(torch.equal(w, b) for w, b in zip(dm.w, before))
    assert all(int(optimizer.state[w]["step"]) == 1 for w in dm.w)
