"""The L0-phase set-up that the gradient tests share: a diff on every tensor, gates open
(alpha 1), a penalty that counts (lambda 0.5) and a nonzero w, so that every gradient path
(through z, w and alpha) carries a signal."""
from __future__ import annotations

import torch

from diffprune.diff import DiffPrunedModel
from diffprune.diff_pruning_config import DiffPruningConfig


def training_diff(model: torch.nn.Module, head_pattern: str, structured: bool, keep_delta_grad: bool) -> DiffPrunedModel:
    """A DiffPrunedModel in training mode with w drawn from N(0, 0.1²), seeded per tensor size."""
    dm = DiffPrunedModel(model, DiffPruningConfig(structured=structured, alpha_init=1.0, l0_lambda=0.5,
                                                  head_pattern=head_pattern))
    with torch.no_grad():
        for w in dm.w:
            w.normal_(0, 0.1, generator=torch.Generator().manual_seed(w.numel()))
    if keep_delta_grad:
        dm.keep_delta_grad()
    dm.train()
    return dm
