"""Non-adaptive diff pruning: magnitude-prune the full-finetuning diff, then fixed-mask finetune.

It has no train phase of its own: the runner's ``prune`` verb takes the dense diff of the
``full_finetuning`` run (``reuses``), projects it onto the L0 ball at each rate
(``projected``) and finetunes with the mask fixed, using the core diff pruning code.
"""
from __future__ import annotations

from torch import nn

from diffprune.methods import Method


class NonAdaptiveDiffPruning(Method):
    name = "nonadaptive_diff_pruning"
    projected = True
    reuses = "full_finetuning"
    summary = ("magnitude-prunes the diff of the full_finetuning entry's run (no train run of its own; its "
               "schedule is the prune phase's)")

    def prepare(self, model: nn.Module, head_pattern: str) -> nn.Module:
        raise RuntimeError(
            "nonadaptive_diff_pruning has no train phase of its own: it reuses the full_finetuning "
            "run's dense diff (theta_ft - theta_0). Train full_finetuning, then run "
            "`python -m diffprune prune --from <full_finetuning run dir>` for each rate."
        )
