"""Full finetuning: every parameter trains (the paper's 100% baseline).

A task stores the whole model, head and task buffers included (every parameter trains, and
``Method.save`` stores what trains). It is also the train phase of non-adaptive diff pruning,
which magnitude-prunes ``theta_finetuned - theta_pretrained``; hence ``dense_diff``. Its
``stats`` (the run's stats.json) hold the per-layer distance from the pretrained weights that
the critical-layers baseline ranks layers by.
"""
from __future__ import annotations

import torch
from torch import nn

from diffprune.baselines.common import head_parameter_names, set_trainable
from diffprune.layers import layer_labels, layer_order
from diffprune.methods import Method
from diffprune.stats import layer_distances


class FullFinetuning(Method):
    name = "full_finetuning"
    summary = "every parameter trains (baselines/full_finetuning.py)"

    def prepare(self, model: nn.Module, head_pattern: str) -> nn.Module:
        head = set(head_parameter_names(model, head_pattern))
        self.head_pattern = head_pattern
        self.labels = layer_labels(model, head_pattern)
        set_trainable(model, lambda name: True)
        # theta_0 of every pretrained tensor, on the CPU so that a GPU run does not pay twice
        # the model's memory for it; the head is new, so it has no pretrained value to diff.
        self.pretrained = {
            name: param.detach().to("cpu", copy=True)
            for name, param in model.named_parameters() if name not in head
        }
        return model

    def stats(self, model: nn.Module) -> dict:
        """Per layer, how far finetuning moved the weights: {"per_layer_distance": {layer:
        {"relative_l2", "angle_deg"}}, "layer_order": [...]} (the head is new, so absent)."""
        distances = layer_distances(self.pretrained, self.dense_diff(model), self.head_pattern, self.labels)
        return {"per_layer_distance": distances, "layer_order": layer_order(distances)}

    def dense_diff(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if not hasattr(self, "pretrained"):
            raise RuntimeError("dense_diff needs theta_0, which prepare() records; call prepare first")
        params = dict(model.named_parameters())
        missing = set(self.pretrained) - set(params)
        if missing:
            raise KeyError(f"model lacks pretrained parameter(s) recorded at prepare: {sorted(missing)[:5]}")
        return {name: params[name].detach().to("cpu") - theta_0 for name, theta_0 in self.pretrained.items()}
