"""Helpers for the baseline tests: a few optimizer steps and before/after state comparisons."""
from __future__ import annotations

import re

import pytest
import torch

# Counts hand-computed for tests/conftest.py's tiny BERT (vocab 99, hidden 16, 2 blocks,
# intermediate 32, 64 positions, 2 token types, 2 labels).
EMBEDDINGS = 99 * 16 + 64 * 16 + 2 * 16 + 2 * 16                   # word, position, type, LayerNorm = 2672
BLOCK = 4 * (16 * 16 + 16) + 2 * 16 + (16 * 32 + 32) + (32 * 16 + 16) + 2 * 16   # = 2224
POOLER = 16 * 16 + 16                                               # = 272
HEAD = 16 * 2 + 2                                                   # = 34
TOTAL = EMBEDDINGS + 2 * BLOCK + POOLER + HEAD                      # = 7426

# The attention key bias shifts every score of a query by the same amount, which softmax
# ignores: its gradient is (numerically) zero, so it may legitimately stay unchanged.
GRADIENT_FREE = re.compile(r"attention\.self\.key\.bias$")

TRAINING = {"learning_rate": 1e-2, "weight_decay": 0.0}


@pytest.fixture
def counts():
    return {"embeddings": EMBEDDINGS, "block": BLOCK, "pooler": POOLER, "head": HEAD, "total": TOTAL}


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def train(method, module, batch, steps: int = 2) -> None:
    """``steps`` AdamW steps through the method's own optimizer (2 by default: LoRA's A and a
    zero-initialised adapter projection only receive gradient once B / up is nonzero)."""
    optimizer = method.make_optimizer(module, TRAINING)
    module.train()
    for step in range(steps):
        method.begin_step(module, step)
        loss = module(**batch).loss
        extra = method.penalty(module)
        if extra is not None:
            loss = loss + extra
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    module.eval()


def changed_names(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {name for name in before if not torch.equal(before[name], after[name])}


def assert_trains_exactly(method, module, batch, declared: set[str], steps: int = 2) -> set[str]:
    """The trainable set, the optimizer's set and the changed set all equal ``declared``."""
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == declared, (sorted(trainable - declared)[:5], sorted(declared - trainable)[:5])
    optimizer_ids = {id(p) for g in method.parameter_groups(module, TRAINING) for p in g["params"]}
    assert optimizer_ids == {id(p) for n, p in module.named_parameters() if n in declared}
    before = snapshot(module)
    train(method, module, batch, steps)
    after = snapshot(module)
    changed = changed_names(before, after)
    assert changed <= declared, sorted(changed - declared)[:5]
    unchanged = {n for n in declared - changed if not GRADIENT_FREE.search(n)}
    assert not unchanged, sorted(unchanged)[:5]
    return changed


@pytest.fixture
def check_trains_exactly():
    return assert_trains_exactly


@pytest.fixture
def run_steps():
    return train


@pytest.fixture
def take_snapshot():
    return snapshot


@pytest.fixture
def tiny_bert_identity(tiny_bert):
    """The artifact identity of ``tiny_bert`` as loaded: its base fingerprint is taken before a
    test prepares and trains it, as the runner takes it."""
    from diffprune.artifact import ArtifactIdentity

    return ArtifactIdentity.of_base(tiny_bert, model_id="tiny-bert")


def read_payload(out_dir, config: dict) -> dict[str, torch.Tensor]:
    """The tensors of a saved task_state payload, trained parameters under their own names."""
    from safetensors.torch import load_file

    return {key.removeprefix("param."): value
            for key, value in load_file(str(out_dir / config["payload"]["file"])).items()}


@pytest.fixture
def stored_by():
    return read_payload
