"""Adaptive diff pruning (the paper's method) as a ``Method``: the L0 phase.

Its run is the "source" of one projection + fixed-mask finetuning per sparsity rate
(``projected = True``), done by ``diffprune.projection.FixedMaskFinetuning``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffprune.delta_adamw import DeltaGradAdamW
from diffprune.diff_pruning_config import DiffPruningConfig
from diffprune.diff import DiffPrunedModel
from diffprune.method_options import option
from diffprune.methods import AdamWInBackward, Method, adamw
from diffprune.seeding import RunSeeds
from diffprune.stats import diff_stats


def steps_in_backward_allowed(training: dict, device: torch.device) -> bool:
    """Whether a run with these settings can update each tensor inside backward: not with
    global-norm clipping (it needs the norm of every gradient before the first update), nor
    gradient accumulation (several backwards per update), nor an fp16 loss scaler (it skips a
    step after seeing every gradient). A setting not given counts as its default."""
    from diffprune.settings import TRAINING_DEFAULTS

    def setting(key):
        return training.get(key, TRAINING_DEFAULTS[key])

    return (float(setting("max_grad_norm")) == 0 and int(setting("gradient_accumulation_steps")) == 1
            and not uses_loss_scaler(training, device))


def uses_loss_scaler(training: dict, device: torch.device) -> bool:
    """Whether a run with these settings trains with an fp16 loss scaler (as the runner does for fp16)."""
    from diffprune.device import resolve_precision
    from diffprune.settings import TRAINING_DEFAULTS

    return resolve_precision(training.get("precision", TRAINING_DEFAULTS["precision"]), device) == "fp16"


_PAPER = DiffPruningConfig()  # the paper's hyperparameters: the defaults of the options below


class AdaptiveDiffPruning(Method):
    name = "diff_pruning"
    projected = True
    summary = "adaptive diff pruning (diffprune/adaptive.py): the L0 phase, then one prune run per rate"

    @dataclass(frozen=True)
    class Options:
        # The DiffPruningConfig fields but head_pattern (the config's, not a method option),
        # with the paper's defaults (section 4.3) as that class declares them.
        structured: bool = option(_PAPER.structured,
                                  "add one gate per weight matrix / bias vector (the paper's groups)")
        l0_lambda: float = option(_PAPER.l0_lambda, "weight of the expected-L0 penalty", ge=0)
        alpha_init: float = option(_PAPER.alpha_init, "initial gate log-odds (5 keeps the gates open at the start)")
        left: float = option(_PAPER.left, "l < 0, lower end of the Hard-Concrete stretch interval", lt=0)
        right: float = option(_PAPER.right, "r > 1, upper end of the Hard-Concrete stretch interval", gt=1)
        w_init: float = option(_PAPER.w_init, "initial value of the dense diff vector w")
        # None, not DiffPruningConfig's 0: a run's gate noise comes from its run seed unless pinned.
        mask_seed: int | None = option(None, "null = the gate-noise stream derived from the run seed; an integer "
                                       "pins the gate noise whatever the run seed", ge=0)
        # Not in DiffPruningConfig: the optimizer's business (parameter_groups).
        alpha_learning_rate: float | None = option(
            None, "learning rate of the gate log-odds alpha; null = the run's learning_rate (the paper uses one "
                  "rate; a larger one lets gates close within a short run)", gt=0)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.model: DiffPrunedModel | None = None
        self.gate_noise_seed: int | None = None
        self.steps_in_backward = False  # set by make_optimizer
        self.optimizer_adds_penalty_gradient = False  # set by make_optimizer

    def use_run_seeds(self, seeds: RunSeeds) -> RunSeeds:
        if self.options["mask_seed"] is None:
            self.gate_noise_seed = seeds.gate_noise
            return seeds
        self.gate_noise_seed = int(self.options["mask_seed"])
        return replace(seeds, gate_noise=self.gate_noise_seed)

    def _config(self, head_pattern: str) -> DiffPruningConfig:
        values = {k: v for k, v in self.options.items() if k not in ("alpha_learning_rate", "mask_seed")}
        # Outside a run (no use_run_seeds call) an unpinned mask_seed keeps the config's default.
        mask_seed = self.gate_noise_seed if self.gate_noise_seed is not None else self.options["mask_seed"]
        if mask_seed is not None:
            values["mask_seed"] = mask_seed
        return DiffPruningConfig(head_pattern=head_pattern, **values)

    def prepare(self, model: nn.Module, head_pattern: str) -> DiffPrunedModel:
        self.model = DiffPrunedModel(model, self._config(head_pattern))
        return self.model

    def parameter_groups(self, model: DiffPrunedModel, training: dict) -> list[dict]:
        lr = float(training["learning_rate"])
        alpha_lr = float(self.options["alpha_learning_rate"] or lr)
        groups = model.trainable_parameters()
        out = [{"params": groups["w"], "lr": lr, "weight_decay": 0.0},
               {"params": groups["alpha"], "lr": alpha_lr, "weight_decay": 0.0}]
        if groups["head"]:
            out.append({"params": groups["head"], "lr": lr, "weight_decay": float(training.get("weight_decay", 0.0))})
        return out

    def make_optimizer(self, model: DiffPrunedModel, training: dict) -> torch.optim.Optimizer:
        """AdamW on w, alpha (and the head), the paper's optimizer, in the form that holds the
        fewest d-sized gradient buffers the settings allow. Where nothing needs every gradient
        before the first update (no global-norm clipping, one micro-batch per step, no fp16
        loss scaler), it steps each tensor inside backward (``AdamWInBackward``) and holds
        none. Otherwise, short of an fp16 loss scaler, backward keeps only d loss / d delta and
        the step forms the gradients of w and alpha from it (``DeltaGradAdamW``): one buffer
        instead of two. With a loss scaler it is plain AdamW on materialised gradients."""
        groups = self.parameter_groups(model, training)
        lr = float(training["learning_rate"])
        self.steps_in_backward = steps_in_backward_allowed(training, model.sample.device)
        model.row_sparse_diff_grads = self.steps_in_backward
        if self.steps_in_backward:
            self.optimizer_adds_penalty_gradient = True
            hooks = {alpha: partial(model.add_penalty_gradient_, index) for index, alpha in enumerate(model.alpha)}
            return AdamWInBackward(groups, lr=lr, gradient_hooks=hooks)
        self.optimizer_adds_penalty_gradient = not uses_loss_scaler(training, model.sample.device)
        if self.optimizer_adds_penalty_gradient:
            return DeltaGradAdamW(groups, lr=lr, model=model)
        return adamw(groups, lr=lr)

    def begin_step(self, model: DiffPrunedModel, step: int) -> None:
        model.resample(step)

    def penalty(self, model: DiffPrunedModel) -> torch.Tensor:
        # AdamWInBackward (in its hook) and DeltaGradAdamW (as it forms alpha's gradient) add
        # the penalty's gradient on alpha themselves: autograd would build it d-sized.
        return model.penalty(alpha_gradient=not self.optimizer_adds_penalty_gradient)

    def new_parameter_count(self, model: DiffPrunedModel) -> int:
        # Before projection the task stores the nonzeros of z * w (+ the head).
        dense = model.dense_diff()
        head = sum(p.numel() for p in model.head_parameters().values())
        return int(sum(torch.count_nonzero(d).item() for d in dense.values())) + head

    def dense_diff(self, model: DiffPrunedModel) -> dict[str, torch.Tensor]:
        return model.dense_diff()

    def stats(self, model: DiffPrunedModel) -> dict:
        head = sum(p.numel() for p in model.head_parameters().values())
        from diffprune.layers import layer_labels

        stats = diff_stats(model.dense_diff(), model.head_pattern, head_numel=head,
                           labels=layer_labels(model.model, model.head_pattern))
        stats["expected_l0"] = float(model.expected_l0().detach())
        return stats

    def save(self, model: DiffPrunedModel, out_dir, identity, dense_diff: str | None = None) -> dict:
        """The L0 phase's payload is its dense diff with the head: the hand-over to its prune
        runs, which a run that has prune runs has written already (``dense_diff``, with the base
        fingerprint and the run's identity in its header; not written twice)."""
        from diffprune.artifact import write_config
        from diffprune.handover import DENSE_DIFF_KIND, DENSE_DIFF_NAME
        from diffprune.storage import CHECKSUM_KEY, DENSE_FORMAT, read_header, save_dense_diff

        path = Path(out_dir) / (dense_diff or DENSE_DIFF_NAME)
        if dense_diff is None:
            # The head and the task buffers (e.g. BatchNorm statistics, updated by training) are
            # loaded whole into the base before projection, so the prune runs start from this model.
            head = {k: v.detach() for k, v in model.head_parameters().items()}
            head.update({k: v.detach() for k, v in model.task_buffers().items()})
            save_dense_diff(path, model.dense_diff(), head,
                            {"method": self.name, "options": self.options, "task": identity.task,
                             "model_id": identity.model_id, "base_fingerprint": identity.fingerprint,
                             "head_pattern": identity.head_pattern})
        header = read_header(path, expected_format=DENSE_FORMAT)
        stored = {"diffed_tensors": len(model.slots), "head": sorted(model.head_parameters())}
        return write_config(out_dir, self, identity, path, DENSE_FORMAT, DENSE_DIFF_KIND, header[CHECKSUM_KEY],
                            stored, self.new_parameter_count(model))

    def load(self, model: nn.Module, artifact) -> nn.Module:
        """theta_0 + delta written into ``model`` in place, with the stored head and buffers.
        (The L0 forward computes theta_0 + z * w in one fused step where the hardware fuses it;
        the stored delta is z * w rounded to fp32: equal up to the last bit of a weight.)"""
        from diffprune.handover import apply_dense_diff_

        return apply_dense_diff_(model, artifact)
